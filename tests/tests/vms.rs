//! VMs inside nodes: VMX/EPT, guest loading, exits, devices, containment,
//! exit statistics, judged by console events (hypervisor/EVENTS.md) in
//! Bochs, the only emulator here with VMX.

mod common;

use atoll_tests::{ConfigModule, Emulator, Ending, Event, RunOutcome, RunSpec};
use common::{boot, spec};

/// The events named `name` of VM `vm`.
fn vm_events<'a>(out: &'a RunOutcome, name: &str, vm: &str) -> Vec<&'a Event> {
    out.events_named(name)
        .into_iter()
        .filter(|e| e.str("vm") == Some(vm))
        .collect()
}

fn config_bytes(text: &str) -> RunSpec {
    RunSpec {
        config: ConfigModule::Bytes(text.as_bytes().to_vec()),
        ..spec()
    }
}

/// Three test guests in two nodes: a 2-vCPU `smp` guest and a `hello`
/// in node a, a `hello` in node b.
const THREE_GUESTS: &str = r#"
[[node]]
name = "a"
cpus = [0, 1]
mem_mib = 64

[[node]]
name = "b"
cpus = [2, 3]
mem_mib = 64

[[channel]]
name = "a-b"
size_kib = 64
access = { a = "rw", b = "rw" }

[[ipi]]
from = "a"
to = "b"
notifications = [0]

[[ipi]]
from = "b"
to = "a"
notifications = [0]

[[vm]]
name = "smp-a"
node = "a"
vcpus = 2
mem_mib = 16
kernel = "smp"
cmdline = "smp-a on node a"
pin = [0, 1]

[[vm]]
name = "hello-a"
node = "a"
vcpus = 1
mem_mib = 16
kernel = "hello"
cmdline = "hello-a on node a"
devices = ["uart", "debug-exit", "fw-cfg"]
on_crash = "stop"

[[vm]]
name = "hello-b"
node = "b"
vcpus = 1
mem_mib = 16
kernel = "hello"
cmdline = "hello-b on node b"
"#;

#[test]
fn three_test_guests_run_in_two_nodes_and_power_off_cleanly() {
    let spec = config_bytes(THREE_GUESTS);
    let out = boot(&spec);
    let why = out.diagnostics();
    assert!(out.success(), "{why}");
    // The 2-vCPU VM runs the `smp` guest: its second vCPU comes up by
    // INIT/SIPI on the other CPU of node a.
    let smp = vm_events(&out, "guest_smp", "smp-a");
    assert_eq!(smp.len(), 1, "{why}");
    assert_eq!(
        (smp[0].u64("cpus"), smp[0].u64("aps_up")),
        (Some(2), Some(1)),
        "{why}"
    );
    let up = vm_events(&out, "guest_cpu_up", "smp-a");
    assert_eq!(up.first().and_then(|e| e.u64("apic_id")), Some(1), "{why}");
    for (vm, node, vcpus, cpus) in [
        ("smp-a", 0, 2, vec![0, 1]),
        ("hello-a", 0, 1, vec![0]),
        ("hello-b", 1, 1, vec![2]),
    ] {
        let start = vm_events(&out, "vm_start", vm);
        assert_eq!(start.len(), 1, "{vm}: one vm_start\n{why}");
        assert_eq!(start[0].u64("node"), Some(node), "{why}");
        assert_eq!(start[0].u64_list("cpus"), Some(cpus), "{why}");
        let (mem_start, mem_end) = start[0].range("mem").expect("mem");
        assert_eq!(mem_end - mem_start, 16 << 20, "{why}");
        // The hello guests saw their own command line and, through fw_cfg,
        // their own vCPU count and RAM size.
        if vm != "smp-a" {
            let hello = vm_events(&out, "guest_hello", vm);
            assert_eq!(hello.len(), 1, "{vm}: one guest_hello\n{why}");
            let cmdline = hello[0].str("cmdline").unwrap_or_default();
            assert!(cmdline.starts_with(vm), "{why}");
            assert_eq!(hello[0].u64("cpus"), Some(vcpus), "{why}");
            assert_eq!(hello[0].u64("ram_mib"), Some(16), "{why}");
        }
        let exit = vm_events(&out, "vm_exit", vm);
        assert_eq!(exit.len(), 1, "{why}");
        assert_eq!(exit[0].u64("status"), Some(0), "{why}");
        let stats = vm_events(&out, "stats", vm);
        assert_eq!(stats.len(), 1, "{why}");
        let reasons = stats[0]
            .get("reasons")
            .and_then(|r| r.as_array())
            .expect("reasons");
        assert!(
            reasons.iter().any(|r| r == "io"),
            "port I/O exits counted\n{why}"
        );
        assert!(stats[0].u64("exits").is_some_and(|n| n > 10), "{why}");
        let ppm = stats[0].u64("outside_ppm").expect("outside_ppm");
        assert!(ppm > 0 && ppm < 1_000_000, "{why}");
    }
    // Guest console lines carry their VM's name.
    assert!(
        out.lines
            .iter()
            .any(|l| l == "[hello-b] hello from hello-b on node b"),
        "{why}"
    );
}

