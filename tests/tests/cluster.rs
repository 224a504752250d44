//! The clustered-multikernel core: nodes from the cluster config, two-part
//! boot, node isolation, the node lock and inter-node signals, judged by
//! console events (hypervisor/EVENTS.md).

mod common;

use atoll_tests::build::workspace_root;
use atoll_tests::{ConfigModule, Emulator, Ending, Event, NumaNode, RunOutcome, RunSpec};
use common::{boot, spec};
use std::collections::BTreeSet;

fn with_config(name: &str) -> RunSpec {
    RunSpec {
        config: ConfigModule::File(workspace_root().join("configs").join(name)),
        ..spec()
    }
}

/// Boots, expects a clean power-off, returns the outcome.
fn boot_ok(spec: &RunSpec) -> RunOutcome {
    let out = boot(spec);
    assert!(out.success(), "{}", out.diagnostics());
    out
}

/// The `node_up` events, by node number.
fn nodes_up(out: &RunOutcome) -> Vec<Event> {
    let mut nodes: Vec<Event> = out.events_named("node_up").into_iter().cloned().collect();
    nodes.sort_by_key(|e| e.u64("node"));
    nodes
}

/// Checks what every multikernel boot must show: one `node_up` per planned
/// node, disjoint CPU sets and memory, one `cpu_up` per CPU of a node.
fn assert_nodes_consistent(out: &RunOutcome) -> Vec<Event> {
    let why = out.diagnostics();
    let planned = out.event("plan").and_then(|e| e.u64("nodes"));
    let nodes = nodes_up(out);
    assert_eq!(Some(nodes.len() as u64), planned, "{why}");
    let mut cpus = BTreeSet::new();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for node in &nodes {
        for cpu in node.u64_list("cpus").expect("cpus") {
            assert!(cpus.insert(cpu), "CPU {cpu} is in two nodes\n{why}");
        }
        let mem = node.ranges("mem").expect("mem");
        let (k_start, k_end) = node.range("kernel").expect("kernel");
        assert!(
            mem.iter().any(|&(s, e)| s <= k_start && k_end <= e),
            "kernel memory outside the node's memory\n{why}"
        );
        let total: u64 = mem.iter().map(|(s, e)| e - s).sum();
        assert_eq!(Some(total >> 20), node.u64("mem_mib"), "{why}");
        ranges.extend(mem);
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "node memory overlaps: {pair:?}\n{why}"
        );
    }
    let cpu_up: BTreeSet<u64> = out
        .events_named("cpu_up")
        .iter()
        .filter_map(|e| e.u64("cpu"))
        .collect();
    assert_eq!(cpu_up, cpus, "one cpu_up per CPU of a node\n{why}");
    assert_eq!(out.events_named("cpu_up").len(), cpus.len(), "{why}");
    nodes
}

#[test]
fn default_cluster_is_two_nodes_of_two_cpus() {
    let out = boot_ok(&spec());
    let why = out.diagnostics();
    let nodes = assert_nodes_consistent(&out);
    let cpu_sets: Vec<Vec<u64>> = nodes.iter().map(|n| n.u64_list("cpus").unwrap()).collect();
    assert_eq!(cpu_sets, [vec![0, 1], vec![2, 3]], "{why}");
    for cpu in out.events_named("cpu_up") {
        let node = cpu.u64("node").unwrap() as usize;
        assert!(
            cpu_sets[node].contains(&cpu.u64("cpu").unwrap()),
            "a CPU came up in a node it does not belong to\n{why}"
        );
    }
}

#[test]
fn single_node_config_runs_every_cpu_under_one_big_lock() {
    let mut spec = with_config("single-node.toml");
    spec.emulator = Emulator::Qemu;
    let out = boot_ok(&spec);
    let nodes = assert_nodes_consistent(&out);
    assert_eq!(nodes.len(), 1, "{}", out.diagnostics());
    assert_eq!(nodes[0].u64_list("cpus"), Some(vec![0, 1, 2, 3]));
}

#[test]
fn multikernel_config_gives_every_cpu_its_own_node() {
    let mut spec = with_config("multikernel.toml");
    spec.emulator = Emulator::Qemu;
    spec.cmdline = "selftest=ipi".into();
    let out = boot_ok(&spec);
    let why = out.diagnostics();
    let nodes = assert_nodes_consistent(&out);
    assert_eq!(nodes.len(), 4, "{why}");
    assert!(nodes.iter().all(|n| n.u64_list("cpus").unwrap().len() == 1));
    // Every ordered pair of the four nodes has a round trip.
    let pairs: BTreeSet<(u64, u64)> = out
        .events_named("ipi_rtt")
        .iter()
        .map(|e| (e.u64("from").unwrap(), e.u64("to").unwrap()))
        .collect();
    assert_eq!(pairs.len(), 12, "{why}");
}

