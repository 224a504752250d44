//! Linux guests: Atoll's small Linux kernel and busybox initramfs
//! (guest-images/linux/) booted with the Linux boot protocol, SMP through
//! the virtual local APICs, devices through the IOAPIC, virtio-blk, ACPI
//! power-off; judged by the guest's own events (`linux_*`) and the VM's.
//! Bochs only (VMX).

mod common;

use atoll_tests::build::workspace_root;
use atoll_tests::{ConfigModule, ConsoleInput, Event, RunOutcome, RunSpec};
use common::{boot, spec};
use std::time::Duration;

fn vm_events<'a>(out: &'a RunOutcome, name: &str, vm: &str) -> Vec<&'a Event> {
    out.events_named(name)
        .into_iter()
        .filter(|e| e.str("vm") == Some(vm))
        .collect()
}

/// A Linux run: 2 emulated CPUs (Bochs runs them round robin on one host
/// thread, so more only slow it down) and room for a boot.
fn linux_spec(config: ConfigModule, cpus: u32) -> RunSpec {
    RunSpec {
        config,
        cpus,
        timeout: Duration::from_secs(900),
        ..spec()
    }
}

/// What the acceptance workload (guest-images/linux/rootfs/etc/atoll/
/// smp-blk.sh) must have reported in VM `vm` with `cpus` vCPUs, and how
/// the VM must have ended.
fn assert_workload_passed(out: &RunOutcome, vm: &str, cpus: u64, virtio_console: bool) {
    let why = out.diagnostics();
    let init = vm_events(out, "linux_init", vm);
    assert_eq!(init.len(), 1, "{vm}: Linux reached init once\n{why}");
    assert_eq!(
        init[0].u64("cpus"),
        Some(cpus),
        "{vm}: /proc/cpuinfo\n{why}"
    );
    let checks = vm_events(out, "linux_check", vm);
    for name in [
        "smp_checksum",
        "virtio_blk_present",
        "virtio_blk_write",
        "virtio_blk_readback",
    ] {
        let check = checks.iter().find(|e| e.str("check") == Some(name));
        let check = check.unwrap_or_else(|| panic!("{vm}: no {name} check\n{why}"));
        assert_eq!(check.get("ok"), Some(&true.into()), "{vm}: {name}\n{why}");
    }
    let console = checks
        .iter()
        .find(|e| e.str("check") == Some("virtio_console"));
    assert_eq!(
        console.is_some(),
        virtio_console,
        "{vm}: the virtio_console check, written to /dev/hvc0\n{why}"
    );
    let smp = checks
        .iter()
        .find(|e| e.str("check") == Some("smp_checksum"));
    assert_eq!(smp.and_then(|e| e.u64("cpus")), Some(cpus), "{why}");
    let readback = checks
        .iter()
        .find(|e| e.str("check") == Some("virtio_blk_readback"));
    assert!(
        readback.and_then(|e| e.u64("reads")).is_some_and(|n| n > 0),
        "{vm}: the read-back came from the disk, not the page cache\n{why}"
    );
    let done = vm_events(out, "linux_run_done", vm);
    assert_eq!(done.first().and_then(|e| e.u64("status")), Some(0), "{why}");
    // `poweroff` in the guest is an ACPI S5 request: the VM ends cleanly.
    let exit = vm_events(out, "vm_exit", vm);
    assert_eq!(exit.len(), 1, "{vm}: one vm_exit\n{why}");
    assert_eq!(exit[0].u64("status"), Some(0), "{why}");
    assert!(vm_events(out, "vm_stopped", vm).is_empty(), "{why}");
    let stats = vm_events(out, "stats", vm);
    assert_eq!(stats.len(), 1, "{vm}: one stats event\n{why}");
    let reasons: Vec<&str> = stats[0]
        .get("reasons")
        .and_then(|r| r.as_array())
        .expect("reasons")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    for reason in ["io", "wrmsr", "ept_violation", "hlt"] {
        assert!(reasons.contains(&reason), "{vm}: {reason} exits\n{why}");
    }
    assert!(
        stats[0].u64("root_ticks").is_some_and(|t| t > 0),
        "{vm}: time outside the VM\n{why}"
    );
}

