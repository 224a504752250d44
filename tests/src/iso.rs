//! The bootable ISO: GRUB (BIOS) with the hypervisor as a multiboot2 kernel
//! and the cluster config as a multiboot2 module named `cluster.toml`.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The module name the hypervisor looks for (hypervisor/src/boot.rs).
pub const CONFIG_MODULE_NAME: &str = "cluster.toml";

/// The module command-line prefix of guest images (hypervisor/src/arch/images.rs).
pub const VM_IMAGE_PREFIX: &str = "vm-image:";

/// What goes on the ISO.
pub struct IsoContents<'a> {
    pub hypervisor: &'a Path,
    /// The config module's bytes, or `None` for no module line at all.
    pub config: Option<&'a [u8]>,
    /// The hypervisor command line.
    pub cmdline: &'a str,
    /// Guest images as (config value, file): each becomes the module
    /// `vm-image:<value>` (see crate::guests).
    pub vm_images: &'a [(String, PathBuf)],
}

/// The grub.cfg that boots the hypervisor at once, with no menu; guest
/// image `i` is the file /boot/vm/<i>.img.
pub fn grub_cfg(with_config: bool, cmdline: &str, vm_images: &[&str]) -> String {
    let mut module = if with_config {
        format!("    module2 /boot/{CONFIG_MODULE_NAME} {CONFIG_MODULE_NAME}\n")
    } else {
        String::new()
    };
    for (i, name) in vm_images.iter().enumerate() {
        module += &format!("    module2 /boot/vm/{i}.img {VM_IMAGE_PREFIX}{name}\n");
    }
    format!(
        "set timeout=0\nset default=0\nmenuentry \"Atoll\" {{\n    multiboot2 /boot/atoll.elf {cmdline}\n{module}    boot\n}}\n"
    )
}

/// Checks that a command line can go on the `multiboot2` line of grub.cfg.
pub fn check_cmdline(cmdline: &str) -> Result<()> {
    if let Some(c) = cmdline
        .chars()
        .find(|c| c.is_control() || matches!(c, '"' | '\'' | '\\' | ';' | '{' | '}' | '$'))
    {
        bail!("the hypervisor command line {cmdline:?} contains {c:?}; use plain key=value words");
    }
    Ok(())
}

/// Lays out the ISO tree in `work_dir/iso` and runs grub-mkrescue; returns
/// the ISO's path.
pub fn make_iso(work_dir: &Path, contents: &IsoContents<'_>) -> Result<PathBuf> {
    check_cmdline(contents.cmdline)?;
    let tree = work_dir.join("iso");
    let boot = tree.join("boot");
    fs::create_dir_all(boot.join("grub"))
        .with_context(|| format!("creating {}", boot.display()))?;
    fs::copy(contents.hypervisor, boot.join("atoll.elf"))
        .with_context(|| format!("copying {}", contents.hypervisor.display()))?;
    if let Some(config) = contents.config {
        fs::write(boot.join(CONFIG_MODULE_NAME), config)?;
    }
    fs::create_dir_all(boot.join("vm"))?;
    for (i, (name, file)) in contents.vm_images.iter().enumerate() {
        check_cmdline(name)?;
        fs::copy(file, boot.join(format!("vm/{i}.img")))
            .with_context(|| format!("copying guest image {}", file.display()))?;
    }
    let names: Vec<&str> = contents.vm_images.iter().map(|(n, _)| n.as_str()).collect();
    fs::write(
        boot.join("grub/grub.cfg"),
        grub_cfg(contents.config.is_some(), contents.cmdline, &names),
    )?;
    grub_mkrescue(work_dir, &tree)
}

/// The grub.cfg that boots a Linux kernel natively (no hypervisor): the
/// same kernel and initramfs a Linux VM gets, for comparisons.
pub fn linux_grub_cfg(cmdline: &str) -> String {
    format!(
        "set timeout=0\nset default=0\nmenuentry \"Linux\" {{\n    linux /boot/bzImage {cmdline}\n    initrd /boot/initrd\n    boot\n}}\n"
    )
}

/// An ISO that boots `kernel` with `initrd` and `cmdline` directly.
pub fn make_linux_iso(
    work_dir: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
) -> Result<PathBuf> {
    check_cmdline(cmdline)?;
    let tree = work_dir.join("iso");
    let boot = tree.join("boot");
    fs::create_dir_all(boot.join("grub"))
        .with_context(|| format!("creating {}", boot.display()))?;
    fs::copy(kernel, boot.join("bzImage"))
        .with_context(|| format!("copying {}", kernel.display()))?;
    fs::copy(initrd, boot.join("initrd"))
        .with_context(|| format!("copying {}", initrd.display()))?;
    fs::write(boot.join("grub/grub.cfg"), linux_grub_cfg(cmdline))?;
    grub_mkrescue(work_dir, &tree)
}

fn grub_mkrescue(work_dir: &Path, tree: &Path) -> Result<PathBuf> {
    let iso = work_dir.join("atoll.iso");
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&iso)
        .arg(tree)
        .output()
        .context("running grub-mkrescue (package grub-common)")?;
    if !out.status.success() {
        bail!(
            "grub-mkrescue failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_has_the_module_only_when_asked() {
        let with = grub_cfg(true, "selftest=panic", &[]);
        assert!(with.contains("multiboot2 /boot/atoll.elf selftest=panic\n"));
        assert!(with.contains("module2 /boot/cluster.toml cluster.toml\n"));
        assert!(!grub_cfg(false, "", &[]).contains("module2"));
        let vms = grub_cfg(true, "", &["hello", "img/k.elf"]);
        assert!(vms.contains("module2 /boot/vm/0.img vm-image:hello\n"));
        assert!(vms.contains("module2 /boot/vm/1.img vm-image:img/k.elf\n"));
    }

    #[test]
    fn native_linux_grub_cfg_boots_the_kernel_with_its_initrd() {
        let cfg = linux_grub_cfg("console=ttyS0 atoll.run=boot");
        assert!(cfg.contains("linux /boot/bzImage console=ttyS0 atoll.run=boot\n"));
        assert!(cfg.contains("initrd /boot/initrd\n"));
    }

    #[test]
    fn refuses_command_lines_that_would_break_grub_cfg() {
        assert!(check_cmdline("selftest=panic a=b").is_ok());
        for bad in ["a\nb", "x\"", "a;b", "$x", "}"] {
            assert!(check_cmdline(bad).is_err(), "{bad:?}");
        }
    }
}
