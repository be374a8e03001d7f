//! Finds the XDP object that `cargo xtask build` compiled, for embedding:
//! one `sipguard` binary carries its own kernel program.
//!
//! Without one (no BPF toolchain: `cargo check`, `cargo clippy`, the host
//! unit tests, rust-analyzer), it embeds an empty stub instead, as
//! aya-template does; a binary built so refuses to load (see
//! `kernel::loader::EBPF_OBJECT`). A path named in `SIPGUARD_EBPF_OBJECT`
//! must exist: whoever names one wants that program.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=SIPGUARD_EBPF_OBJECT");
    let object = match env::var_os("SIPGUARD_EBPF_OBJECT") {
        Some(path) => {
            let object = PathBuf::from(path);
            if !object.is_file() {
                panic!(
                    "SIPGUARD_EBPF_OBJECT names {}, which does not exist",
                    object.display()
                );
            }
            object
        }
        None => {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            let target = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest.join("..").join("target"));
            let built = target.join("bpf/bpfel-unknown-none/release/guard-ebpf");
            // Watched even while absent, so a later `cargo xtask build` re-embeds.
            println!("cargo:rerun-if-changed={}", built.display());
            if built.is_file() {
                built
            } else {
                stub()
            }
        }
    };
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rustc-env=SIPGUARD_EBPF_OBJECT={}", object.display());
}

/// An empty object in OUT_DIR: the binary builds, and refuses to load.
fn stub() -> PathBuf {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let stub = out.join("guard-ebpf.stub");
    fs::write(&stub, b"").expect("writing the stub XDP object");
    println!(
        "cargo:warning=no XDP object built: embedding an empty stub (this sipguard cannot \
         load; build with `cargo xtask build`)"
    );
    stub
}
