//! Hostile guests (tests/docs/hostile-inputs.md): each case of the
//! `hostile` test guest runs in its own VM next to two `heartbeat` VMs, one
//! in the same node and one in the other. Every case must end with its VM
//! stopped (`vm_stopped` with the reason), faulted (`vm_fault`, and the
//! guest's own report) or refused without harm (the guest's `guest_case`
//! with ok = true); both neighbours must keep beating after it, and the
//! hypervisor must power off, not panic.

mod common;

use atoll_tests::{ConfigModule, Ending, Event, RunOutcome, RunSpec};
use common::{boot, spec};
use std::time::Duration;

/// How a case must end.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Stopped(&'static str),
    Faulted(u64),
    Refused,
}

use Expect::*;

/// Memory the VM does not own, and device accesses Atoll does not decode.
const MEMORY_CASES: &[(&str, Expect)] = &[
    ("write-above-ram", Stopped("ept_violation")),
    ("read-above-ram", Stopped("ept_violation")),
    ("fetch-above-ram", Stopped("ept_violation")),
    ("write-other-vm", Stopped("ept_violation")),
    ("write-other-node", Stopped("ept_violation")),
    // The xAPIC page is emulated for 32-bit register accesses only
    // (SDM 11.4.1); a 64-bit write to it is no register access.
    ("write-apic-mmio", Stopped("mmio_unsupported")),
    ("host-address-is-own-ram", Refused),
    ("mmio-unsupported-instruction", Stopped("mmio_unsupported")),
];

/// MSR, control-register and VMX instructions the guest may not execute:
/// each a fault injected into the guest.
const MSR_AND_CR_CASES: &[(&str, Expect)] = &[
    ("wrmsr-unknown", Faulted(13)),
    ("rdmsr-unknown", Faulted(13)),
    ("efer-reserved-bit", Faulted(13)),
    ("efer-lme-off-while-paging", Faulted(13)),
    ("fs-base-non-canonical", Faulted(13)),
    ("gs-base-non-canonical", Faulted(13)),
    ("kernel-gs-base-non-canonical", Faulted(13)),
    ("lstar-non-canonical", Faulted(13)),
    ("sysenter-eip-non-canonical", Faulted(13)),
    ("pat-invalid-type", Faulted(13)),
    ("apic-base-moved", Faulted(13)),
    ("cr4-vmxe", Faulted(13)),
    ("xsetbv-without-x87", Faulted(13)),
    ("vmxon", Faulted(6)),
];

/// Crashes stop the VM; bad hypercalls are refused with error codes.
const CRASH_AND_HYPERCALL_CASES: &[(&str, Expect)] = &[
    ("triple-fault", Stopped("triple_fault")),
    ("halt-forever", Stopped("halted_forever")),
    ("string-io", Stopped("string_io")),
    ("hypercall-from-user-mode", Refused),
    ("hypercall-boundaries", Refused),
    ("hypercall-random", Refused),
    ("hypercall-random-all-vcpus", Refused),
];

/// Exit, interrupt and signal storms, absorbed while the neighbours run;
/// and hostile virtio rings, refused.
const STORM_CASES: &[(&str, Expect)] = &[
    ("io-storm", Refused),
    ("cpuid-storm", Refused),
    ("interrupt-storm", Refused),
    ("signal-flood", Refused),
    ("init-sipi-to-missing-vcpus", Refused),
    ("virtio-rings", Refused),
];

/// Cases against the PC platform (`platform = "pc"`: IOAPIC, legacy
/// ports) and the xAPIC page, each refused without harm. Decisions where
/// the hardware would act (82093AA datasheet 3.2.4, SDM 11.6.1): IOAPIC
/// entries with vectors 0-15 are dropped (illegal vector), with SMI, INIT,
/// ExtINT or a reserved delivery mode send nothing (no SMM, INIT comes
/// only from IPIs, no 8259 behind the IOAPIC), NMI is dropped and counted
/// (no virtual NMIs); ICRs likewise. No mode stops the VM.
const PLATFORM_CASES: &[(&str, Expect)] = &[
    ("ioapic-redirection", Refused),
    ("ioapic-level-eoi", Refused),
    ("legacy-ports", Refused),
    ("xapic-page", Refused),
];

