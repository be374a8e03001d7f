//! Finds the XDP object that `cargo xtask build` compiled, for embedding:
//! one `sipguard` binary carries its own kernel program.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=SIPGUARD_EBPF_OBJECT");
    let object = match env::var_os("SIPGUARD_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            let target = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest.join("..").join("target"));
            target.join("bpf/bpfel-unknown-none/release/guard-ebpf")
        }
    };
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        panic!(
            "the XDP object {} does not exist: build through `cargo xtask build` \
             (or `cargo xtask test`), which compiles it first",
            object.display()
        );
    }
    println!("cargo:rustc-env=SIPGUARD_EBPF_OBJECT={}", object.display());
}
