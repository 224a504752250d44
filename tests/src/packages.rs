//! The Debian packages the harness needs, and installing the missing ones.

use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};

/// Every host package `cargo xtask run` and `cargo xtask test` use.
pub const REQUIRED: &[&str] = &[
    "bochs",
    "bochsbios",
    "vgabios",
    "bochs-term",
    "grub-pc-bin",
    "grub-common",
    "xorriso",
    "mtools",
    "qemu-system-x86",
    // The Linux guest kernel (crate::linux) and what building it takes.
    "linux-source-6.1",
    "make",
    "gcc",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
    // The Linux guest's initramfs (guest-images/linux/initramfs.toml).
    "busybox-static",
];

/// The required packages that dpkg does not report as installed.
pub fn missing() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for &pkg in REQUIRED {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", pkg])
            .stderr(Stdio::null())
            .output()
            .context("running dpkg-query (is this a Debian system?)")?;
        if !String::from_utf8_lossy(&out.stdout).contains("install ok installed") {
            missing.push(pkg);
        }
    }
    Ok(missing)
}

/// The command that installs `packages`.
pub fn install_command(packages: &[&str]) -> String {
    format!(
        "apt-get update && apt-get install -y {}",
        packages.join(" ")
    )
}

/// Installs `packages` with apt-get when running as root; otherwise fails
/// with the exact command to run. apt's output goes to `log`.
pub fn install(packages: &[&str], log: &std::path::Path) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "missing Debian packages: {}\ninstall them as root with:\n    sudo sh -c '{}'",
            packages.join(" "),
            install_command(packages)
        );
    }
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file.try_clone()?)
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} failed ({status}); see {}",
                args.join(" "),
                log.display()
            );
        }
        Ok(())
    };
    apt(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(packages);
    apt(&args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_hint_is_a_complete_apt_command() {
        assert_eq!(
            install_command(&["bochs", "xorriso"]),
            "apt-get update && apt-get install -y bochs xorriso"
        );
        assert!(
            REQUIRED.contains(&"bochs-term"),
            "Bochs' only headless display"
        );
    }
}
