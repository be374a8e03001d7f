//! `cargo xtask deb`: the Debian package, made by cargo-deb from the release
//! binary (with the XDP program embedded) and what the binary generates
//! itself: the man page and the shell completions. The package's contents
//! are listed in guard-userspace/Cargo.toml, `[package.metadata.deb]`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{build_all, check, clean_cargo, workspace_root, Profile};

/// Where the generated assets go (named in `[package.metadata.deb]`).
fn assets_dir() -> PathBuf {
    // Under target/release/, which cargo-deb maps to the real target dir.
    workspace_root().join("target/release/deb-assets")
}

/// Runs `sipguard ARGS` and returns its standard output.
fn generate(sipguard: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let output = Command::new(sipguard)
        .args(args)
        .output()
        .with_context(|| format!("running {} {args:?}", sipguard.display()))?;
    if !output.status.success() || output.stdout.is_empty() {
        bail!(
            "sipguard {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// The man page (gzipped), the completions and the unit
/// with the package's path to the binary.
fn write_assets(sipguard: &Path) -> Result<()> {
    let dir = assets_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Debian wants man pages gzipped (cargo-deb leaves target/ assets as
    // they are); -n: no name or time stamp, the same page gives the same bytes.
    let man = dir.join("sipguard.8");
    fs::write(&man, generate(sipguard, &["manpage"])?)?;
    check(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&man))?;
    for (shell, file) in [
        ("bash", "sipguard.bash"),
        ("zsh", "_sipguard"),
        ("fish", "sipguard.fish"),
    ] {
        fs::write(dir.join(file), generate(sipguard, &["completions", shell])?)?;
    }
    let unit = fs::read_to_string(workspace_root().join("dist/sipguard.service"))
        .context("reading dist/sipguard.service")?;
    if !unit.contains("/usr/local/sbin/sipguard ") {
        bail!("dist/sipguard.service no longer runs /usr/local/sbin/sipguard: update xtask deb");
    }
    // The commands only: the comments still tell how to install by hand.
    let packaged: String = unit
        .lines()
        .map(|line| {
            let line = if line.starts_with("Exec") {
                line.replace("/usr/local/sbin/sipguard", "/usr/sbin/sipguard")
            } else {
                line.to_string()
            };
            line + "\n"
        })
        .collect();
    fs::write(dir.join("sipguard.service"), packaged)?;
    Ok(())
}

/// The Debian version cargo-deb gives the package (revision 1) must be the
/// one at the top of the changelog it ships.
fn check_changelog() -> Result<String> {
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    let path = workspace_root().join("dist/debian/changelog");
    let changelog = fs::read_to_string(&path).context("reading dist/debian/changelog")?;
    let top = changelog.lines().next().unwrap_or_default();
    if !top.starts_with(&format!("sipguard ({version}) ")) {
        bail!(
            "{}: the first entry is {top:?}, the package is {version}: add an entry",
            path.display()
        );
    }
    Ok(version)
}

/// Builds target/debian/sipguard_VERSION_ARCH.deb and returns its path.
pub fn deb() -> Result<PathBuf> {
    let version = check_changelog()?;
    crate::setup::ensure_cargo_deb()?;
    let sipguard = build_all(Profile::Release)?;
    write_assets(&sipguard)?;
    let out_dir = workspace_root().join("target").join("debian");
    // Only this build's package in the directory.
    let _ = fs::remove_dir_all(&out_dir);
    let mut command = clean_cargo(None);
    command
        .args(["deb", "-p", "guard-userspace", "--no-build", "--output"])
        .arg(&out_dir);
    check(&mut command).context("cargo deb")?;
    let deb = fs::read_dir(&out_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("sipguard_{version}_")))
        })
        .with_context(|| format!("no sipguard_{version}_*.deb in {}", out_dir.display()))?;
    println!("xtask: wrote {}", deb.display());
    Ok(deb)
}
