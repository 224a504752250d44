//! The thesis' boot axioms (5.4.2-5.4.20) as properties of every plan the
//! planner returns, over random configs and machines; plus: the parser and
//! planner never panic, whatever the input, and are deterministic.
//!
//! Machines: 1 to 64 CPUs in 1 to 8 domains (some without CPUs or memory),
//! with or without an SRAT, RAM with random holes, random reserved regions
//! (unaligned, as firmware reports them). Configs: generated as TOML text
//! from random node, channel and IPI choices, mostly valid, sometimes
//! asking for more than the machine has.

use atoll_cluster::config::{ClusterConfig, ConfigError, CpuSelection, ErrorKind, MAX_ERRORS};
use atoll_cluster::plan::{KERNEL_ALIGN, Plan, TRAMPOLINE_END, TRAMPOLINE_FIRST, plan};
use atoll_cluster::topology::{Cpu, CpuIndex, DomainId, DomainMemory, PhysRange, Topology};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 0x1000;

// ---------------------------------------------------------------- machines

#[derive(Clone, Debug)]
struct MachineSpec {
    cpu_domains: Vec<u32>,
    srat: bool,
    boot: Option<u32>,
    mem_mib: u64,
    holes: Vec<(u64, u64)>,
    reserved: Vec<(u64, u64)>,
    domain_cuts: Vec<u64>,
}

fn machine_spec() -> impl Strategy<Value = MachineSpec> {
    (1u32..=8, 1usize..=64, 16u64..=1024).prop_flat_map(|(domains, cpus, mem_mib)| {
        let mem = mem_mib * MIB;
        (
            prop::collection::vec(0..domains, cpus),
            any::<bool>(),
            prop::option::weighted(0.3, 0..cpus as u32),
            prop::collection::vec((0..mem, 0..(mem / 8).max(1)), 0..4),
            prop::collection::vec((0..mem, 0..(mem / 8).max(1)), 0..4),
            prop::collection::vec(0..mem, domains as usize - 1),
        )
            .prop_map(
                move |(cpu_domains, srat, boot, holes, reserved, mut domain_cuts)| {
                    domain_cuts.sort_unstable();
                    MachineSpec {
                        cpu_domains,
                        srat,
                        boot,
                        mem_mib,
                        holes,
                        reserved,
                        domain_cuts,
                    }
                },
            )
    })
}

fn span(start: u64, end: u64) -> PhysRange {
    PhysRange::new(start, end - start)
}

fn machine(spec: &MachineSpec) -> Topology {
    let mem = spec.mem_mib * MIB;
    let mut ram = vec![span(0, 0x9f000), span(MIB, mem)];
    for &(start, len) in &spec.holes {
        let hole = PhysRange::new(start, len);
        ram = ram
            .into_iter()
            .flat_map(|r| {
                let mut out = Vec::new();
                if !r.overlaps(&hole) {
                    out.push(r);
                    return out;
                }
                if r.start.0 < hole.start.0 {
                    out.push(span(r.start.0, hole.start.0));
                }
                if hole.end() < r.end() {
                    out.push(span(hole.end(), r.end()));
                }
                out
            })
            .collect();
    }
    let mut reserved = vec![
        PhysRange::new(0, 0x1000),
        PhysRange::new(0x20_0000, 0x40_0000),
    ];
    reserved.extend(spec.reserved.iter().map(|&(s, l)| PhysRange::new(s, l)));
    let domain_memory = if spec.srat {
        let mut bounds = vec![0];
        bounds.extend(&spec.domain_cuts);
        bounds.push(mem);
        bounds
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] < w[1])
            .map(|(d, w)| DomainMemory {
                range: span(w[0], w[1]),
                domain: DomainId(d as u32),
            })
            .collect()
    } else {
        Vec::new()
    };
    let cpus = spec
        .cpu_domains
        .iter()
        .enumerate()
        .map(|(i, &d)| Cpu {
            index: CpuIndex(i as u32),
            apic_id: 2 * i as u32,
            // Without an SRAT every CPU is in domain 0.
            domain: DomainId(if spec.srat { d } else { 0 }),
        })
        .collect();
    Topology {
        cpus,
        boot_cpu: spec.boot.map(CpuIndex),
        domain_memory,
        distances: None,
        ram,
        reserved,
    }
}

// ----------------------------------------------------------------- configs

#[derive(Clone, Debug)]
enum Select {
    /// The CPUs `owner` gives this node (count = 1 if none).
    List,
    Numa(u32),
    Count(u32),
}