/// Two vCPUs on node a's two CPUs racing a hypercall and flooding each
/// other with IPIs; exits in MOV SS and STI shadows with an interrupt
/// pending. All refused or absorbed: the guest checks the answers.
const CROSS_CPU_CASES: &[(&str, Expect)] = &[
    ("map-channel-race-all-vcpus", Refused),
    ("ipi-storm-all-vcpus", Refused),
    ("mov-ss-blocking", Refused),
    ("sti-blocking", Refused),
];

/// IPIs `ipi-storm-all-vcpus` sends (its `ipis=` argument).
const STORM_IPIS: u64 = 5000;
/// Channels `map-channel-race-all-vcpus` races for, one round each (the
/// guest's CHANNELS).
const RACE_CHANNELS: usize = 8;

/// The config keys, and the tables after the VM, that `case` needs
/// besides the defaults: the PC platform, or channels to race for.
fn case_extras(case: &str) -> (String, String) {
    if PLATFORM_CASES.iter().any(|(c, _)| *c == case) {
        return ("platform = \"pc\"\n".into(), String::new());
    }
    if case == "map-channel-race-all-vcpus" {
        let names: Vec<String> = (0..RACE_CHANNELS)
            .map(|i| format!("\"race-{i}\""))
            .collect();
        let tables: String = (0..RACE_CHANNELS)
            .map(|i| {
                format!("\n[[channel]]\nname = \"race-{i}\"\nsize_kib = 4\naccess = {{ a = \"rw\", b = \"r\" }}\n")
            })
            .collect();
        return (format!("channels = [{}]\n", names.join(", ")), tables);
    }
    (String::new(), String::new())
}

/// Two nodes; `beat-a` shares node a, and CPU 0, with the hostile VMs
/// (time-sliced with them), beating `beats` times; `beat-b` runs in node b
/// and receives the signal flood.
fn config(vms: &str, beats: u32) -> String {
    // beat-b has a CPU to itself while beat-a shares one with the hostile
    // VMs: it needs more beats to outlast them.
    let beats_b = 3 * beats;
    let beaters = format!(
        r#"
[[vm]]
name = "beat-a"
node = "a"
vcpus = 1
mem_mib = 4
kernel = "heartbeat"
cmdline = "beats={beats}"
pin = [0]

[[vm]]
name = "beat-b"
node = "b"
vcpus = 1
mem_mib = 4
kernel = "heartbeat"
cmdline = "beats={beats_b}"
"#
    );
    common::two_nodes(96, 32, true, &(beaters + vms))
}

