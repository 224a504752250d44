//! Building the hypervisor ELF.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The bare-metal target the hypervisor is built for.
pub const TARGET: &str = "x86_64-unknown-none";

/// The workspace root (the directory with the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace root")
        .to_path_buf()
}

/// The directory for build output and run directories.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Debug or release build of the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

/// Where `cargo build` puts the hypervisor ELF for this profile.
pub fn hypervisor_elf(profile: Profile) -> PathBuf {
    let dir = match profile {
        Profile::Debug => "debug",
        Profile::Release => "release",
    };
    target_dir().join(TARGET).join(dir).join("atoll")
}

/// Builds the hypervisor with cargo (its progress goes to stderr) and
/// returns the ELF's path.
pub fn build_hypervisor(profile: Profile) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--package",
        "atoll-hypervisor",
        "--target",
        TARGET,
    ]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .context("running cargo build for the hypervisor")?;
    if !status.success() {
        bail!("building the hypervisor failed ({status})");
    }
    let elf = hypervisor_elf(profile);
    if !elf.is_file() {
        bail!(
            "cargo built the hypervisor but {} is missing",
            elf.display()
        );
    }
    Ok(elf)
}