#[derive(Clone, Debug)]
struct ConfigSpec {
    nodes: Vec<(Select, u64, Option<u64>)>,
    /// For each CPU index (a few past the machine's end too), the node
    /// listing it, if any.
    owner: Vec<Option<usize>>,
    channels: Vec<(usize, usize, u64, bool)>,
    ipis: Vec<(usize, usize, Vec<u8>)>,
    /// Let CPU lists name two CPUs past the machine's last.
    overshoot: bool,
    /// VMs: (node, vCPUs, MiB).
    vms: Vec<(usize, u32, u64)>,
}

fn select() -> impl Strategy<Value = Select> {
    prop_oneof![
        4 => Just(Select::List),
        1 => prop_oneof![4 => 0u32..3, 1 => 0u32..9].prop_map(Select::Numa),
        3 => (1u32..=4).prop_map(Select::Count),
    ]
}

fn config_spec() -> impl Strategy<Value = ConfigSpec> {
    (1usize..=6).prop_flat_map(|n| {
        // Channel ends and IPI pairs are two different nodes: `b` is an
        // offset from `a` (a config needs two nodes for either).
        let pairs = if n >= 2 { 0..5 } else { 0..1 };
        (
            prop::collection::vec(
                (
                    select(),
                    9u64..=96,
                    prop::option::of(prop::sample::select(vec![2u64, 4, 6])),
                ),
                n,
            ),
            prop::collection::vec(prop::option::weighted(0.7, 0..n), 66),
            prop::collection::vec((0..n, 1..n.max(2), 1u64..=64, any::<bool>()), pairs.clone()),
            prop::collection::vec(
                (0..n, 1..n.max(2), prop::collection::btree_set(0u8..8, 1..3)),
                pairs,
            ),
            prop::bool::weighted(0.1),
            prop::collection::vec((0..n, 1u32..=4, (1u64..=3).prop_map(|m| 2 * m)), 0..3),
        )
            .prop_map(
                move |(nodes, owner, channels, ipis, overshoot, vms)| ConfigSpec {
                    nodes,
                    owner,
                    overshoot,
                    vms,
                    channels: channels
                        .into_iter()
                        .map(|(a, off, pages, w)| (a, (a + off) % n, pages, w))
                        .filter(|&(a, b, _, _)| a != b)
                        .collect(),
                    // Each [[ipi]] its own notifications, so merged pairs never
                    // grant one twice.
                    ipis: ipis
                        .into_iter()
                        .enumerate()
                        .map(|(i, (f, off, set))| {
                            let base = 8 * (i as u8 % 8);
                            (
                                f,
                                (f + off) % n,
                                set.into_iter().map(|x| base + x).collect(),
                            )
                        })
                        .filter(|(f, t, _)| f != t)
                        .collect(),
                },
            )
    })
}

/// The config as TOML for a machine with `cpus` CPUs.
fn config_text(spec: &ConfigSpec, cpus: usize) -> String {
    let mut text = String::new();
    for (i, (select, mem, kernel)) in spec.nodes.iter().enumerate() {
        let _ = writeln!(text, "[[node]]\nname = \"n{i}\"");
        match select {
            Select::List => {
                let last = if spec.overshoot { cpus + 2 } else { cpus };
                let list: Vec<String> = (0..last.min(spec.owner.len()))
                    .filter(|&c| spec.owner[c] == Some(i))
                    .map(|c| c.to_string())
                    .collect();
                if list.is_empty() {
                    let _ = writeln!(text, "count = 1");
                } else {
                    let _ = writeln!(text, "cpus = [{}]", list.join(", "));
                }
            }
            Select::Numa(d) => {
                let _ = writeln!(text, "numa = {d}");
            }
            Select::Count(c) => {
                let _ = writeln!(text, "count = {c}");
            }
        }
        let _ = writeln!(text, "mem_mib = {mem}");
        if let Some(k) = kernel {
            let _ = writeln!(text, "kernel_mib = {k}");
        }
    }
    for (i, &(a, b, pages, a_writes)) in spec.channels.iter().enumerate() {
        let (ra, rb) = if a_writes { ("rw", "r") } else { ("r", "rw") };
        let _ = writeln!(
            text,
            "[[channel]]\nname = \"c{i}\"\nsize_kib = {}\naccess = {{ n{a} = \"{ra}\", n{b} = \"{rb}\" }}",
            pages * 4
        );
    }
    for (from, to, notifications) in &spec.ipis {
        let list: Vec<String> = notifications.iter().map(u8::to_string).collect();
        let _ = writeln!(
            text,
            "[[ipi]]\nfrom = \"n{from}\"\nto = \"n{to}\"\nnotifications = [{}]",
            list.join(", ")
        );
    }
    for (i, (node, vcpus, mib)) in spec.vms.iter().enumerate() {
        let _ = writeln!(
            text,
            "[[vm]]\nname = \"v{i}\"\nnode = \"n{node}\"\nvcpus = {vcpus}\nmem_mib = {mib}\nkernel = \"hello\""
        );
    }
    text
}