/// A Linux VM in `node` with `vcpus` that runs the acceptance workload,
/// with a 4 MiB disk and no virtio-console.
fn workload_vm(name: &str, node: &str, vcpus: u32) -> String {
    format!(
        r#"
[[vm]]
name = "{name}"
node = "{node}"
vcpus = {vcpus}
mem_mib = 64
kernel = "linux"
initrd = "initramfs"
cmdline = "console=ttyS0 quiet atoll.run=smp-blk"
devices = ["uart", "virtio-blk"]
disk_mib = 4
"#
    )
}

#[test]
fn a_two_vcpu_linux_vm_runs_a_workload_on_both_cpus_and_on_virtio_blk_then_powers_off() {
    let spec = linux_spec(
        ConfigModule::File(workspace_root().join("configs/linux.toml")),
        2,
    );
    let out = boot(&spec);
    assert!(out.success(), "{}", out.diagnostics());
    assert_workload_passed(&out, "linux", 2, true);
}

#[test]
fn two_linux_vms_on_two_nodes_run_at_the_same_time_and_both_finish() {
    let config = format!(
        "[[node]]\nname = \"a\"\ncpus = [0]\nmem_mib = 80\n\n\
         [[node]]\nname = \"b\"\ncpus = [1]\nmem_mib = 80\n{}{}",
        workload_vm("linux-a", "a", 1),
        workload_vm("linux-b", "b", 1)
    );
    let spec = linux_spec(ConfigModule::Bytes(config.into_bytes()), 2);
    let out = boot(&spec);
    let why = out.diagnostics();
    assert!(out.success(), "{why}");
    for vm in ["linux-a", "linux-b"] {
        assert_workload_passed(&out, vm, 1, false);
    }
    // At the same time: each VM reached init before the other one ended.
    let index_of = |name: &str, vm: &str| {
        out.events
            .iter()
            .position(|e| e.name == name && e.str("vm") == Some(vm))
            .unwrap_or_else(|| panic!("{vm}: {name}\n{why}"))
    };
    assert!(index_of("linux_init", "linux-a") < index_of("vm_exit", "linux-b"));
    assert!(index_of("linux_init", "linux-b") < index_of("vm_exit", "linux-a"));
}

