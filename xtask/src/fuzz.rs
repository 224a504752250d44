//! `cargo xtask fuzz [--secs N] [TARGET]`: runs the cargo-fuzz targets one
//! after another, each for N seconds from its seed corpus, and prints one
//! table: executions, coverage and whether it crashed.
//!
//! The targets live in two cargo-fuzz crates outside the workspace (they
//! need a nightly compiler): `vmm/fuzz` for what a guest feeds the VMM
//! and `hypervisor/fuzz` for the hypervisor's boot input. A target's seeds
//! are `<crate>/seeds/<target>/` (built by `fuzz_seeds`) plus the
//! directories [`TARGETS`] lists; what the fuzzer finds beyond them goes
//! to `target/fuzz/corpus/<target>/`, kept between runs. A text format's
//! tokens can be given in `<crate>/dicts/<target>.dict` (libFuzzer's
//! dictionary format).
//!
//! A crash (panic, timeout, out of memory) fails the command, with the
//! reproducer's path and the command that replays it.

use crate::progress;
use anyhow::{Context, Result, bail};
use atoll_tests::build::workspace_root;
use std::process::{Command, Stdio};

/// One fuzz target.
struct Target {
    name: &'static str,
    /// The cargo-fuzz crate, relative to the workspace root.
    krate: &'static str,
    /// Seed directories besides `<crate>/seeds/<name>`, relative to the
    /// workspace root.
    seeds: &'static [&'static str],
}

const VMM: &str = "vmm/fuzz";
const BOOT: &str = "hypervisor/fuzz";

/// Every target, in the order they run.
const TARGETS: &[Target] = &[
    Target {
        name: "config",
        krate: BOOT,
        seeds: &["configs", "hypervisor/cluster/tests/fixtures/invalid"],
    },
    Target {
        name: "acpi",
        krate: BOOT,
        seeds: &[],
    },
    Target {
        name: "multiboot2",
        krate: BOOT,
        seeds: &[],
    },
    Target {
        name: "bzimage",
        krate: VMM,
        seeds: &[],
    },
    Target {
        name: "loader",
        krate: VMM,
        seeds: &[],
    },
    Target {
        name: "virtqueue",
        krate: VMM,
        seeds: &[],
    },
    Target {
        name: "mmio_decode",
        krate: VMM,
        seeds: &[],
    },
    Target {
        name: "hypercall",
        krate: VMM,
        seeds: &[],
    },
];

/// libFuzzer flags for every run: one process, final statistics, and a
/// single input running this long counts as a hang (a crash).
const INPUT_TIMEOUT_SECS: u32 = 20;

/// What one run did, from libFuzzer's output.
#[derive(Debug, Default, PartialEq)]
struct Report {
    executions: u64,
    /// Coverage counters hit (`cov:`, roughly edges) and features (`ft:`).
    coverage: u64,
    features: u64,
    corpus: u64,
    /// The reproducer libFuzzer wrote, if it crashed.
    crash: Option<String>,
}

/// Runs the targets (all, or the one named) for `secs` seconds each.
pub fn run(secs: u64, only: Option<&str>) -> Result<bool> {
    let targets: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| only.is_none_or(|name| t.name == name))
        .collect();
    if targets.is_empty() {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        bail!(
            "no fuzz target {:?}; the targets are {}",
            only.unwrap_or(""),
            names.join(", ")
        );
    }
    if !nightly_available() {
        eprintln!(
            "error: fuzzing needs a nightly Rust toolchain (cargo-fuzz builds with \
             sanitizer coverage, a nightly-only flag), and `cargo +nightly` is not there.\n\
             Install it with: rustup toolchain install nightly --profile minimal"
        );
        return Ok(false);
    }
    ensure_cargo_fuzz()?;
    let mut built: Vec<&str> = Vec::new();
    let mut rows = Vec::new();
    for target in targets {
        if !built.contains(&target.krate) {
            build(target.krate)?;
            built.push(target.krate);
        }
        let report = run_one(target, secs)?;
        rows.push((target, report));
    }
    print_table(&rows, secs);
    Ok(report_crashes(&rows))
}