#[test]
fn vms_without_vmx_are_a_clear_error() {
    let spec = RunSpec {
        emulator: Emulator::Qemu,
        cpus: 4,
        ..config_bytes(THREE_GUESTS)
    };
    let out = boot(&spec);
    let why = out.diagnostics();
    let errors: Vec<&Event> = out
        .events_named("error")
        .into_iter()
        .filter(|e| e.str("kind") == Some("vmx"))
        .collect();
    assert_eq!(errors.len(), 2, "one per node with VMs\n{why}");
    assert!(out.events_named("vm_start").is_empty(), "{why}");
    assert_eq!(out.ending, Ending::PoweredOff { status: 1 }, "{why}");
}

#[test]
fn the_devices_list_takes_effect() {
    let out = boot(&config_bytes(
        r#"
[[node]]
name = "a"
cpus = [0, 1]
mem_mib = 32

[[vm]]
name = "fails"
node = "a"
vcpus = 1
mem_mib = 8
kernel = "hello"
devices = ["uart", "debug-exit"]
"#,
    ));
    let why = out.diagnostics();
    // Without fw_cfg the guest reports 0 CPUs and exits 0 all the same;
    // the devices list took effect.
    let hello = vm_events(&out, "guest_hello", "fails");
    assert_eq!(hello.first().and_then(|e| e.u64("cpus")), Some(0), "{why}");
    assert_eq!(out.ending, Ending::PoweredOff { status: 0 }, "{why}");
}

#[test]
fn a_vm_signals_a_vm_on_another_node_through_its_capability() {
    let out = boot(&config_bytes(&common::two_nodes(
        32,
        32,
        true,
        r#"
[[vm]]
name = "ping"
node = "a"
vcpus = 1
mem_mib = 4
kernel = "signal"
cmdline = "role=ping rounds=50"
signal = [{ vm = "pong", notifications = [0] }]

[[vm]]
name = "pong"
node = "b"
vcpus = 1
mem_mib = 4
kernel = "signal"
cmdline = "role=pong rounds=50"
signal = [{ vm = "ping", notifications = [0] }]
"#,
    )));
    let why = out.diagnostics();
    assert!(out.success(), "{why}");
    let rtt = vm_events(&out, "guest_signal", "ping");
    assert_eq!(rtt.len(), 1, "{why}");
    assert_eq!(rtt[0].u64("rounds"), Some(50), "{why}");
    let (min, median) = (
        rtt[0].u64("min_cycles").unwrap(),
        rtt[0].u64("median_cycles").unwrap(),
    );
    assert!(0 < min && min <= median, "{why}");
    // Both sides blocked in `wait` between signals: their vmcall exits
    // (signal + wait per round) are counted.
    for vm in ["ping", "pong"] {
        let stats = vm_events(&out, "stats", vm);
        let reasons = stats[0]
            .get("reasons")
            .and_then(|r| r.as_array())
            .expect("reasons");
        let counts = stats[0].u64_list("counts").expect("counts");
        let vmcalls = reasons
            .iter()
            .position(|r| r == "vmcall")
            .map(|i| counts[i]);
        assert!(
            vmcalls.is_some_and(|n| n >= 100),
            "{vm}: {vmcalls:?}\n{why}"
        );
    }
}

