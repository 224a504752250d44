//! Boots of the hypervisor in Bochs and QEMU, judged by console events
//! (hypervisor/EVENTS.md).

mod common;

use atoll_tests::{ConfigModule, Emulator, Ending};
use common::{boot, spec};
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn bochs_reports_the_machine_and_powers_off_cleanly() {
    let out = boot(&spec());
    let why = out.diagnostics();
    assert!(out.success(), "{why}");
    assert!(
        out.wall_time < Duration::from_secs(60),
        "took {:?}\n{why}",
        out.wall_time
    );

    let boot = out.event("boot").expect("a boot event");
    assert_eq!(boot.u64("cpus"), Some(4), "{why}");
    let mem = boot.u64("mem_mib").expect("mem_mib");
    assert!(
        (500..=512).contains(&mem),
        "512 MiB machine reported {mem} MiB\n{why}"
    );
    assert_eq!(boot.bool("vmx"), Some(true), "{why}");
    assert_eq!(boot.bool("ept"), Some(true), "{why}");
    assert_eq!(boot.bool("unrestricted_guest"), Some(true), "{why}");

    let cpus = out.events_named("cpu_found");
    assert_eq!(cpus.len(), 4, "one cpu_found per CPU\n{why}");
    let ids: BTreeSet<u64> = cpus.iter().filter_map(|e| e.u64("apic_id")).collect();
    assert_eq!(ids.len(), 4, "four distinct APIC IDs\n{why}");
    assert_eq!(
        cpus.iter().filter(|e| e.bool("bsp") == Some(true)).count(),
        1,
        "{why}"
    );
    assert!(!out.events_named("ioapic_found").is_empty(), "{why}");
    assert!(out.event("vmx_caps").is_some(), "{why}");

    let config_len =
        std::fs::metadata(atoll_tests::build::workspace_root().join("configs/core.toml"))
            .expect("configs/core.toml")
            .len();
    let config = out.event("config").expect("a config event");
    assert_eq!(config.u64("bytes"), Some(config_len), "{why}");
    assert_eq!(config.str("name"), Some("cluster.toml"), "{why}");
}

#[test]
fn qemu_boots_without_vmx() {
    let mut spec = spec();
    spec.emulator = Emulator::Qemu;
    let out = boot(&spec);
    let why = out.diagnostics();
    assert!(out.success(), "{why}");
    let boot = out.event("boot").expect("a boot event");
    assert_eq!(boot.u64("cpus"), Some(4), "{why}");
    assert_eq!(boot.bool("vmx"), Some(false), "{why}");
    assert_eq!(boot.bool("ept"), Some(false), "{why}");
    assert!(
        out.event("vmx_caps").is_none(),
        "no VMX MSRs without VMX\n{why}"
    );
}

#[test]
fn selftest_panic_reports_file_and_line_and_fails_the_run() {
    let mut spec = spec();
    spec.cmdline = "selftest=panic".into();
    let out = boot(&spec);
    let why = out.diagnostics();
    let panic = out.event("panic").expect("a panic event");
    let file = panic.str("file").unwrap_or_default();
    assert!(
        file.len() > ".rs".len() && file.ends_with(".rs"),
        "panic file {file:?}\n{why}"
    );
    assert!(panic.u64("line").is_some_and(|l| l > 0), "{why}");
    assert!(
        panic
            .str("msg")
            .is_some_and(|m| m.contains("selftest=panic")),
        "{why}"
    );
    assert!(matches!(out.ending, Ending::Panic { .. }), "{why}");
    assert!(!out.success());
    assert!(
        out.event("poweroff").is_none(),
        "a panic halts; it does not power off\n{why}"
    );
}

#[test]
fn cpu_exception_is_reported_as_a_panic() {
    common::assert_selftest_exception("exception", "CPU exception #UD (vector 6)");
}

/// Boots `spec`, expects an `error` event of `kind` whose message contains
/// `mentions`, then a power-off with a non-zero status (no hang).
fn assert_boot_error(spec: &atoll_tests::RunSpec, kind: &str, mentions: &str) {
    let out = boot(spec);
    let why = out.diagnostics();
    let error = out.event("error").expect("an error event");
    assert_eq!(error.str("kind"), Some(kind), "{why}");
    let msg = error.str("msg").unwrap_or_default();
    assert!(
        msg.contains(mentions),
        "message should mention {mentions:?}\n{why}"
    );
    assert!(
        matches!(out.ending, Ending::PoweredOff { status } if status != 0),
        "{why}"
    );
    assert!(!out.success(), "{why}");
}

#[test]
fn missing_config_module_is_a_clear_error_and_a_clean_power_off() {
    let mut spec = spec();
    spec.config = ConfigModule::Absent;
    assert_boot_error(&spec, "config_missing", "cluster.toml");
}

#[test]
fn empty_config_module_is_a_clear_error_and_a_clean_power_off() {
    let mut spec = spec();
    spec.emulator = Emulator::Qemu;
    spec.config = ConfigModule::Bytes(Vec::new());
    assert_boot_error(&spec, "config_empty", "cluster.toml");
}

#[test]
fn unknown_command_line_key_stops_the_boot() {
    let mut spec = spec();
    spec.emulator = Emulator::Qemu;
    spec.cmdline = "seltest=panic".into();
    assert_boot_error(&spec, "cmdline", "seltest");
}

#[test]
fn unknown_selftest_stops_the_boot() {
    let mut spec = spec();
    spec.emulator = Emulator::Qemu;
    spec.cmdline = "selftest=nonsense".into();
    assert_boot_error(&spec, "cmdline", "nonsense");
}
