//! Shared by the integration tests: build the hypervisor once per test
//! binary, and boot it.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use atoll_tests::build::{Profile, build_hypervisor};
use atoll_tests::events_doc::EventsDoc;
use atoll_tests::{Emulator, Ending, RunOutcome, RunSpec};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The release hypervisor ELF, built on first use.
pub fn hypervisor() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| build_hypervisor(Profile::Release).expect("the hypervisor builds"))
        .clone()
}

/// A run spec with the defaults of `cargo xtask run`.
pub fn spec() -> RunSpec {
    RunSpec::new(hypervisor())
}

/// Boots `spec`; the console is printed only if the test fails (libtest
/// captures stdout). Every event the run printed must be documented, with
/// all its fields, in hypervisor/EVENTS.md.
pub fn boot(spec: &RunSpec) -> RunOutcome {
    let out =
        atoll_tests::run(spec, |line| println!("{line}")).expect("the harness can start the run");
    let doc = EventsDoc::load().expect("hypervisor/EVENTS.md is readable");
    let undocumented: Vec<String> = out
        .events
        .iter()
        .filter_map(|e| doc.undocumented(e))
        .collect();
    assert!(
        undocumented.is_empty(),
        "{}\n{}",
        undocumented.join("\n"),
        out.diagnostics()
    );
    assert!(
        out.bad_events.is_empty(),
        "malformed event lines\n{}",
        out.diagnostics()
    );
    out
}

/// Boots QEMU with `selftest=NAME` and expects a CPU exception reported as
/// a panic whose message starts with `prefix`, ending the run as a panic.
pub fn assert_selftest_exception(selftest: &str, prefix: &str) -> RunOutcome {
    let mut spec = spec();
    spec.emulator = Emulator::Qemu;
    spec.cmdline = format!("selftest={selftest}");
    let out = boot(&spec);
    let why = out.diagnostics();
    let panic = out.event("panic").expect("a panic event, not a reset");
    let msg = panic.str("msg").unwrap_or_default();
    assert!(msg.starts_with(prefix), "{why}");
    assert!(msg.contains("rip 0x"), "{why}");
    assert!(matches!(out.ending, Ending::Panic { .. }), "{why}");
    out
}

/// A config of two nodes, `a` (CPUs 0-1) and `b` (CPUs 2-3), with these
/// memory sizes, IPI rights for notification 0 both ways (or none), then
/// `rest` (the VMs).
pub fn two_nodes(a_mib: u32, b_mib: u32, ipis: bool, rest: &str) -> String {
    let mut text = format!(
        "[[node]]\nname = \"a\"\ncpus = [0, 1]\nmem_mib = {a_mib}\n\n[[node]]\nname = \"b\"\ncpus = [2, 3]\nmem_mib = {b_mib}\n"
    );
    if ipis {
        for (from, to) in [("a", "b"), ("b", "a")] {
            text += &format!("\n[[ipi]]\nfrom = \"{from}\"\nto = \"{to}\"\nnotifications = [0]\n");
        }
    }
    text + rest
}