#[test]
fn vcpus_sharing_a_cpu_keep_their_own_sse_registers() {
    let vm = |name: &str, seed: u32| {
        format!(
            r#"
[[vm]]
name = "{name}"
node = "a"
vcpus = 1
mem_mib = 4
kernel = "fpu"
cmdline = "seed={seed} rounds=40"
pin = [0]
"#
        )
    };
    let config = format!(
        "[[node]]\nname = \"a\"\ncpus = [0, 1]\nmem_mib = 32\n{}{}",
        vm("fpu-1", 1000),
        vm("fpu-2", 2000)
    );
    let out = boot(&config_bytes(&config));
    let why = out.diagnostics();
    assert!(out.success(), "{why}");
    for name in ["fpu-1", "fpu-2"] {
        let case = vm_events(&out, "guest_case", name);
        assert_eq!(
            case.first().and_then(|c| c.bool("ok")),
            Some(true),
            "{name}\n{why}"
        );
        // The two really were switched on the CPU, by the preemption timer.
        let stats = vm_events(&out, "stats", name);
        let reasons = stats[0]
            .get("reasons")
            .and_then(|r| r.as_array())
            .expect("reasons");
        assert!(
            reasons.iter().any(|r| r == "preemption_timer"),
            "{name}\n{why}"
        );
    }
}

#[test]
fn an_existing_multiboot2_kernel_boots_unchanged_atoll_itself() {
    // The hypervisor's own ELF is a Multiboot2 kernel. As a guest it boots,
    // finds no ACPI tables (a VM gets none yet) and powers off through
    // isa-debug-exit with status 1: every step shows on its console.
    let elf = common::hypervisor();
    let relative = elf
        .strip_prefix(atoll_tests::build::workspace_root())
        .expect("the build is inside the workspace");
    let out = boot(&config_bytes(&format!(
        r#"
[[node]]
name = "a"
cpus = [0, 1]
mem_mib = 64

[[vm]]
name = "inner"
node = "a"
vcpus = 1
mem_mib = 32
kernel = "{}"
cmdline = "inner=1"
"#,
        relative.display()
    )));
    let why = out.diagnostics();
    let inner: Vec<&atoll_tests::Event> = out
        .events
        .iter()
        .filter(|e| e.str("vm") == Some("inner"))
        .collect();
    let boot_start = inner.iter().find(|e| e.name == "boot_start");
    assert_eq!(
        boot_start.and_then(|e| e.str("cmdline")),
        Some("inner=1"),
        "{why}"
    );
    let memory = inner
        .iter()
        .find(|e| e.name == "memory")
        .expect("a memory event");
    assert_eq!(
        memory.u64("usable_mib"),
        Some(31),
        "the VM's memory map\n{why}"
    );
    assert!(
        inner
            .iter()
            .any(|e| e.name == "error" && e.str("kind") == Some("acpi")),
        "{why}"
    );
    let exit = vm_events(&out, "vm_exit", "inner");
    assert_eq!(exit.first().and_then(|e| e.u64("status")), Some(1), "{why}");
    assert!(
        matches!(out.ending, Ending::PoweredOff { status: 1 }),
        "{why}"
    );
}

#[test]
fn every_hypercall_works_as_documented_across_two_nodes_sharing_a_channel() {
    let vms = r#"
[[channel]]
name = "a-b"
size_kib = 64
access = { a = "rw", b = "r" }

[[vm]]
name = "reader"
node = "b"
vcpus = 1
mem_mib = 4
kernel = "abi"
cmdline = "role=reader"
channels = ["a-b"]

[[vm]]
name = "scribbler"
node = "b"
vcpus = 1
mem_mib = 4
kernel = "abi"
cmdline = "role=scribbler"
channels = ["a-b"]

[[vm]]
name = "writer"
node = "a"
vcpus = 1
mem_mib = 4
kernel = "abi"
cmdline = "role=writer"
channels = ["a-b"]
signal = [{ vm = "reader", notifications = [0] }]
"#;
    let out = boot(&config_bytes(&common::two_nodes(32, 32, true, vms)));
    let why = out.diagnostics();
    let ids = vm_events(&out, "guest_ids", "writer");
    let got = ids
        .first()
        .map(|e| (e.u64("vm_index"), e.u64("vcpu"), e.u64("node")));
    assert_eq!(got, Some((Some(2), Some(0), Some(0))), "{why}");
    // Node b holds the channel read-only: a write through it stops the VM.
    let stopped = vm_events(&out, "vm_stopped", "scribbler");
    let reason = stopped.first().and_then(|e| e.str("reason"));
    assert_eq!(reason, Some("ept_violation"), "{why}");
    assert!(
        out.lines
            .iter()
            .any(|l| l == "[writer] written through a hypercall"),
        "{why}"
    );
    // report_stats, then the stats at the VM's end: two.
    assert_eq!(vm_events(&out, "stats", "writer").len(), 2, "{why}");
    let exit = vm_events(&out, "vm_exit", "writer");
    assert_eq!(
        exit.first().and_then(|e| e.u64("status")),
        Some(7),
        "power_off(7)\n{why}"
    );
    // The reader, on the other node, mapped the same channel (read-only)
    // and saw the writer's pattern.
    let case = vm_events(&out, "guest_case", "reader");
    assert_eq!(case.first().and_then(|c| c.bool("ok")), Some(true), "{why}");
    assert_eq!(
        out.ending,
        Ending::PoweredOff { status: 1 },
        "a VM exited non-zero\n{why}"
    );
}

