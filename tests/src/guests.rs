//! The guest images a cluster config's `[[vm]]` tables name, found and
//! built so they can go on the ISO.
//!
//! A `kernel`, `initrd` or `modules` value without '/' names an image
//! guest-images/ builds: a test guest (a binary of package
//! `atoll-test-guests`), or `linux` and `initramfs`, the Linux guest's
//! kernel and initramfs (crate::linux). Any other value is a file path
//! relative to the config file's directory (the workspace root for configs
//! given as bytes). On the ISO each image is
//! the module `vm-image:<value>`, which is how the hypervisor finds it.

use crate::build::{TARGET, target_dir, workspace_root};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The test guests guest-images/ builds: the binaries of one package.
pub const GUESTS: &[&str] = &[
    "hello",
    "heartbeat",
    "hostile",
    "exitbench",
    "signal",
    "smp",
    "fpu",
    "abi",
];
const GUEST_PACKAGE: &str = "atoll-test-guests";

/// Where the release build of guest `name` lands.
pub fn guest_elf(name: &str) -> PathBuf {
    target_dir().join(TARGET).join("release").join(name)
}

/// Builds every test guest (release, bare-metal target) once per process.
pub fn build_guests() -> Result<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_all().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_all() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--release", "--target", TARGET]);
    cmd.args(["--package", GUEST_PACKAGE, "--bins"]);
    let status = cmd
        .status()
        .context("running cargo build for the test guests")?;
    if !status.success() {
        bail!("building the test guests failed ({status})");
    }
    Ok(())
}

/// Every image the config's VMs name, as (config value, file), each once.
pub fn vm_images(config: &[u8], config_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let Ok(text) = std::str::from_utf8(config) else {
        return Ok(Vec::new()); // the hypervisor reports the bad config
    };
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = Vec::new();
    for vm in doc
        .get("vm")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let kernel = vm.get("kernel").and_then(|k| k.as_str());
        let initrd = vm.get("initrd").and_then(|k| k.as_str());
        let modules = vm.get("modules").and_then(|m| m.as_array());
        let values = kernel
            .into_iter()
            .chain(initrd)
            .chain(modules.into_iter().flatten().filter_map(|m| m.as_str()));
        for value in values {
            if !names.iter().any(|n| n == value) {
                names.push(value.to_string());
            }
        }
    }
    names
        .into_iter()
        .map(|name| {
            let file = resolve(&name, config_dir)?;
            Ok((name, file))
        })
        .collect()
}

fn resolve(value: &str, config_dir: &Path) -> Result<PathBuf> {
    if value == crate::linux::KERNEL_NAME {
        return crate::linux::kernel();
    }
    if value == crate::linux::INITRAMFS_NAME {
        return crate::linux::initramfs();
    }
    if !value.contains('/') {
        if !GUESTS.contains(&value) {
            bail!(
                "a [[vm]] names the image '{value}', which guest-images/ does not build (it builds: {}, {}, {})",
                GUESTS.join(", "),
                crate::linux::KERNEL_NAME,
                crate::linux::INITRAMFS_NAME
            );
        }
        build_guests()?;
        return Ok(guest_elf(value));
    }
    let file = config_dir.join(value);
    if !file.is_file() {
        bail!(
            "a [[vm]] names the image {value}, but {} does not exist",
            file.display()
        );
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_each_image_once_and_resolves_paths_next_to_the_config() {
        let dir = std::env::temp_dir().join(format!("atoll-guests-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("img")).unwrap();
        std::fs::write(dir.join("img/k.elf"), b"x").unwrap();
        std::fs::write(dir.join("img/m.bin"), b"y").unwrap();
        let config = br#"
[[vm]]
kernel = "img/k.elf"
modules = ["img/m.bin"]
[[vm]]
kernel = "img/k.elf"
"#;
        let images = vm_images(config, &dir).unwrap();
        assert_eq!(
            images,
            [
                ("img/k.elf".to_string(), dir.join("img/k.elf")),
                ("img/m.bin".to_string(), dir.join("img/m.bin"))
            ]
        );
        let missing = vm_images(b"[[vm]]\nkernel = \"img/none\"\n", &dir).unwrap_err();
        assert!(format!("{missing}").contains("does not exist"));
        let unknown = vm_images(b"[[vm]]\nkernel = \"nosuchguest\"\n", &dir).unwrap_err();
        assert!(format!("{unknown}").contains("hello"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