fn case() -> impl Strategy<Value = (Topology, String)> {
    (machine_spec(), config_spec()).prop_map(|(m, c)| {
        let text = config_text(&c, m.cpu_domains.len());
        (machine(&m), text)
    })
}

// ------------------------------------------------------------------ axioms

/// RAM (or a domain's memory) as merged page-inner ranges.
fn merged(ranges: impl IntoIterator<Item = PhysRange>) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = ranges
        .into_iter()
        .map(|r| (r.start.0.next_multiple_of(PAGE), r.end() / PAGE * PAGE))
        .filter(|(s, e)| s < e)
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn inside(r: &PhysRange, set: &[(u64, u64)]) -> bool {
    set.iter().any(|&(s, e)| s <= r.start.0 && r.end() <= e)
}

fn clear_of(r: &PhysRange, reserved: &[PhysRange]) -> bool {
    reserved.iter().all(|x| x.len == 0 || !x.overlaps(r))
}

fn aligned(r: &PhysRange, align: u64) -> bool {
    r.start.0.is_multiple_of(align) && r.len.is_multiple_of(PAGE) && r.len > 0
}

fn check_axioms(config: &ClusterConfig, t: &Topology, p: &Plan) -> Result<(), TestCaseError> {
    let ram = merged(t.ram.iter().copied());
    let usable = |r: &PhysRange| inside(r, &ram) && clear_of(r, &t.reserved);

    // At least one node, in config order, each with at least one CPU.
    prop_assert!(!p.nodes.is_empty());
    prop_assert_eq!(p.nodes.len(), config.nodes.len());
    let mut seen_cpus = BTreeSet::new();
    for (i, (n, c)) in p.nodes.iter().zip(&config.nodes).enumerate() {
        prop_assert_eq!(usize::from(n.id.0), i);
        prop_assert_eq!(&n.name, &c.name.value);
        prop_assert!(!n.cpus.is_empty(), "node {} has no CPUs", n.name);
        // CPU sets disjoint and present in the topology.
        for cpu in &n.cpus {
            prop_assert!(seen_cpus.insert(cpu.index), "CPU {:?} twice", cpu.index);
            prop_assert_eq!(t.cpus.get(cpu.index.0 as usize), Some(cpu));
        }
        // What the config asked for.
        let mut indices: Vec<u32> = n.cpus.iter().map(|c| c.index.0).collect();
        match &c.cpus.value {
            CpuSelection::List(list) => {
                let mut want: Vec<u32> = list.iter().map(|c| c.value.0).collect();
                want.sort_unstable();
                indices.sort_unstable();
                prop_assert_eq!(indices, want);
            }
            CpuSelection::Numa(d) => {
                prop_assert!(n.cpus.iter().all(|c| c.domain == *d));
                prop_assert_eq!(
                    n.cpus.len(),
                    t.cpus.iter().filter(|c| c.domain == *d).count()
                );
            }
            CpuSelection::Count(k) => prop_assert_eq!(n.cpus.len(), *k as usize),
        }
        // Sorted after the first CPU; the first is the boot CPU for the
        // boot node.
        let rest: Vec<u32> = n.cpus.iter().skip(1).map(|c| c.index.0).collect();
        prop_assert!(rest.windows(2).all(|w| w[0] < w[1]));
        if n.id != p.boot_node {
            prop_assert!(n.cpus.windows(2).all(|w| w[0].index < w[1].index));
        }
    }
    let boot = t.boot_cpu.unwrap_or(CpuIndex(0));
    let boot_node = p.node(p.boot_node);
    prop_assert!(boot_node.is_some());
    prop_assert_eq!(
        boot_node.and_then(|n| n.cpus.first()).map(|c| c.index),
        Some(boot)
    );

    // Memory: page aligned, above 1 MiB, in RAM, clear of reserved, the
    // size asked for, in the node's domain; kernel memory 2 MiB aligned
    // inside it.
    let mut owned: Vec<(PhysRange, String)> = Vec::new();
    for (n, c) in p.nodes.iter().zip(&config.nodes) {
        let total: u64 = n.memory.iter().map(|r| r.len).sum();
        prop_assert_eq!(total, c.mem_mib.value * MIB, "node {} memory", n.name);
        prop_assert!(
            n.memory.windows(2).all(|w| w[0].end() < w[1].start.0),
            "unsorted or touching"
        );
        for r in &n.memory {
            prop_assert!(aligned(r, PAGE), "{:?}", r);
            prop_assert!(r.start.0 >= MIB, "{:?} below 1 MiB", r);
            prop_assert!(usable(r), "{:?} not usable RAM", r);
            owned.push((*r, format!("node {}", n.name)));
        }
        match n.domain {
            Some(d) => {
                prop_assert!(t.has_srat());
                let dm = merged(
                    t.domain_memory
                        .iter()
                        .filter(|m| m.domain == d)
                        .map(|m| m.range),
                );
                prop_assert!(
                    n.memory.iter().all(|r| inside(r, &dm)),
                    "node {} outside domain {:?}",
                    n.name,
                    d
                );
                if !matches!(c.cpus.value, CpuSelection::Numa(_)) {
                    prop_assert!(n.cpus.iter().all(|cpu| cpu.domain == d));
                }
            }
            None => {
                // Not tied to a domain: no SRAT, or CPUs in several domains,
                // or a domain without memory.
                let first = n.cpus[0].domain;
                let one = n.cpus.iter().all(|c| c.domain == first);
                let has_memory = t
                    .domain_memory
                    .iter()
                    .any(|m| m.domain == first && m.range.len > 0);
                prop_assert!(!t.has_srat() || !one || !has_memory);
            }
        }
        let k = &n.kernel_memory;
        prop_assert!(
            k.start.0.is_multiple_of(KERNEL_ALIGN),
            "kernel memory {:?} unaligned",
            k
        );
        prop_assert_eq!(k.len, c.kernel_mib() * MIB);
        prop_assert!(
            n.memory.iter().any(|r| r.contains(k)),
            "kernel memory outside node memory"
        );
    }

    // Trampolines: one page each, below 1 MiB, in RAM, not reserved,
    // disjoint.
    let mut pages = BTreeSet::new();
    for n in &p.nodes {
        let tr = &n.trampoline;
        prop_assert!(aligned(tr, PAGE) && tr.len == PAGE);
        prop_assert!(
            tr.start.0 >= TRAMPOLINE_FIRST && tr.end() <= TRAMPOLINE_END && tr.end() <= MIB
        );
        prop_assert!(usable(tr));
        prop_assert!(pages.insert(tr.start.0), "trampoline shared");
    }

    // Channels and doorbells: sizes, grants, usable RAM outside the nodes.
    prop_assert_eq!(p.channels.len(), config.channels.len());
    for (i, (ch, c)) in p.channels.iter().zip(&config.channels).enumerate() {
        prop_assert_eq!(ch.range.len, c.size_kib.value * 1024);
        prop_assert!(aligned(&ch.range, PAGE) && ch.range.start.0 >= MIB && usable(&ch.range));
        let grants: Vec<_> = c
            .access
            .iter()
            .map(|g| (g.node.value, g.access.value))
            .collect();
        prop_assert_eq!(&ch.grants, &grants);
        for (node, access) in &ch.grants {
            let held = p.node(*node).map(|n| n.channels.contains(&(i, *access)));
            prop_assert_eq!(held, Some(true));
        }
        owned.push((ch.range, format!("channel {}", ch.name)));
    }
    for n in &p.nodes {
        for &(i, _) in &n.channels {
            prop_assert!(p.channels[i].grants.iter().any(|(g, _)| *g == n.id));
        }
    }
    let signals = config.signals();
    prop_assert_eq!(p.signals.len(), signals.len());
    let mut pairs = BTreeSet::new();
    for (s, want) in p.signals.iter().zip(&signals) {
        prop_assert_eq!(
            (s.from, s.to, s.notifications),
            (want.from, want.to, want.notifications)
        );
        prop_assert!(s.from != s.to && pairs.insert((s.from, s.to)));
        prop_assert!(aligned(&s.doorbell, PAGE) && s.doorbell.len == PAGE);
        prop_assert!(s.doorbell.start.0 >= MIB && usable(&s.doorbell));
        owned.push((s.doorbell, format!("doorbell {:?}->{:?}", s.from, s.to)));
    }

    // VMs: inside their node's memory, clear of its kernel memory, 2 MiB
    // aligned, disjoint from each other; vCPUs on their node's CPUs.
    prop_assert_eq!(p.vms.len(), config.vms.len());
    let mut vm_memory: Vec<PhysRange> = Vec::new();
    for vm in &p.vms {
        let node = p.node(vm.node).expect("a VM's node exists");
        let node_memory: Vec<(u64, u64)> = merged(node.memory.iter().copied());
        prop_assert!(
            inside(&vm.memory, &node_memory),
            "VM {} outside its node",
            vm.name
        );
        prop_assert!(!vm.memory.overlaps(&node.kernel_memory));
        prop_assert!(aligned(&vm.memory, 2 * MIB));
        prop_assert_eq!(vm.vcpu_cpus.len(), vm.vcpus as usize);
        for cpu in &vm.vcpu_cpus {
            prop_assert!(node.cpus.iter().any(|c| c.index == *cpu));
        }
        prop_assert!(vm_memory.iter().all(|m| !m.overlaps(&vm.memory)));
        vm_memory.push(vm.memory);
    }

    // Node memory, channels and doorbells pairwise disjoint.
    owned.sort_by_key(|(r, _)| r.start);
    for w in owned.windows(2) {
        prop_assert!(!w[0].0.overlaps(&w[1].0), "{} overlaps {}", w[0].1, w[1].1);
    }
    Ok(())
}