/// A VM for `case`; cases named `...-all-vcpus` get two vCPUs, one per
/// CPU of node a, the others one on CPU 0.
fn hostile_vm(case: &str) -> String {
    let (vcpus, pin) = if case.ends_with("-all-vcpus") {
        (2, "[0, 1]")
    } else {
        (1, "[0]")
    };
    let disk = if case.starts_with("virtio-") {
        r#", "virtio-blk"]
disk_mib = 2"#
    } else {
        "]"
    };
    let (keys, tables) = case_extras(case);
    format!(
        r#"
[[vm]]
name = "{case}"
node = "a"
vcpus = {vcpus}
mem_mib = 4
kernel = "hostile"
cmdline = "case={case} count=20000 ipis={STORM_IPIS}"
pin = {pin}
devices = ["uart", "debug-exit", "fw-cfg", "testdev"{disk}
signal = [{{ vm = "beat-b", notifications = [0] }}]
{keys}{tables}"#
    )
}

fn run(config: String) -> RunOutcome {
    let spec = RunSpec {
        config: ConfigModule::Bytes(config.into_bytes()),
        timeout: Duration::from_secs(300),
        ..spec()
    };
    let out = boot(&spec);
    assert!(
        matches!(out.ending, Ending::PoweredOff { .. }),
        "the hypervisor must outlive its guests\n{}",
        out.diagnostics()
    );
    out
}

fn is(e: &Event, name: &str, vm: &str) -> bool {
    e.name == name && e.str("vm") == Some(vm)
}

/// Checks how `case` ended; returns the position of its last event.
fn check_case(out: &RunOutcome, case: &str, expect: Expect) -> usize {
    let why = || format!("case {case}, expected {expect:?}\n{}", out.diagnostics());
    let events = &out.events;
    let end = events
        .iter()
        .rposition(|e| is(e, "vm_stopped", case) || is(e, "vm_exit", case))
        .unwrap_or_else(|| panic!("no vm_stopped or vm_exit\n{}", why()));
    match expect {
        Stopped(reason) => {
            assert_eq!(events[end].name, "vm_stopped", "{}", why());
            assert_eq!(events[end].str("reason"), Some(reason), "{}", why());
        }
        Faulted(vector) => {
            let fault = events.iter().find(|e| is(e, "vm_fault", case));
            assert_eq!(
                fault.and_then(|f| f.u64("vector")),
                Some(vector),
                "{}",
                why()
            );
            assert_eq!(events[end].u64("status"), Some(0x100 | vector), "{}", why());
        }
        Refused => {
            let report = events.iter().find(|e| is(e, "guest_case", case));
            assert_eq!(report.and_then(|r| r.bool("ok")), Some(true), "{}", why());
            assert_eq!(events[end].u64("status"), Some(0), "{}", why());
        }
    }
    assert!(
        events.iter().any(|e| is(e, "stats", case)),
        "stats for {case}\n{}",
        why()
    );
    end
}

/// Both neighbours beat after position `after`.
fn assert_neighbours_beat_after(out: &RunOutcome, after: usize, case: &str) {
    for beat in ["beat-a", "beat-b"] {
        assert!(
            out.events[after..]
                .iter()
                .any(|e| is(e, "guest_heartbeat", beat)),
            "{beat} did not beat after {case} ended\n{}",
            out.diagnostics()
        );
    }
}

fn run_batch(cases: &[(&str, Expect)], beats: u32) -> RunOutcome {
    let vms: String = cases.iter().map(|(c, _)| hostile_vm(c)).collect();
    let out = run(config(&vms, beats));
    for &(case, expect) in cases {
        let end = check_case(&out, case, expect);
        assert_neighbours_beat_after(&out, end, case);
    }
    for beat in ["beat-a", "beat-b"] {
        let exit = out.events.iter().find(|e| is(e, "vm_exit", beat));
        assert_eq!(
            exit.and_then(|e| e.u64("status")),
            Some(0),
            "{}",
            out.diagnostics()
        );
    }
    out
}

#[test]
fn the_suite_has_at_least_45_cases() {
    assert!(BATCHES.iter().map(|cases| cases.len()).sum::<usize>() >= 45);
}

/// Every batch of cases, each run by one test below.
const BATCHES: [&[(&str, Expect)]; 7] = [
    MEMORY_CASES,
    MSR_AND_CR_CASES,
    CRASH_AND_HYPERCALL_CASES,
    STORM_CASES,
    PLATFORM_CASES,
    CROSS_CPU_CASES,
    VIRTIO_CASES,
];

/// The cases the `hostile` guest has: the names in its `CASES` table.
fn guest_cases() -> Vec<&'static str> {
    let source = include_str!("../../guest-images/tests/src/bin/hostile.rs");
    let table = source
        .split_once("const CASES: &[(&str, Case)] = &[")
        .and_then(|(_, rest)| rest.split_once("\n];"))
        .map(|(table, _)| table)
        .expect("the guest's CASES table");
    table
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("(\""))
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name))
        .collect()
}

/// Each case is in one batch and the guest has it; every guest case but
/// the one the restart test runs is in a batch.
#[test]
fn the_batches_name_every_guest_case_once() {
    let guest = guest_cases();
    assert!(guest.len() >= 45, "{guest:?}");
    let batched: Vec<&str> = BATCHES
        .iter()
        .flat_map(|b| b.iter().map(|(c, _)| *c))
        .collect();
    for case in &batched {
        assert!(guest.contains(case), "the guest has no case {case}");
        let times = batched.iter().filter(|c| *c == case).count();
        assert_eq!(times, 1, "{case} is in {times} batches");
    }
    let unbatched: Vec<&str> = guest
        .iter()
        .copied()
        .filter(|c| !batched.contains(c))
        .collect();
    assert_eq!(unbatched, ["ram-zeroed-at-start"]);
}

#[test]
fn memory_the_vm_does_not_own() {
    run_batch(MEMORY_CASES, 40);
}

#[test]
fn msr_and_control_register_writes() {
    run_batch(MSR_AND_CR_CASES, 40);
}

#[test]
fn crashes_and_hypercalls() {
    run_batch(CRASH_AND_HYPERCALL_CASES, 40);
}

#[test]
fn storms() {
    run_batch(STORM_CASES, 120);
}

