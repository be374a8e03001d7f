//! Reference programs for `cargo xtask bench`, built with the same toolchain
//! and flags as sipguard's: the bare minimum an XDP program can cost, and a
//! traffic generator for live-frame runs (BPF_F_TEST_XDP_LIVE_FRAMES).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, macros::xdp, programs::XdpContext};

/// Drops everything.
#[xdp]
pub fn bare_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Passes everything.
#[xdp]
pub fn bare_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Interface the generator sends to; set by the bench before loading.
#[no_mangle]
static TARGET_IFINDEX: u32 = 0;

/// Sends each test frame out of `TARGET_IFINDEX`.
#[xdp]
pub fn generate(_ctx: XdpContext) -> u32 {
    // SAFETY: a read of a constant the loader fills in.
    let ifindex = unsafe { core::ptr::read_volatile(&TARGET_IFINDEX) };
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