#[test]
fn ipi_selftest_round_trips_both_ways() {
    let mut spec = spec();
    spec.cmdline = "selftest=ipi".into();
    let out = boot_ok(&spec);
    let why = out.diagnostics();
    let rtts = out.events_named("ipi_rtt");
    let pairs: BTreeSet<(u64, u64)> = rtts
        .iter()
        .map(|e| (e.u64("from").unwrap(), e.u64("to").unwrap()))
        .collect();
    assert_eq!(pairs, BTreeSet::from([(0, 1), (1, 0)]), "{why}");
    for rtt in rtts {
        assert_eq!(rtt.u64("rounds"), Some(16), "{why}");
        let (min, median, max) = (
            rtt.u64("min_cycles").unwrap(),
            rtt.u64("median_cycles").unwrap(),
            rtt.u64("max_cycles").unwrap(),
        );
        assert!(0 < min && min <= median && median <= max, "{why}");
    }
    let floods = out.events_named("signal_flood");
    assert_eq!(floods.len(), 2, "{why}");
    for flood in floods {
        let (signals, ipis) = (flood.u64("signals").unwrap(), flood.u64("ipis").unwrap());
        assert!(signals >= 100, "{why}");
        assert!(
            ipis < signals / 2,
            "signals must coalesce: {ipis} IPIs for {signals}\n{why}"
        );
    }
}

#[test]
fn isolation_selftest_faults_the_writer_and_the_other_node_runs_on() {
    let mut spec = spec();
    spec.cmdline = "selftest=isolation".into();
    let out = boot_ok(&spec);
    let why = out.diagnostics();
    let nodes = nodes_up(&out);
    let probe = out.event("isolation_probe").expect("an isolation_probe");
    let fault = out.event("isolation_fault").expect("an isolation_fault");
    assert_eq!(fault.u64("node"), probe.u64("node"), "{why}");
    assert_eq!(fault.u64("owner"), probe.u64("target"), "{why}");
    assert_eq!(fault.hex("addr"), probe.hex("addr"), "{why}");
    assert_eq!(fault.bool("write"), Some(true), "{why}");
    let victim = &nodes[probe.u64("target").unwrap() as usize];
    let addr = fault.hex("addr").unwrap();
    assert!(
        victim
            .ranges("mem")
            .unwrap()
            .iter()
            .any(|&(s, e)| s <= addr && addr < e),
        "the probe targets the other node's memory\n{why}"
    );
    let stopped = out.event("node_stopped").expect("a node_stopped");
    assert_eq!(stopped.u64("node"), fault.u64("node"), "{why}");

    // The victim's heartbeats come after the fault, and keep counting.
    let fault_line = line_of(&out, "isolation_fault");
    let beats: Vec<u64> = out
        .events_named("heartbeat")
        .iter()
        .filter(|e| e.u64("node") == probe.u64("target"))
        .filter_map(|e| e.u64("count"))
        .collect();
    assert!(beats.len() >= 3, "{why}");
    assert!(beats.windows(2).all(|w| w[0] < w[1]), "{why}");
    assert!(line_of(&out, "heartbeat") > fault_line, "{why}");
    assert!(out.event("error").is_none(), "{why}");
}

/// The console line index of the first event named `name`.
fn line_of(out: &RunOutcome, name: &str) -> usize {
    let tag = format!("\"ev\":\"{name}\"");
    out.lines
        .iter()
        .position(|l| l.contains(&tag))
        .unwrap_or_else(|| panic!("no {name} line\n{}", out.diagnostics()))
}

#[test]
fn lock_selftest_counts_every_acquisition() {
    let mut spec = spec();
    spec.cmdline = "selftest=lock".into();
    let out = boot_ok(&spec);
    let why = out.diagnostics();
    let stats = out.events_named("lock_stats");
    assert_eq!(stats.len(), 2, "one lock_stats per node\n{why}");
    for s in stats {
        let expected = s.u64("expected").unwrap();
        assert!(expected > 0, "{why}");
        assert_eq!(s.u64("counter"), Some(expected), "lost updates\n{why}");
        assert_eq!(s.u64("acquisitions"), Some(expected), "{why}");
        assert_eq!(s.u64("cpus"), Some(2), "{why}");
        assert!(s.u64("hold_cycles").unwrap() > 0, "{why}");
        assert!(s.u64("max_hold_cycles").unwrap() > 0, "{why}");
    }
}

#[test]
fn numa_config_takes_each_node_memory_from_its_own_domain() {
    let mut spec = with_config("numa.toml");
    spec.emulator = Emulator::Qemu;
    spec.mem_mib = 1024;
    spec.numa = NumaNode::even_split(4, 1024, 2);
    let out = boot_ok(&spec);
    let why = out.diagnostics();
    let nodes = assert_nodes_consistent(&out);
    assert_eq!(nodes.len(), 2, "{why}");
    // QEMU lays the domains out in order: domain 0 holds the first 512 MiB
    // of RAM, domain 1 the next 512 MiB.
    let domain_ram = [(0u64, 512u64 << 20), (512 << 20, 1024 << 20)];
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node.u64("domain"), Some(i as u64), "{why}");
        assert_eq!(
            node.u64_list("cpus"),
            Some(vec![2 * i as u64, 2 * i as u64 + 1]),
            "{why}"
        );
        let (lo, hi) = domain_ram[i];
        for (s, e) in node.ranges("mem").unwrap() {
            assert!(
                lo <= s && e <= hi,
                "node {i} memory {s:#x}-{e:#x} outside its domain\n{why}"
            );
        }
    }
}