#[test]
fn the_pc_platform_refuses_bad_programming() {
    let out = run_batch(PLATFORM_CASES, 60);
    // The NMI entry and the destinations nobody has were dropped, and
    // counted.
    let stats = out
        .events
        .iter()
        .find(|e| is(e, "stats", "ioapic-redirection"));
    let lost = stats.and_then(|e| e.u64("lost_ipis"));
    assert!(lost.is_some_and(|n| n >= 5), "{}", out.diagnostics());
}

#[test]
fn cross_cpu_races_storms_and_interrupt_shadows() {
    let out = run_batch(CROSS_CPU_CASES, 60);
    let why = out.diagnostics();
    // At most one kick is pending per CPU: the flood's kicks merged
    // (without that, each IPI to the other CPU is a kick).
    let stats = out
        .events
        .iter()
        .find(|e| is(e, "stats", "ipi-storm-all-vcpus"))
        .expect("stats");
    let kicks = stats.u64("kicks").expect("kicks");
    let coalesced = stats.u64("kicks_coalesced").expect("kicks_coalesced");
    assert!(
        kicks * 4 < STORM_IPIS * 3 && coalesced > 0,
        "{kicks} kicks sent, {coalesced} coalesced for {STORM_IPIS} IPIs\n{why}"
    );
}

/// The restarted VM also checks its RAM was zeroed (case
/// `ram-zeroed-at-start`: each incarnation finds the top MiB of its RAM
/// zero, dirties it, and crashes).
#[test]
fn a_crashing_vm_with_on_crash_restart_comes_back_and_its_neighbours_never_notice() {
    let crashy = r#"
[[vm]]
name = "crashy"
node = "a"
vcpus = 1
mem_mib = 4
kernel = "hostile"
cmdline = "case=ram-zeroed-at-start"
pin = [0]
on_crash = "restart"
devices = ["uart", "debug-exit", "fw-cfg"]
"#;
    let out = run(config(crashy, 60));
    let why = out.diagnostics();
    let restarts: Vec<&Event> = out.events_named("vm_restarted");
    assert_eq!(restarts.len(), 3, "restarted up to the limit\n{why}");
    assert_eq!(
        restarts.last().and_then(|e| e.u64("restarts")),
        Some(3),
        "{why}"
    );
    let stops = out
        .events
        .iter()
        .filter(|e| is(e, "vm_stopped", "crashy") && e.str("reason") == Some("triple_fault"))
        .count();
    assert_eq!(stops, 4, "each incarnation crashed\n{why}");
    let runs = out
        .lines
        .iter()
        .filter(|l| *l == "[crashy] hostile: ram-zeroed-at-start")
        .count();
    assert_eq!(runs, 4, "the VM came back and ran again each time\n{why}");
    let zeroed: Vec<Option<bool>> = out
        .events
        .iter()
        .filter(|e| is(e, "guest_case", "crashy"))
        .map(|e| e.bool("ok"))
        .collect();
    assert_eq!(
        zeroed,
        [Some(true); 4],
        "every incarnation found its RAM zeroed\n{why}"
    );
    let cleared: Vec<Option<u64>> = restarts.iter().map(|e| e.u64("cleared_mib")).collect();
    assert_eq!(
        cleared,
        [Some(4); 3],
        "each restart cleared the 4 MiB\n{why}"
    );
    // The neighbours beat on through every restart, none missing.
    for beat in ["beat-a", "beat-b"] {
        let counts: Vec<u64> = out
            .events
            .iter()
            .filter(|e| is(e, "guest_heartbeat", beat))
            .filter_map(|e| e.u64("count"))
            .collect();
        let beats = if beat == "beat-a" { 60 } else { 180 };
        assert_eq!(counts, (1..=beats).collect::<Vec<u64>>(), "{beat}\n{why}");
    }
    let last_restart = out
        .events
        .iter()
        .rposition(|e| e.name == "vm_restarted")
        .expect("a restart");
    assert_neighbours_beat_after(&out, last_restart, "the last restart");
}

/// Device work in slices (vmm/DESIGN.md): a huge notification and a
/// descriptor rewrite during the walk, next to neighbours on the same CPU
/// (`beat-a`), on the node's other CPU (`beat-a1`) and in the other node
/// (`beat-b`).
const VIRTIO_CASES: &[(&str, Expect)] = &[
    ("virtio-huge", Refused),
    ("virtio-desc-rewrite-all-vcpus", Refused),
];