fn well_formed(errors: &[ConfigError], file: &str, text: &str) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty());
    // At most MAX_ERRORS, then one line counting the rest.
    prop_assert!(errors.len() <= MAX_ERRORS + 1, "{} errors", errors.len());
    let errors = match errors.split_last() {
        Some((last, rest)) if last.kind == ErrorKind::More => {
            prop_assert_eq!(rest.len(), MAX_ERRORS);
            let more = format!("{file}: and ");
            prop_assert!(last.to_string().starts_with(&more), "{}", last);
            rest
        }
        _ => errors,
    };
    let lines = text.lines().count() as u32 + 1;
    for e in errors {
        prop_assert!(e.kind != ErrorKind::More, "{}", e);
        prop_assert_eq!(&e.file, file);
        prop_assert!(e.line >= 1 && e.line <= lines.max(1), "{}", e);
        prop_assert!(e.column >= 1, "{}", e);
        prop_assert!(!e.message.is_empty() && !e.fix.is_empty(), "{}", e);
        let prefix = format!("{file}:{}:{}: ", e.line, e.column);
        prop_assert!(e.to_string().starts_with(&prefix));
    }
    let positions: Vec<(u32, u32)> = errors.iter().map(|e| (e.line, e.column)).collect();
    prop_assert!(
        positions.windows(2).all(|w| w[0] <= w[1]),
        "errors out of order"
    );
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 1024, ..Config::default() })]

    #[test]
    fn every_plan_keeps_the_boot_axioms((t, text) in case()) {
        let config = match ClusterConfig::parse("p.toml", &text) {
            Ok(c) => c,
            Err(e) => return well_formed(&e, "p.toml", &text),
        };
        match plan(&config, &t) {
            Ok(p) => check_axioms(&config, &t, &p)?,
            Err(e) => well_formed(&e, "p.toml", &text)?,
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_plan((t, text) in case()) {
        let a = ClusterConfig::parse("p.toml", &text);
        prop_assert_eq!(&a, &ClusterConfig::parse("p.toml", &text));
        if let Ok(config) = a {
            prop_assert_eq!(plan(&config, &t), plan(&config, &t.clone()));
        }
    }
}

// --------------------------------------------------------- hostile inputs

/// A valid-looking config with random edits: lines dropped or repeated,
/// values replaced by other types, huge or negative numbers, garbage.
fn mutated() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("64".to_string()),
        Just("18446744073709551615".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("0x10".to_string()),
        Just("1.5".to_string()),
        Just("true".to_string()),
        Just("\"rw\"".to_string()),
        Just("\"n1\"".to_string()),
        Just("\"\"".to_string()),
        Just("[]".to_string()),
        Just("[0, 0]".to_string()),
        Just("[70, 4294967296]".to_string()),
        Just("{ n0 = \"rw\" }".to_string()),
        Just("{ n0 = 1, n9 = \"r\" }".to_string()),
        Just("1979-05-27".to_string()),
        "[a-z0-9_\\-\"\\[\\]{}=,. ]{0,12}",
    ];
    (
        config_spec(),
        1usize..=64,
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, value), 0..6),
    )
        .prop_map(|(spec, cpus, edits)| {
            let mut lines: Vec<String> =
                config_text(&spec, cpus).lines().map(String::from).collect();
            for (at, op, value) in edits {
                if lines.is_empty() {
                    break;
                }
                let i = at.index(lines.len());
                match op {
                    0 => {
                        lines.remove(i);
                    }
                    1 => {
                        let line = lines[i].clone();
                        lines.insert(i, line);
                    }
                    2 => {
                        if let Some((key, _)) = lines[i].split_once(" = ") {
                            lines[i] = format!("{key} = {value}");
                        }
                    }
                    _ => lines.insert(i, value),
                }
            }
            lines.join("\n")
        })
}

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => mutated(),
        1 => "[\\[\\]a-z0-9_=\"{},.\n #-]{0,200}",
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(Config { cases: 1024, ..Config::default() })]

    #[test]
    fn nothing_panics_and_errors_are_well_formed(text in hostile_text(), m in machine_spec()) {
        let t = machine(&m);
        match ClusterConfig::parse("h.toml", &text) {
            Err(e) => well_formed(&e, "h.toml", &text)?,
            Ok(config) => {
                let again = ClusterConfig::parse("h.toml", &text);
                prop_assert_eq!(Ok(&config), again.as_ref());
                let first = plan(&config, &t);
                prop_assert_eq!(&first, &plan(&config, &t));
                match first {
                    Ok(p) => check_axioms(&config, &t, &p)?,
                    Err(e) => well_formed(&e, "h.toml", &text)?,
                }
            }
        }
    }

    #[test]
    fn the_planner_survives_absurd_topologies(
        text in mutated(),
        ram in prop::collection::vec((any::<u64>(), any::<u64>()), 0..6),
        reserved in prop::collection::vec((any::<u64>(), any::<u64>()), 0..6),
        domains in prop::collection::vec((any::<u64>(), any::<u64>(), 0u32..4), 0..6),
        boot in prop::option::of(0u32..70),
        cpus in prop::collection::vec(0u32..4, 0..8),
    ) {
        let Ok(config) = ClusterConfig::parse("a.toml", &text) else { return Ok(()) };
        let t = Topology {
            cpus: cpus.iter().enumerate().map(|(i, &d)| Cpu { index: CpuIndex(i as u32), apic_id: i as u32, domain: DomainId(d) }).collect(),
            boot_cpu: boot.map(CpuIndex),
            domain_memory: domains.iter().map(|&(s, l, d)| DomainMemory { range: PhysRange::new(s, l), domain: DomainId(d) }).collect(),
            distances: None,
            ram: ram.iter().map(|&(s, l)| PhysRange::new(s, l)).collect(),
            reserved: reserved.iter().map(|&(s, l)| PhysRange::new(s, l)).collect(),
        };
        match plan(&config, &t) {
            Ok(p) => check_axioms(&config, &t, &p)?,
            // A topology the planner cannot use is reported like a bad
            // config: located, with a fix, in order, bounded.
            Err(e) => well_formed(&e, "a.toml", &text)?,
        }
    }
}

/// The generators must reach the interesting part: most cases parse, and a
/// good share of them plan, so the axioms are checked on real plans.
#[test]
fn the_generators_produce_plans() {
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let (mut parsed, mut planned) = (0, 0);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    const N: usize = 1000;
    for _ in 0..N {
        let (t, text) = strategy.new_tree(&mut runner).unwrap().current();
        let config = match ClusterConfig::parse("p.toml", &text) {
            Ok(c) => c,
            Err(e) => {
                *reasons.entry(format!("parse {:?}", e[0].kind)).or_default() += 1;
                continue;
            }
        };
        parsed += 1;
        match plan(&config, &t) {
            Ok(_) => planned += 1,
            Err(e) => *reasons.entry(format!("{:?}", e[0].kind)).or_default() += 1,
        }
    }
    assert!(
        parsed * 10 >= N * 7,
        "only {parsed} of {N} configs parse; failures: {reasons:?}"
    );
    assert!(
        planned * 10 >= N * 3,
        "only {planned} of {N} configs plan; failures: {reasons:?}"
    );
}
