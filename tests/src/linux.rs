//! The Linux guest images: a small kernel built from Debian's
//! `linux-source-6.1` with the config fragment in guest-images/linux/, and
//! a busybox initramfs made from guest-images/linux/initramfs.toml.
//!
//! Both are cached by the hash of everything that goes into them, under
//! `$ATOLL_CACHE_DIR` (default `~/.cache/atoll`), so a test run builds
//! them at most once per change of their inputs. A lock file keeps
//! concurrent test processes from building the same image twice.

use crate::build::workspace_root;
use crate::cpio::Archive;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The `kernel` value that names the Linux guest kernel in a config.
pub const KERNEL_NAME: &str = "linux";
/// The `initrd` value that names the Linux guest initramfs.
pub const INITRAMFS_NAME: &str = "initramfs";

/// Debian's kernel source package and the tarball it installs.
const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// Bumped when the build steps below change what they produce.
const RECIPE_VERSION: &str = "2";

/// The directory that holds cached guest images.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ATOLL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/atoll")
}

fn linux_dir() -> PathBuf {
    workspace_root().join("guest-images/linux")
}

/// The Linux kernel (bzImage), built if it is not cached yet.
pub fn kernel() -> Result<PathBuf> {
    static KERNEL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| build_kernel().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The initramfs (gzip'd cpio), built if it is not cached yet.
pub fn initramfs() -> Result<PathBuf> {
    static INITRAMFS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INITRAMFS
        .get_or_init(|| build_initramfs().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn progress(what: &str) {
    eprintln!("[linux] {what}");
}

/// Holds the cache lock for its lifetime.
struct CacheLock(File);

impl CacheLock {
    fn take(name: &str) -> Result<CacheLock> {
        let dir = cache_dir();
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{name}.lock"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(CacheLock(file))
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn package_version(package: &str) -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .context("running dpkg-query")?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "the Debian package {package} is not installed: `apt-get install {package}` (.ci/run installs it)"
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------- kernel

fn build_kernel() -> Result<PathBuf> {
    let fragment_path = linux_dir().join("kernel.config");
    let fragment = fs::read_to_string(&fragment_path)
        .with_context(|| format!("reading {}", fragment_path.display()))?;
    let version = package_version(SOURCE_PACKAGE)?;
    let mut hash = Sha256::new();
    for part in [RECIPE_VERSION, &version, &fragment] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let key = hex(&hash.finalize());
    let image = cache_dir().join(format!("linux-{key}.bzImage"));
    if image.is_file() {
        return Ok(image);
    }
    let _lock = CacheLock::take("linux")?;
    if image.is_file() {
        return Ok(image); // another process built it while we waited
    }
    progress(&format!(
        "building the guest kernel {key} from {SOURCE_PACKAGE} {version} (a few minutes, once)"
    ));
    let source = extract_source(&version)?;
    let build = cache_dir().join(format!("linux-build-{key}"));
    fs::create_dir_all(&build)?;
    configure(&source, &build, &fragment_path, &fragment)?;
    make(&source, &build, &["bzImage"])?;
    let built = build.join("arch/x86/boot/bzImage");
    let partial = image.with_extension("partial");
    fs::copy(&built, &partial).with_context(|| format!("copying {}", built.display()))?;
    // The symbols, to read the guest's RIPs in vm_fault and vm_stopped.
    let _ = fs::copy(build.join("System.map"), image.with_extension("System.map"));
    fs::rename(&partial, &image)?;
    remove_build_dirs();
    progress(&format!("kernel ready: {}", image.display()));
    Ok(image)
}

/// Build trees are only needed while building (also those a failed build
/// left behind).
fn remove_build_dirs() {
    let Ok(entries) = fs::read_dir(cache_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("linux-build-")
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Unpacks the source tarball once per package version.
fn extract_source(version: &str) -> Result<PathBuf> {
    let dir = cache_dir().join(format!("{SOURCE_PACKAGE}-{version}"));
    if dir.join("Makefile").is_file() {
        return Ok(dir);
    }
    progress(&format!("unpacking {SOURCE_TARBALL}"));
    let unpack = cache_dir().join(format!("{SOURCE_PACKAGE}.unpack"));
    let _ = fs::remove_dir_all(&unpack);
    fs::create_dir_all(&unpack)?;
    let status = Command::new("tar")
        .arg("-xJf")
        .arg(SOURCE_TARBALL)
        .arg("-C")
        .arg(&unpack)
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("unpacking {SOURCE_TARBALL} failed ({status})");
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(unpack.join(SOURCE_PACKAGE), &dir)?;
    let _ = fs::remove_dir_all(&unpack);
    Ok(dir)
}

/// `make tinyconfig`, the fragment on top, `olddefconfig`; then checks
/// that Kconfig kept every option the fragment sets.
fn configure(source: &Path, build: &Path, fragment_path: &Path, fragment: &str) -> Result<()> {
    progress("configuring (tinyconfig + guest-images/linux/kernel.config)");
    make(source, build, &["tinyconfig"])?;
    let config = build.join(".config");
    let mut merged = fs::read_to_string(&config)?;
    merged.push('\n');
    for line in fragment.lines() {
        // Kconfig reads a disabled option only in this form.
        match line.trim().strip_suffix("=n") {
            Some(name) if name.starts_with("CONFIG_") => {
                merged.push_str(&format!("# {name} is not set\n"));
            }
            _ => {
                merged.push_str(line);
                merged.push('\n');
            }
        }
    }
    fs::write(&config, merged)?;
    make(source, build, &["olddefconfig"])?;
    let result = fs::read_to_string(&config)?;
    for (line_no, wanted) in fragment.lines().enumerate() {
        let wanted = wanted.trim();
        if wanted.is_empty() || wanted.starts_with('#') {
            continue;
        }
        if !option_holds(&result, wanted) {
            bail!(
                "{}:{}: `{wanted}` did not survive `make olddefconfig`: another option \
                 selects it, or one it depends on is missing (search for it in `make menuconfig`) \
                 and adjust the fragment",
                fragment_path.display(),
                line_no + 1
            );
        }
    }
    Ok(())
}

/// Whether `CONFIG_X=v` from the fragment holds in the final .config
/// (`=n` holds when the option is unset or absent).
fn option_holds(config: &str, wanted: &str) -> bool {
    let Some((name, value)) = wanted.split_once('=') else {
        return false;
    };
    if value == "n" {
        return !config.lines().any(|l| l.starts_with(&format!("{name}=")));
    }
    config.lines().any(|l| l == wanted)
}

/// Runs make in the source tree with output to `build`, showing progress.
fn make(source: &Path, build: &Path, targets: &[&str]) -> Result<()> {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut child = Command::new("make")
        .current_dir(source)
        .arg(format!("O={}", build.display()))
        .arg(format!("-j{jobs}"))
        .args(targets)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running make (packages make gcc flex bison bc libelf-dev libssl-dev)")?;
    let stderr = child.stderr.take().context("make stderr")?;
    let errors = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let stdout = child.stdout.take().context("make stdout")?;
    let mut compiled = 0;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.trim_start().starts_with("CC") {
            compiled += 1;
            if compiled % 100 == 0 {
                progress(&format!("compiled {compiled} files"));
            }
        }
    }
    let status = child.wait()?;
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        let tail = errors[errors.len().saturating_sub(20)..].join("\n");
        bail!("make {} failed ({status}):\n{tail}", targets.join(" "));
    }
    Ok(())
}

// ------------------------------------------------------------- initramfs

/// guest-images/linux/initramfs.toml.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipe {
    /// Host programs copied into the image with the shared libraries they
    /// load, each from the Debian package that installs it.
    #[serde(default)]
    program: Vec<Program>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Program {
    package: String,
    path: String,
}

fn build_initramfs() -> Result<PathBuf> {
    let recipe_path = linux_dir().join("initramfs.toml");
    let recipe_text = fs::read_to_string(&recipe_path)
        .with_context(|| format!("reading {}", recipe_path.display()))?;
    let recipe: Recipe =
        toml::from_str(&recipe_text).with_context(|| format!("{}", recipe_path.display()))?;
    let archive = assemble(&recipe)?;
    let mut hash = Sha256::new();
    hash.update(RECIPE_VERSION.as_bytes());
    hash.update(archive.bytes());
    let key = hex(&hash.finalize());
    let image = cache_dir().join(format!("initramfs-{key}.cpio.gz"));
    if image.is_file() {
        return Ok(image);
    }
    fs::create_dir_all(cache_dir())?;
    let partial = image.with_extension("partial");
    let mut gz = flate2::write::GzEncoder::new(
        File::create(&partial).with_context(|| format!("creating {}", partial.display()))?,
        flate2::Compression::default(),
    );
    gz.write_all(archive.bytes())?;
    gz.finish()?;
    fs::rename(&partial, &image)?;
    Ok(image)
}

/// The archive: the directory skeleton and /dev/console, the files under
/// guest-images/linux/rootfs, and the recipe's programs with their
/// libraries.
fn assemble(recipe: &Recipe) -> Result<Archive> {
    let mut archive = Archive::default();
    for dir in [
        "/bin", "/sbin", "/dev", "/proc", "/sys", "/tmp", "/etc", "/usr",
    ] {
        archive.directory(dir, 0o755);
    }
    // The kernel opens /dev/console for init's stdin/stdout before any
    // devtmpfs is mounted: it must be in the archive (char 5:1).
    archive.char_device("/dev/console", 0o600, 5, 1);
    add_tree(&mut archive, &linux_dir().join("rootfs"), "")?;
    for program in &recipe.program {
        package_version(&program.package)?;
        add_with_libraries(&mut archive, Path::new(&program.path))
            .with_context(|| format!("adding {} from {}", program.path, program.package))?;
    }
    archive.finish();
    Ok(archive)
}

/// Adds every file under `dir` (sorted, so the archive is reproducible),
/// keeping the executable bit.
fn add_tree(archive: &mut Archive, dir: &Path, prefix: &str) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = format!("{prefix}/{}", entry.file_name().to_string_lossy());
        let path = entry.path();
        if path.is_dir() {
            archive.directory(&name, 0o755);
            add_tree(archive, &path, &name)?;
        } else {
            let exec = is_executable(&path)?;
            archive.file(&name, if exec { 0o755 } else { 0o644 }, &fs::read(&path)?);
        }
    }
    Ok(())
}

fn is_executable(path: &Path) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(path)?.permissions().mode() & 0o111 != 0)
}

/// Adds a host program at its own path, with the dynamic loader and the
/// libraries `ldd` lists (none for a static program).
fn add_with_libraries(archive: &mut Archive, program: &Path) -> Result<()> {
    let bytes = fs::read(program).with_context(|| format!("reading {}", program.display()))?;
    archive.file_with_parents(&program.to_string_lossy(), 0o755, &bytes);
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    for lib in library_paths(&String::from_utf8_lossy(&out.stdout)) {
        let bytes = fs::read(&lib).with_context(|| format!("reading {lib}"))?;
        archive.file_with_parents(&lib, 0o755, &bytes);
    }
    Ok(())
}

/// The absolute library paths in `ldd` output ("libc.so.6 => /lib/... (0x..)"
/// and the loader's "/lib64/ld-linux-x86-64.so.2 (0x..)").
fn library_paths(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_options_are_checked_against_the_final_config() {
        let config = "CONFIG_SMP=y\n# CONFIG_DEBUG is not set\nCONFIG_NR_CPUS=8\n";
        assert!(option_holds(config, "CONFIG_SMP=y"));
        assert!(option_holds(config, "CONFIG_NR_CPUS=8"));
        assert!(!option_holds(config, "CONFIG_NR_CPUS=4"));
        assert!(option_holds(config, "CONFIG_DEBUG=n"));
        assert!(option_holds(config, "CONFIG_ABSENT=n"));
        assert!(!option_holds(config, "CONFIG_SMP=n"));
        assert!(!option_holds(config, "CONFIG_ACPI=y"));
    }

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            library_paths(ldd),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(library_paths("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn the_recipe_in_the_repo_parses() {
        let text = fs::read_to_string(linux_dir().join("initramfs.toml")).unwrap();
        let recipe: Recipe = toml::from_str(&text).unwrap();
        assert!(recipe.program.iter().any(|p| p.path.ends_with("busybox")));
    }
}