/// The heartbeat guest's interval (TSC ticks, its default).
const BEAT_INTERVAL: u64 = 2_000_000;
/// The longest gap allowed between two beats of a neighbour: its interval,
/// plus a turn of each other vCPU of its CPU (CPU 0: `virtio-huge` and the
/// rewriter's first vCPU; 10 ms slices, about 2.4 M ticks each at the TSC
/// rate Atoll calibrates in Bochs), plus device slices (100 us or one
/// 4 KiB chunk each, about 25 k ticks): about 7 M ticks. Served in one
/// go, the huge notification alone held the node lock for about 200 M
/// ticks (100 intervals).
const MAX_BEAT_GAP: u64 = 4 * BEAT_INTERVAL;

fn beater(name: &str, node: &str, pin: &str, beats: u32) -> String {
    format!(
        r#"
[[vm]]
name = "{name}"
node = "{node}"
vcpus = 1
mem_mib = 4
kernel = "heartbeat"
cmdline = "beats={beats}"
{pin}
"#
    )
}

/// The TSC of each beat of `vm`, in order.
fn beat_times(out: &RunOutcome, vm: &str) -> Vec<u64> {
    out.events
        .iter()
        .filter(|e| is(e, "guest_heartbeat", vm))
        .filter_map(|e| e.u64("tsc"))
        .collect()
}

#[test]
fn virtio_device_work_is_sliced() {
    let neighbours = ["beat-a", "beat-a1", "beat-b"];
    let mut vms = beater("beat-a", "a", "pin = [0]", 150)
        + &beater("beat-a1", "a", "pin = [1]", 150)
        + &beater("beat-b", "b", "", 200);
    // 16 MiB would do too; 8 MiB of disk is four 2 MiB regions, and the
    // guest's buffers end below 7 MiB.
    vms += &hostile_vm("virtio-huge")
        .replace("mem_mib = 4", "mem_mib = 8")
        .replace("disk_mib = 2", "disk_mib = 8");
    vms += &hostile_vm("virtio-desc-rewrite-all-vcpus");
    let out = run(common::two_nodes(96, 32, true, &vms));
    let why = out.diagnostics();
    for &(case, expect) in VIRTIO_CASES {
        let end = check_case(&out, case, expect);
        for beat in neighbours {
            assert!(
                out.events[end..]
                    .iter()
                    .any(|e| is(e, "guest_heartbeat", beat)),
                "{beat} did not beat after {case} ended\n{why}"
            );
        }
    }
    // Every neighbour beat while the huge requests were served, on time.
    let start = out
        .events
        .iter()
        .position(|e| is(e, "vm_start", "virtio-huge"))
        .expect("virtio-huge started");
    let done = out
        .events
        .iter()
        .position(|e| is(e, "guest_case", "virtio-huge"))
        .expect("virtio-huge reported");
    for beat in neighbours {
        let during = out.events[start..done]
            .iter()
            .filter(|e| is(e, "guest_heartbeat", beat))
            .count();
        assert!(
            during >= 3,
            "{beat} beat {during} times during virtio-huge\n{why}"
        );
        let times = beat_times(&out, beat);
        let gap = times.windows(2).map(|w| w[1].saturating_sub(w[0])).max();
        assert!(
            gap.is_some_and(|g| g <= MAX_BEAT_GAP),
            "{beat}: longest gap between beats {gap:?} ticks\n{why}"
        );
        let exit = out.events.iter().find(|e| is(e, "vm_exit", beat));
        assert_eq!(exit.and_then(|e| e.u64("status")), Some(0), "{why}");
    }
    // The huge requests were served in many slices, none holding the node
    // lock for long.
    let work = out
        .events
        .iter()
        .find(|e| is(e, "device_work", "virtio-huge"))
        .expect("device_work for virtio-huge");
    let field = |k: &str| work.u64(k).unwrap_or(0);
    println!(
        "virtio-huge: {} requests, longest {} ticks; {} slices, longest {} ticks",
        field("requests"),
        field("request_max_ticks"),
        field("slices"),
        field("slice_max_ticks")
    );
    assert_eq!((field("requests"), field("failed")), (4 + 16, 0), "{why}");
    assert!(field("slices") >= 16 * 8, "{why}");
    assert!(field("slice_max_ticks") <= BEAT_INTERVAL / 4, "{why}");
}
