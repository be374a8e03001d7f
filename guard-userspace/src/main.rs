//! The `sipguard` command line (see `guard_userspace::cli`).
fn main() -> std::process::ExitCode {
    guard_userspace::cli::main()
}