#[test]
fn exitbench_times_every_operation_and_every_wake_up_arrives() {
    // The guest checks that each self-IPI and each one-shot timer woke it
    // exactly once (else it exits with status 1); the figures themselves
    // are `cargo xtask bench exitbench`'s business, not this test's.
    let vm = r#"
[[vm]]
name = "exitbench"
node = "a"
vcpus = 1
mem_mib = 4
kernel = "exitbench"
cmdline = "iterations=50 mmio=1"
devices = ["uart", "debug-exit", "fw-cfg", "testdev"]
"#;
    let out = boot(&config_bytes(&common::two_nodes(16, 16, false, vm)));
    let why = out.diagnostics();
    assert!(out.success(), "{why}");
    let ops: Vec<&str> = vm_events(&out, "guest_exitbench", "exitbench")
        .iter()
        .filter_map(|e| e.str("op"))
        .collect();
    let expected = [
        "rdtsc",
        "cpuid",
        "vmcall",
        "pio_out",
        "pio_in",
        "mmio_write",
        "mmio_read",
        "hlt_wakeup",
        "timer_wakeup",
    ];
    assert_eq!(ops, expected, "{why}");
}

#[test]
fn vcpus_the_node_has_no_kernel_memory_for_stop_their_vms_cleanly() {
    // 256 vCPUs in a node with the smallest kernel memory: VMCS and FPU
    // pages run out part-way. The VMs that cannot be set up are stopped
    // (`setup_failed`, never restarted) and the run ends; nothing hangs.
    let mut config =
        String::from("[[node]]\nname = \"a\"\ncpus = [0, 1]\nmem_mib = 24\nkernel_mib = 2\n");
    for i in 0..4 {
        config += &format!(
            "\n[[vm]]\nname = \"many{i}\"\nnode = \"a\"\nvcpus = 64\nmem_mib = 4\nkernel = \"hello\"\non_crash = \"restart\"\n"
        );
    }
    let out = boot(&config_bytes(&config));
    let why = out.diagnostics();
    let failed = out
        .events_named("vm_stopped")
        .iter()
        .filter(|e| e.str("reason") == Some("setup_failed"))
        .count();
    assert!(failed >= 1, "{why}");
    assert!(out.events_named("vm_restarted").is_empty(), "{why}");
    assert_eq!(out.ending, Ending::PoweredOff { status: 1 }, "{why}");
}

#[test]
fn a_vm_beyond_the_config_bounds_is_refused_and_the_rest_boots() {
    // 100000 vCPUs once booted as 65535 (a u16 truncation) and took the
    // host down with a failed allocation. Now the parser's bound (255)
    // refuses that VM alone: `vm_refused` names it and the error, the
    // other VM beats to its end in node b, and the machine powers off
    // (status 1: a VM of the config did not run).
    let vms = r#"
[[vm]]
name = "beat"
node = "b"
vcpus = 1
mem_mib = 4
kernel = "heartbeat"
cmdline = "beats=3"

[[vm]]
name = "big"
node = "a"
vcpus = 100000
mem_mib = 4
kernel = "hello"
"#;
    let out = boot(&config_bytes(&common::two_nodes(16, 16, false, vms)));
    let why = out.diagnostics();
    let refused = out.events_named("vm_refused");
    assert_eq!(refused.len(), 1, "{why}");
    assert_eq!(refused[0].str("vm"), Some("big"), "{why}");
    let msg = refused[0].str("msg").unwrap_or_default();
    assert!(
        msg.starts_with("cluster.toml:")
            && msg.contains("vCPU count 100000 is too large")
            && msg.contains("255"),
        "{why}"
    );
    assert!(vm_events(&out, "vm_start", "big").is_empty(), "{why}");
    assert_eq!(vm_events(&out, "guest_heartbeat", "beat").len(), 3, "{why}");
    let exit = vm_events(&out, "vm_exit", "beat");
    assert_eq!(exit.len(), 1, "{why}");
    assert_eq!(exit[0].u64("status"), Some(0), "{why}");
    assert!(out.events_named("error").is_empty(), "{why}");
    assert_eq!(out.ending, Ending::PoweredOff { status: 1 }, "{why}");
}
