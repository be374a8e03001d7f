use guard_common::Reason;
use sipguard_tests::{frames::*, Harness, NEEDS_ROOT, XDP_DROP, XDP_PASS};

const PBX4: &str = "192.0.2.1";

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn smoke_sip_passes() {
    let _ = NEEDS_ROOT;
    sipguard_tests::init_test_logging();
    let mut h = Harness::new("");
    assert_eq!(
        h.run(&udp("198.51.100.10", PBX4, 5060, b"OPTIONS")),
        XDP_PASS
    );
    assert_eq!(h.packets(Reason::Passed), 1);
    let _ = XDP_DROP;
}