/// Prints each crash's reproducer and how to replay it; true if none.
fn report_crashes(rows: &[(&Target, Report)]) -> bool {
    let mut ok = true;
    for (target, report) in rows {
        let Some(crash) = &report.crash else { continue };
        ok = false;
        let dir = workspace_root().join(target.krate);
        eprintln!(
            "fuzz target {} crashed; reproducer: {}\n  replay: cd {} && cargo +nightly fuzz run -s none {} {}",
            target.name,
            crash,
            dir.parent().unwrap_or(&dir).display(),
            target.name,
            crash
        );
    }
    ok
}

/// `cargo +nightly` through rustup, with the pinned toolchain's variables
/// removed so that `+nightly` wins.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "CARGO", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    cmd
}

fn nightly_available() -> bool {
    nightly_cargo()
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs cargo-fuzz from crates.io when `cargo fuzz` is missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let status = nightly_cargo()
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz --locked failed; install it by hand and rerun");
    }
    Ok(())
}

/// `cargo fuzz SUBCOMMAND` for one crate, run from the directory that
/// holds it. Both crates build into one target directory, so the
/// dependencies they share (libFuzzer itself, the Atoll crates) are
/// compiled once; their targets' names differ.
fn fuzz_command(krate: &str, subcommand: &str) -> Command {
    let root = workspace_root();
    let dir = root.join(krate);
    let mut cmd = nightly_cargo();
    cmd.args(["fuzz", subcommand, "-s", "none", "--target-dir"])
        .arg(root.join("target/fuzz/build"))
        .current_dir(dir.parent().unwrap_or(&dir));
    cmd
}

/// Builds every target of one crate. No sanitizer: the code under test
/// forbids `unsafe`, so AddressSanitizer would find nothing Rust's own
/// checks do not, at half the speed; debug assertions (overflow checks
/// included) stay on, as cargo-fuzz sets them.
fn build(krate: &str) -> Result<()> {
    let spinner = progress::spinner(format!("building the fuzz targets in {krate}"));
    let output = fuzz_command(krate, "build")
        .output()
        .with_context(|| format!("running cargo fuzz build in {krate}"))?;
    spinner.finish_and_clear();
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        bail!("building the fuzz targets in {krate} failed");
    }
    Ok(())
}

fn run_one(target: &Target, secs: u64) -> Result<Report> {
    let root = workspace_root();
    let corpus = root.join("target/fuzz/corpus").join(target.name);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let mut dirs = vec![corpus];
    let own = root.join(target.krate).join("seeds").join(target.name);
    dirs.extend(own.is_dir().then_some(own));
    dirs.extend(target.seeds.iter().map(|d| root.join(d)));
    // A dictionary of the format's tokens, if the crate has one.
    let dict = root
        .join(target.krate)
        .join("dicts")
        .join(format!("{}.dict", target.name));
    let dict_flag = dict.is_file().then(|| format!("-dict={}", dict.display()));
    let log = root
        .join("target/fuzz")
        .join(format!("{}.log", target.name));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let spinner = progress::spinner(format!("fuzzing {} for {secs} s", target.name));
    let status = fuzz_command(target.krate, "run")
        .arg(target.name)
        .args(&dirs)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1")
        .args(dict_flag)
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .with_context(|| format!("running cargo fuzz run {}", target.name))?;
    spinner.finish_and_clear();
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let mut report = parse(&text);
    if status.success() {
        report.crash = None;
    } else if report.crash.is_none() {
        report.crash = Some(format!("(none written; see {})", log.display()));
    }
    if report.executions == 0 && report.crash.is_none() {
        bail!(
            "fuzz target {} ran no input; its output is in {}",
            target.name,
            log.display()
        );
    }
    Ok(report)
}