#[test]
fn config_that_does_not_fit_the_machine_names_the_key_and_powers_off() {
    // The default config wants CPUs 0-3; this machine has two.
    let mut spec = spec();
    spec.emulator = Emulator::Qemu;
    spec.cpus = 2;
    let out = boot(&spec);
    let why = out.diagnostics();
    let errors = out.events_named("error");
    assert!(!errors.is_empty(), "{why}");
    assert!(
        errors.iter().all(|e| e.str("kind") == Some("config")),
        "{why}"
    );
    let msg = errors[0].str("msg").unwrap();
    assert!(
        msg.starts_with("cluster.toml:"),
        "file:line:col first: {msg}\n{why}"
    );
    assert!(msg.contains("CPU 2"), "{why}");
    assert!(
        matches!(out.ending, Ending::PoweredOff { status: 1 }),
        "{why}"
    );
    assert!(out.events_named("node_up").is_empty(), "{why}");
}

#[test]
fn invalid_config_is_reported_at_boot_with_its_location() {
    let mut spec = spec();
    spec.emulator = Emulator::Qemu;
    spec.config = ConfigModule::Bytes(
        b"[[node]]\nname = \"a\"\ncpus = [0, 1]\nmem_mib = 64\nfrobnicate = true\n".to_vec(),
    );
    let out = boot(&spec);
    let why = out.diagnostics();
    let error = out.event("error").expect("an error event");
    assert_eq!(error.str("kind"), Some("config"), "{why}");
    let msg = error.str("msg").unwrap();
    assert!(msg.starts_with("cluster.toml:5:1:"), "{msg}\n{why}");
    assert!(msg.contains("frobnicate"), "{why}");
    assert!(
        matches!(out.ending, Ending::PoweredOff { status: 1 }),
        "{why}"
    );
}

#[test]
fn stack_overflow_hits_the_guard_page_and_is_reported_as_a_double_fault() {
    common::assert_selftest_exception("overflow", "CPU exception #DF (vector 8)");
}

#[test]
fn a_panic_on_one_node_stops_every_cpu_of_every_node_xapic_qemu() {
    assert_node_panic_stops_everything(Emulator::Qemu);
}

#[test]
fn a_panic_on_one_node_stops_every_cpu_of_every_node_x2apic_bochs() {
    assert_node_panic_stops_everything(Emulator::Bochs);
}

fn assert_node_panic_stops_everything(emulator: Emulator) {
    let mut spec = spec();
    spec.emulator = emulator;
    spec.cmdline = "selftest=node-panic".into();
    let out = boot(&spec);
    let why = out.diagnostics();
    assert!(matches!(out.ending, Ending::Panic { .. }), "{why}");
    let panic = out.event("panic").expect("a panic event");
    let node1_first_cpu = nodes_up(&out)[1].u64_list("apic_ids").unwrap()[0];
    assert_eq!(panic.u64("cpu"), Some(node1_first_cpu), "{why}");
    // The boot node beat before the panic and never after it: the panic's
    // NMI stopped it. (The harness reads on for a grace period.)
    let panic_line = line_of(&out, "panic");
    let beats: Vec<usize> = out
        .lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"ev\":\"heartbeat\""))
        .map(|(i, _)| i)
        .collect();
    assert!(beats.len() >= 3, "{why}");
    assert!(
        beats.iter().all(|&i| i < panic_line),
        "a CPU ran on after the panic\n{why}"
    );
    assert!(out.event("poweroff").is_none(), "{why}");
}

#[test]
fn sixteen_one_cpu_nodes_come_up_and_each_runs_its_own_lock() {
    let config: String = (0..16)
        .map(|i| {
            format!("[[node]]\nname = \"n{i}\"\ncpus = [{i}]\nmem_mib = 16\nkernel_mib = 2\n\n")
        })
        .collect();
    let mut spec = spec();
    spec.emulator = Emulator::Qemu;
    spec.cpus = 16;
    spec.mem_mib = 1024;
    spec.cmdline = "selftest=lock".into();
    spec.config = ConfigModule::Bytes(config.into_bytes());
    let out = boot_ok(&spec);
    let why = out.diagnostics();
    let nodes = assert_nodes_consistent(&out);
    assert_eq!(nodes.len(), 16, "{why}");
    let stats = out.events_named("lock_stats");
    assert_eq!(stats.len(), 16, "{why}");
    assert!(
        stats.iter().all(|s| s.u64("counter") == s.u64("expected")),
        "{why}"
    );
}