#[test]
fn the_default_cluster_gives_each_linux_vm_a_shell_on_the_multiplexed_console() {
    // What `cargo xtask run` boots, typed into as a user would: a command
    // in VM 0's shell, then `poweroff`; Ctrl-A 1 to give VM 1 the keyboard,
    // `poweroff` there too.
    let typed = [
        ConsoleInput::new(
            "[linux-a] linux-a:/# ",
            b"echo typed-$((6 * 7)) on $(grep -c ^processor /proc/cpuinfo) cpus\r",
        ),
        ConsoleInput::new("typed-42 on 2 cpus", b"poweroff\r"),
        ConsoleInput::new(r#"[linux-b] @ev {"ev":"linux_init""#, b"\x011"),
        ConsoleInput::new("[linux-b] linux-b:/# ", b"poweroff\r"),
    ];
    let spec = RunSpec {
        config: ConfigModule::File(workspace_root().join("configs/default.toml")),
        console_input: typed.to_vec(),
        timeout: Duration::from_secs(900),
        ..spec()
    };
    let out = boot(&spec);
    let why = out.diagnostics();
    assert!(out.success(), "{why}");
    // The command ran in linux-a (2 vCPUs) and its output came back with
    // the VM's prefix.
    assert!(
        out.lines
            .iter()
            .any(|l| l.starts_with("[linux-a] ") && l.ends_with("typed-42 on 2 cpus")),
        "{why}"
    );
    let focus = out.events_named("console_focus");
    assert_eq!(focus.len(), 1, "{why}");
    assert_eq!(focus[0].u64("index"), Some(1), "{why}");
    for vm in ["linux-a", "linux-b"] {
        assert_eq!(vm_events(&out, "linux_init", vm).len(), 1, "{vm}\n{why}");
        let exit = vm_events(&out, "vm_exit", vm);
        assert_eq!(
            exit.first().and_then(|e| e.u64("status")),
            Some(0),
            "{vm}\n{why}"
        );
    }
    // An open prompt line is ended before another VM's line starts.
    let mixed = out
        .lines
        .iter()
        .find(|l| l.find("[linux-").is_some_and(|at| at > 0));
    assert!(mixed.is_none(), "{mixed:?}\n{why}");
    // Nothing typed for linux-a reached linux-b: its shell ran only the
    // poweroff typed after the focus moved.
    assert!(
        !out.lines
            .iter()
            .any(|l| l.starts_with("[linux-b] ") && l.contains("typed-42")),
        "{why}"
    );
}

#[test]
fn a_linux_reboot_starts_the_vm_again_with_its_disk_kept() {
    let config = r#"
[[node]]
name = "a"
cpus = [0, 1]
mem_mib = 80

[[vm]]
name = "rebooter"
node = "a"
vcpus = 1
mem_mib = 64
kernel = "linux"
initrd = "initramfs"
cmdline = "console=ttyS0 quiet atoll.run=reboot"
devices = ["uart", "virtio-blk"]
disk_mib = 4
"#;
    let out = boot(&linux_spec(
        ConfigModule::Bytes(config.as_bytes().to_vec()),
        2,
    ));
    let why = out.diagnostics();
    assert!(out.success(), "{why}");
    let restarted = vm_events(&out, "vm_restarted", "rebooter");
    assert_eq!(restarted.len(), 1, "{why}");
    assert_eq!(restarted[0].str("cause"), Some("reboot"), "{why}");
    assert_eq!(restarted[0].u64("restarts"), Some(0), "not a crash\n{why}");
    assert_eq!(vm_events(&out, "linux_init", "rebooter").len(), 2, "{why}");
    let check = vm_events(&out, "linux_check", "rebooter");
    assert_eq!(check.len(), 1, "{why}");
    assert_eq!(check[0].str("check"), Some("reboot"), "{why}");
    assert_eq!(
        check[0].get("ok"),
        Some(&true.into()),
        "the disk kept the marker\n{why}"
    );
    let exit = vm_events(&out, "vm_exit", "rebooter");
    assert_eq!(exit.first().and_then(|e| e.u64("status")), Some(0), "{why}");
}

#[test]
fn two_smp_linux_vms_time_share_the_cpus_of_one_node() {
    // Four vCPUs on two CPUs: each CPU switches between a vCPU of each VM
    // at every slice, so everything a vCPU leaves in the processor (its
    // SWAPGS'd GS base, CR2, debug and extended state) must follow it.
    let config = format!(
        "[[node]]\nname = \"a\"\ncpus = [0, 1]\nmem_mib = 160\n{}{}",
        workload_vm("linux-x", "a", 2),
        workload_vm("linux-y", "a", 2)
    );
    let out = boot(&linux_spec(ConfigModule::Bytes(config.into_bytes()), 2));
    assert!(out.success(), "{}", out.diagnostics());
    for vm in ["linux-x", "linux-y"] {
        let start = vm_events(&out, "vm_start", vm);
        assert_eq!(
            start.first().and_then(|e| e.u64_list("cpus")),
            Some(vec![0, 1]),
            "{vm} shares both CPUs\n{}",
            out.diagnostics()
        );
        assert_workload_passed(&out, vm, 2, false);
    }
}
