//! SIP capture: what the XDP program (through its tail-called capture
//! program) and the tc egress program copy to user space, run through
//! BPF_PROG_TEST_RUN. Needs root (`cargo xtask test`).
use guard_common::{Health, SourceKey, CAPTURE_INBOUND, CAPTURE_OUTBOUND, SIP_CAPTURE_BYTES};
use sipguard_tests::{frames::*, run_xdp, Harness, XDP_DROP, XDP_PASS};

const PBX4: &str = "192.0.2.1";
const PBX6: &str = "2001:db8:ffff::1";
const TC_ACT_PIPE: i32 = 3;
const REGISTER: &[u8] = b"REGISTER sip:pbx SIP/2.0\r\nCall-ID: abc\r\nCSeq: 1 REGISTER\r\n\r\n";

const POLICY: &str = r#"
[[deny]]
cidr = "203.0.113.0/24"
"#;

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn passing_sip_requests_are_copied_with_their_metadata() {
    let mut h = Harness::new(POLICY);
    assert_eq!(h.run(&udp("198.51.100.7", PBX4, 5060, REGISTER)), XDP_PASS);
    let captures = h.drain_sip_captures();
    assert_eq!(captures.len(), 1);
    let (header, data) = &captures[0];
    assert_eq!(header.direction, CAPTURE_INBOUND);
    assert_eq!(header.peer, SourceKey::from_ipv4([198, 51, 100, 7]).addr);
    assert_eq!((header.peer_port, header.local_port), (40000, 5060));
    assert_eq!(header.transport, guard_common::L4Proto::Udp as u8);
    assert_eq!(header.captured as usize, REGISTER.len());
    assert_eq!(header.payload_len as usize, REGISTER.len());
    assert_eq!(data.as_slice(), REGISTER);

    // SIP over TCP, and over IPv6 behind extension headers.
    let mut tcp_frame = tcp("198.51.100.8", PBX4, 5060, false, true);
    tcp_frame.extend_from_slice(REGISTER);
    let total = (tcp_frame.len() - ETH_LEN) as u16;
    tcp_frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
    assert_eq!(h.run(&tcp_frame), XDP_PASS);
    let v6 = with_ipv6_ext_headers(
        &udp("2001:db8:5::9", PBX6, 5060, REGISTER),
        &[options_header(0)],
    );
    assert_eq!(h.run(&v6), XDP_PASS);
    let captures = h.drain_sip_captures();
    assert_eq!(captures.len(), 2);
    assert_eq!(captures[0].0.transport, guard_common::L4Proto::Tcp as u8);
    assert_eq!(captures[0].1.as_slice(), REGISTER);
    let v6_peer: std::net::Ipv6Addr = "2001:db8:5::9".parse().unwrap();
    assert_eq!(captures[1].0.peer, v6_peer.octets());
    assert_eq!(captures[1].1.as_slice(), REGISTER);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn only_passing_sip_with_a_payload_is_copied() {
    let mut h = Harness::new(POLICY);
    // Dropped: denied source, and the 41st packet of a flood.
    assert_eq!(h.run(&udp("203.0.113.5", PBX4, 5060, REGISTER)), XDP_DROP);
    let flood = udp("198.51.100.66", PBX4, 5060, REGISTER);
    for _ in 0..40 {
        assert_eq!(h.run(&flood), XDP_PASS);
    }
    assert_eq!(h.drain_sip_captures().len(), 40);
    assert_eq!(h.run(&flood), XDP_DROP);
    // Not SIP: RTP, web; and SIP without a payload (a bare TCP ACK, empty UDP).
    assert_eq!(
        h.run(&udp("198.51.100.7", PBX4, 12000, &[0x80; 172])),
        XDP_PASS
    );
    assert_eq!(
        h.run(&tcp("198.51.100.7", PBX4, 443, false, true)),
        XDP_PASS
    );
    assert_eq!(
        h.run(&tcp("198.51.100.7", PBX4, 5060, false, true)),
        XDP_PASS
    );
    assert_eq!(h.run(&udp("198.51.100.9", PBX4, 5060, b"")), XDP_PASS);
    assert!(h.drain_sip_captures().is_empty());
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn big_messages_are_cut_to_the_capture_size() {
    let mut h = Harness::new(POLICY);
    let mut big = REGISTER.to_vec();
    big.extend(std::iter::repeat_n(b'x', 3000));
    assert_eq!(h.run(&udp("2001:db8:5::9", PBX6, 5060, &big)), XDP_PASS);
    let captures = h.drain_sip_captures();
    assert_eq!(captures[0].0.captured as usize, SIP_CAPTURE_BYTES);
    assert_eq!(captures[0].0.payload_len as usize, big.len());
    assert_eq!(captures[0].1.as_slice(), &big[..SIP_CAPTURE_BYTES]);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn answers_leaving_the_pbx_are_copied_by_the_egress_program() {
    let mut h = Harness::new(POLICY);
    let answer = b"SIP/2.0 401 Unauthorized\r\nCall-ID: abc\r\nCSeq: 1 REGISTER\r\n\r\n";
    let mut frame = udp(PBX4, "198.51.100.7", 40000, answer);
    // From the PBX's SIP port.
    let sport = ETH_LEN + 20;
    frame[sport..sport + 2].copy_from_slice(&5060u16.to_be_bytes());
    assert_eq!(h.run_egress(&frame), TC_ACT_PIPE);
    let captures = h.drain_sip_captures();
    assert_eq!(captures.len(), 1);
    let (header, data) = &captures[0];
    assert_eq!(header.direction, CAPTURE_OUTBOUND);
    assert_eq!(header.peer, SourceKey::from_ipv4([198, 51, 100, 7]).addr);
    assert_eq!((header.peer_port, header.local_port), (40000, 5060));
    assert_eq!(data.as_slice(), answer);
    // Anything else leaving the PBX is left alone.
    assert_eq!(
        h.run_egress(&udp(PBX4, "198.51.100.7", 5060, answer)),
        TC_ACT_PIPE
    );
    assert_eq!(h.run_egress(&arp()), TC_ACT_PIPE);
    assert!(h.drain_sip_captures().is_empty());
    assert_eq!(
        h.guard.maps_mut().health().unwrap()[Health::SipCaptureLost as usize],
        0
    );
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn nothing_is_copied_when_sip_auth_is_off() {
    let mut h = Harness::new("[sip_auth]\nenabled = false\n");
    assert_eq!(h.run(&udp("198.51.100.7", PBX4, 5060, REGISTER)), XDP_PASS);
    assert!(h.drain_sip_captures().is_empty());
}

/// Runs the tail-called capture program on its own, as the XDP program of
/// an older build, still attached during a restart, would tail-call it:
/// without describing the packet first.
fn run_capture_alone(h: &mut Harness, frame: &[u8]) -> u32 {
    let program: &mut aya::programs::Xdp = h
        .guard
        .ebpf
        .program_mut(guard_common::CAPTURE_PROGRAM_NAME)
        .expect("the capture program")
        .try_into()
        .expect("an XDP program");
    run_xdp(program, frame, 1)
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}

/// The capture copies only what the packet path described for it, and
/// only once: without a description it copies nothing (no stale or empty
/// record reaches the controller) and counts the request as lost.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_capture_nobody_described_copies_nothing() {
    let mut h = Harness::new(POLICY);
    let frame = udp("198.51.100.7", PBX4, 5060, REGISTER);
    let lost = |h: &Harness| h.guard.maps().health().unwrap()[Health::SipCaptureLost as usize];
    let before = lost(&h);
    assert_eq!(run_capture_alone(&mut h, &frame), XDP_PASS);
    assert!(h.drain_sip_captures().is_empty());
    assert_eq!(lost(&h), before + 1);
    // The packet path's description is used by its own tail call, once.
    assert_eq!(h.run(&frame), XDP_PASS);
    assert_eq!(h.drain_sip_captures().len(), 1);
    assert_eq!(run_capture_alone(&mut h, &frame), XDP_PASS);
    assert!(h.drain_sip_captures().is_empty());
    assert_eq!(lost(&h), before + 2);
}

/// While the controller is behind and the ring is full, the packet path
/// sees it before the tail call: it counts each capture lost and passes
/// the packet. Once the controller drains the ring, captures resume at once.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_full_capture_ring_loses_captures_until_it_is_drained() {
    let mut h = Harness::new(POLICY);
    // A new source per packet, so that no rate rule bans.
    let frame = |i: u32| {
        let source = std::net::Ipv4Addr::from(u32::from_be_bytes([198, 18, 0, 0]) + i);
        udp(&source.to_string(), PBX4, 5060, REGISTER)
    };
    let lost = |h: &Harness| h.guard.maps().health().unwrap()[Health::SipCaptureLost as usize];
    assert_eq!(lost(&h), 0);
    let mut sent = 0;
    while lost(&h) == 0 {
        assert_eq!(h.run(&frame(sent)), XDP_PASS);
        sent += 1;
        assert!(sent < 10_000, "the ring never filled");
    }
    for i in 0..10 {
        assert_eq!(h.run(&frame(sent + i)), XDP_PASS);
    }
    assert_eq!(lost(&h), 11);
    let captured = h.drain_sip_captures();
    assert_eq!(captured.len() as u32, sent - 1);
    // Exactly as many records as the ring holds: 4 MiB, each record
    // behind the kernel's 8-byte header and rounded up to 8 bytes.
    let record = 8 + std::mem::size_of::<guard_common::SipCapture>().next_multiple_of(8);
    assert_eq!(captured.len(), (4 << 20) / record);
    assert_eq!(h.run(&frame(sent + 10)), XDP_PASS);
    assert_eq!(h.drain_sip_captures().len(), 1);
    assert_eq!(lost(&h), 11);
}