/// The figures in libFuzzer's output: status lines such as
/// `#4096 pulse cov: 215 ft: 681 corp: 133/45Kb ...`, the final
/// `stat::number_of_executed_units: N`, and on a crash
/// `Test unit written to PATH`.
fn parse(text: &str) -> Report {
    let mut report = Report::default();
    let field = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(key).nth(1)?;
        let word = rest.split_whitespace().next()?;
        word.split('/').next()?.parse().ok()
    };
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            report.executions = n.trim().parse().unwrap_or(report.executions);
        } else if let Some(path) = line.split("Test unit written to ").nth(1) {
            // A slow unit (over 10 s, under the timeout) is written too,
            // but is no failure.
            if !path.contains("slow-unit-") {
                report.crash = Some(path.trim().to_string());
            }
        } else if line.starts_with('#') && line.contains(" cov: ") {
            if let Some(n) = line[1..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
            {
                report.executions = report.executions.max(n);
            }
            report.coverage = field(line, " cov: ").unwrap_or(report.coverage);
            report.features = field(line, " ft: ").unwrap_or(report.features);
            report.corpus = field(line, " corp: ").unwrap_or(report.corpus);
        }
    }
    report
}

fn print_table(rows: &[(&Target, Report)], secs: u64) {
    println!(
        "{:<12} {:<16} {:>12} {:>9} {:>6} {:>7} {:>7}  result",
        "target", "crate", "executions", "exec/s", "cov", "ft", "corpus"
    );
    for (target, r) in rows {
        let result = if r.crash.is_some() { "CRASH" } else { "ok" };
        println!(
            "{:<12} {:<16} {:>12} {:>9} {:>6} {:>7} {:>7}  {result}",
            target.name,
            target.krate,
            r.executions,
            r.executions / secs.max(1),
            r.coverage,
            r.features,
            r.corpus
        );
    }
    println!(
        "cov: coverage counters hit (about the edges reached); ft: libFuzzer's features; \
         {secs} s per target"
    );
}

/// The `[[bin]]` names of a cargo-fuzz crate's manifest.
#[cfg(test)]
fn manifest_targets(manifest: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).expect("the fuzz manifest reads");
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let Some(value) = line.strip_prefix("name = ").filter(|_| in_bin) {
            names.push(value.trim_matches('"').to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_of_both_crates_runs() {
        let mut listed: Vec<String> = TARGETS.iter().map(|t| t.name.to_string()).collect();
        let mut declared: Vec<String> = [VMM, BOOT]
            .iter()
            .flat_map(|k| manifest_targets(&workspace_root().join(k).join("Cargo.toml")))
            .collect();
        listed.sort();
        declared.sort();
        assert_eq!(listed, declared);
        for t in TARGETS {
            let declared_here =
                manifest_targets(&workspace_root().join(t.krate).join("Cargo.toml"));
            assert!(
                declared_here.iter().any(|n| n == t.name),
                "{} not in {}",
                t.name,
                t.krate
            );
            for seed in t.seeds {
                assert!(workspace_root().join(seed).is_dir(), "{seed}");
            }
        }
    }

    #[test]
    fn reads_libfuzzer_output() {
        let text = "\
INFO: Seed: 1
#2\tINITED cov: 12 ft: 13 corp: 1/1b exec/s: 0 rss: 30Mb
#4436007\tREDUCE cov: 215 ft: 681 corp: 133/45Kb lim: 4096 exec/s: 554500 rss: 33Mb
#4436372\tDONE   cov: 216 ft: 682 corp: 134/45Kb lim: 4096 exec/s: 492930 rss: 33Mb
Done 4436372 runs in 9 second(s)
stat::number_of_executed_units: 4436372
stat::new_units_added: 71
";
        assert_eq!(
            parse(text),
            Report {
                executions: 4436372,
                coverage: 216,
                features: 682,
                corpus: 134,
                crash: None
            }
        );
        let crash = "\
#100\tNEW    cov: 50 ft: 60 corp: 5/20b lim: 4 exec/s: 0 rss: 30Mb
thread '<unnamed>' panicked at fuzz_targets/x.rs:3:5:
==1== ERROR: libFuzzer: deadly signal
artifact_prefix='/r/fuzz/artifacts/x/'; Test unit written to /r/fuzz/artifacts/x/crash-ab12
";
        let slow = "artifact_prefix='/a/'; Test unit written to /a/slow-unit-0f\n";
        assert_eq!(parse(slow).crash, None);
        let r = parse(crash);
        assert_eq!(r.crash.as_deref(), Some("/r/fuzz/artifacts/x/crash-ab12"));
        assert_eq!((r.executions, r.coverage), (100, 50));
    }
}
