//! `cargo xtask test`: every test Atoll has, in two phases, then one line
//! `N passed, N failed` (the sum of libtest's `test result:` lines).
//!
//! 1. host tests: a plain `cargo test` (the workspace's default members:
//!    every crate that runs on the host);
//! 2. emulator tests: `cargo test -p atoll-tests --features emulator --test '*'`,
//!    the integration tests that boot the hypervisor in Bochs and QEMU.

use crate::{ensure_packages, progress};
use anyhow::{Context, Result};
use atoll_tests::build::{Profile, build_hypervisor, workspace_root};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Passed and failed test counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// Runs both phases; true when everything passed.
///
/// A hypervisor or guest image that does not build counts as one failure and skips the
/// emulator phase (every boot test would fail the same way), but the host
/// tests still run and the summary line is still printed.
pub fn run_all() -> Result<bool> {
    ensure_packages()?;
    let mut total = Tally::default();
    let mut all_ok = true;
    // The guest images first, in the open: the Linux kernel takes minutes
    // the first time, and inside a test its progress would be hidden.
    let built = match build_hypervisor(Profile::Release).and_then(|_| build_guest_images()) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("error: {e:#}; skipping the emulator tests");
            total.failed += 1;
            all_ok = false;
            false
        }
    };
    let phases: [(&str, &[&str]); 2] = [
        // --no-fail-fast: a failing test binary must not hide the results
        // of the ones after it.
        ("host tests", &["test", "--no-fail-fast"]),
        (
            "emulator tests",
            &[
                "test",
                "--no-fail-fast",
                "--package",
                "atoll-tests",
                "--features",
                "emulator",
                "--test",
                "*",
            ],
        ),
    ];
    let phases_to_run = if built { &phases[..] } else { &phases[..1] };
    for &(name, args) in phases_to_run {
        let (tally, ok) = run_phase(name, args)?;
        total.add(tally);
        all_ok &= ok;
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    Ok(all_ok && total.failed == 0)
}

/// The test guests and the Linux guest's kernel and initramfs (cached).
fn build_guest_images() -> Result<()> {
    atoll_tests::guests::build_guests()?;
    atoll_tests::linux::kernel()?;
    atoll_tests::linux::initramfs()?;
    Ok(())
}

/// Runs one cargo test invocation, streaming its output and counting.
fn run_phase(name: &str, args: &[&str]) -> Result<(Tally, bool)> {
    eprintln!("== {name}: cargo {}", args.join(" "));
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let spinner = progress::spinner(name.to_string());
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        spinner.suspend(|| println!("{line}"));
        if let Some(t) = parse_result_line(&line) {
            tally.add(t);
            spinner.set_message(format!(
                "{name}: {} passed, {} failed so far",
                tally.passed, tally.failed
            ));
        }
    }
    spinner.finish_and_clear();
    let status = child.wait()?;
    if !status.success() && tally.failed == 0 {
        // It failed before any test could fail (a build error): count it.
        eprintln!(
            "{name}: cargo {} failed ({status}) before reporting a failed test",
            args.join(" ")
        );
        tally.failed += 1;
    }
    Ok((tally, status.success()))
}

/// Reads libtest's summary: `test result: ok. 14 passed; 0 failed; ...`.
pub fn parse_result_line(line: &str) -> Option<Tally> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .rsplit_once(' ')
                    .filter(|(_, w)| *w == word)
                    .map(|(n, _)| n)
            })
            .and_then(|n| n.rsplit(' ').next()?.parse().ok())
    };
    Some(Tally {
        passed: count("passed")?,
        failed: count("failed")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_summaries() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 14 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.60s"
            ),
            Some(Tally {
                passed: 14,
                failed: 0
            })
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured"),
            Some(Tally {
                passed: 3,
                failed: 2
            })
        );
        assert_eq!(parse_result_line("running 3 tests"), None);
        assert_eq!(parse_result_line("test boot ... ok"), None);
    }
}
