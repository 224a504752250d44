//! Planner rules, one at a time. The axioms every plan keeps are
//! property-tested in `tests/properties.rs`.

use super::*;
use crate::config::ClusterConfig;
use crate::topology::{CpuIndex, DomainMemory};
use alloc::string::ToString;
use alloc::vec;

const MIB: u64 = 1 << 20;

fn config(text: &str) -> ClusterConfig {
    ClusterConfig::parse("c.toml", text).unwrap()
}

fn topology(spec: &str) -> Topology {
    Topology::from_spec(spec).unwrap()
}

fn cpus(plan: &Plan) -> Vec<Vec<u32>> {
    plan.nodes
        .iter()
        .map(|n| n.cpus.iter().map(|c| c.index.0).collect())
        .collect()
}

fn errors(text: &str, t: &Topology) -> Vec<String> {
    plan(&config(text), t)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn node(name: &str, select: &str, mem: u64) -> String {
    alloc::format!("[[node]]\nname = \"{name}\"\n{select}\nmem_mib = {mem}\n")
}

#[test]
fn the_boot_cpu_leads_its_node_and_other_lists_are_sorted() {
    let t = topology("cpus=6,mem-mib=512,boot-cpu=3");
    let text = node("a", "cpus = [5, 0]", 16) + &node("b", "cpus = [1, 4, 3, 2]", 16);
    let p = plan(&config(&text), &t).unwrap();
    assert_eq!(cpus(&p), [vec![0, 5], vec![3, 1, 2, 4]]);
    assert_eq!(p.boot_node, NodeId(1));
    assert_eq!(p.node(NodeId(1)).unwrap().name, "b");
}

#[test]
fn count_nodes_take_the_boot_cpu_then_prefer_one_domain() {
    let t = topology("cpus=8,numa=2,mem-mib=1024");
    let text = node("a", "cpus = [1, 2]", 16)
        + &node("b", "count = 3", 16)
        + &node("c", "count = 2", 16)
        + &node("d", "count = 1", 16);
    let p = plan(&config(&text), &t).unwrap();
    // b: the boot CPU 0 and CPU 3 from its domain, then CPU 4.
    // c: two CPUs of one domain (domain 0 has none left).
    // d: the one left.
    assert_eq!(cpus(&p), [vec![1, 2], vec![0, 3, 4], vec![5, 6], vec![7]]);
    assert_eq!(p.boot_node, NodeId(1));
    let domains: Vec<_> = p.nodes.iter().map(|n| n.domain).collect();
    assert_eq!(
        domains,
        [
            Some(DomainId(0)),
            None,
            Some(DomainId(1)),
            Some(DomainId(1))
        ]
    );
}

#[test]
fn count_nodes_skip_a_domain_too_small_for_them() {
    let t = topology("cpus=8,numa=2,mem-mib=1024");
    let text = node("a", "cpus = [0, 1, 2]", 16)
        + &node("b", "count = 2", 16)
        + &node("c", "count = 1", 16);
    let p = plan(&config(&text), &t).unwrap();
    assert_eq!(cpus(&p), [vec![0, 1, 2], vec![4, 5], vec![3]]);
}

#[test]
fn without_an_srat_no_node_is_tied_to_a_domain() {
    let t = topology("cpus=4,mem-mib=512");
    let p = plan(&config(&node("a", "numa = 0", 64)), &t).unwrap();
    assert_eq!(cpus(&p), [vec![0, 1, 2, 3]]);
    assert_eq!(p.nodes[0].domain, None);
}

#[test]
fn numa_nodes_take_memory_from_their_domain() {
    let t = topology("cpus=4,numa=2,mem-mib=1024");
    let text = node("far", "numa = 1", 64) + &node("near", "numa = 0", 64);
    let p = plan(&config(&text), &t).unwrap();
    let far = &p.nodes[0];
    assert_eq!(far.domain, Some(DomainId(1)));
    assert!(far.memory.iter().all(|r| r.start.0 >= 512 * MIB));
    assert_eq!(far.kernel_memory, PhysRange::new(512 * MIB, 8 * MIB));
    assert_eq!(far.memory, [PhysRange::new(512 * MIB, 64 * MIB)]);
    let near = &p.nodes[1];
    assert!(near.memory.iter().all(|r| r.end() <= 512 * MIB));
    // Above the hypervisor image, at the first 2 MiB boundary.
    assert_eq!(near.kernel_memory, PhysRange::new(6 * MIB, 8 * MIB));
    assert_eq!(p.boot_node, NodeId(1));
}

#[test]
fn channels_prefer_their_first_nodes_domain_and_doorbells_the_receivers() {
    let t = topology("cpus=4,numa=2,mem-mib=1024");
    let text = node("near", "numa = 0", 64)
        + &node("far", "numa = 1", 64)
        + "[[channel]]\nname = \"x\"\nsize_kib = 8\naccess = { far = \"rw\", near = \"r\" }\n"
        + "[[ipi]]\nfrom = \"far\"\nto = \"near\"\nnotifications = [3]\n";
    let p = plan(&config(&text), &t).unwrap();
    // The top of domain 1, and the top of domain 0.
    assert_eq!(
        p.channels[0].range,
        PhysRange::new(1024 * MIB - 0x2000, 0x2000)
    );
    assert_eq!(
        p.signals[0].doorbell,
        PhysRange::new(512 * MIB - 0x1000, 0x1000)
    );
    assert_eq!(p.signals[0].notifications, 1 << 3);
    assert_eq!(
        p.channels[0].grants,
        [(NodeId(1), Access::ReadWrite), (NodeId(0), Access::Read)]
    );
    assert_eq!(p.nodes[0].channels, [(0, Access::Read)]);
    assert_eq!(p.nodes[1].channels, [(0, Access::ReadWrite)]);
}

#[test]
fn trampolines_are_distinct_pages_from_0x8000() {
    let t = topology("cpus=3,mem-mib=512");
    let text =
        node("a", "count = 1", 16) + &node("b", "count = 1", 16) + &node("c", "count = 1", 16);
    let p = plan(&config(&text), &t).unwrap();
    let pages: Vec<u64> = p.nodes.iter().map(|n| n.trampoline.start.0).collect();
    assert_eq!(pages, [0x8000, 0x9000, 0xa000]);
}

#[test]
fn too_few_low_pages_for_the_trampolines_is_an_error() {
    let mut t = topology("cpus=3,mem-mib=512");
    t.reserved.push(PhysRange::new(0xa000, 0x95000));
    let text =
        node("a", "count = 1", 16) + &node("b", "count = 1", 16) + &node("c", "count = 1", 16);
    assert_eq!(
        errors(&text, &t),
        [
            "c.toml:9:1: no page below 1 MiB is left for the startup trampoline of node 'c': 3 nodes need one page each and 0x8000-0x9f000 has 2 free; use at most 2 nodes"
        ]
    );
}

#[test]
fn kernel_memory_needs_an_aligned_block() {
    let mut t = topology("cpus=1,mem-mib=512");
    // Free memory in 1 MiB pieces at odd MiB: 3 MiB in all, no aligned
    // 2 MiB block.
    t.ram = vec![
        PhysRange::new(MIB, MIB),
        PhysRange::new(7 * MIB, MIB),
        PhysRange::new(9 * MIB, MIB),
        PhysRange::new(0x8000, 0x1000),
    ];
    let text = "[[node]]\nname = \"a\"\ncpus = [0]\nmem_mib = 3\nkernel_mib = 2\n";
    assert_eq!(
        errors(text, &t),
        [
            "c.toml:5:14: node 'a' needs one 2 MiB aligned block of 2 MiB for its kernel memory on this machine, but the largest free one is 0 bytes; give the other nodes on this machine less memory"
        ]
    );
}

#[test]
fn numa_domains_without_cpus_or_memory_are_errors() {
    let mut t = topology("cpus=4,numa=2,mem-mib=1024");
    // Domain 2: memory, no CPUs. Domain 1 loses its memory.
    t.domain_memory.retain(|m| m.domain != DomainId(1));
    t.domain_memory.push(DomainMemory {
        range: PhysRange::new(512 * MIB, 512 * MIB),
        domain: DomainId(2),
    });
    assert_eq!(
        errors(
            &(node("a", "cpus = [0]", 16) + &node("b", "numa = 2", 16)),
            &t
        ),
        ["c.toml:7:8: NUMA domain 2 has no CPUs; use one of the domains with CPUs: 0-1"]
    );
    assert_eq!(
        errors(
            &(node("a", "cpus = [0]", 16) + &node("b", "numa = 1", 16)),
            &t
        ),
        [
            "c.toml:7:8: NUMA domain 1 has no memory; list its CPUs with cpus = [..] instead: the node's memory then comes from any domain"
        ]
    );
    // Listed by index instead, the CPUs of the memory-less domain take
    // memory from anywhere.
    let p = plan(
        &config(&(node("a", "cpus = [0]", 16) + &node("b", "cpus = [2, 3]", 16))),
        &t,
    )
    .unwrap();
    assert_eq!(p.nodes[1].domain, None);
}

#[test]
fn a_broken_topology_is_reported_not_panicked_on() {
    let text = node("a", "count = 1", 16);
    let mut t = topology("cpus=2,mem-mib=64");
    t.cpus[1].index = CpuIndex(7);
    assert_eq!(
        errors(&text, &t),
        [
            "c.toml:1:1: the machine description lists CPU 7 in position 1; the machine description is inconsistent; report this with the boot log"
        ]
    );
    t.cpus.clear();
    assert!(errors(&text, &t)[0].contains("has no CPUs"));
    let mut t = topology("cpus=2,mem-mib=64");
    t.boot_cpu = Some(CpuIndex(9));
    assert!(errors(&text, &t)[0].contains("the boot CPU 9 is not among the machine's CPUs 0-1"));
}

#[test]
fn several_hardware_errors_are_reported_together() {
    let t = topology("cpus=2,mem-mib=64");
    let text = node("a", "cpus = [0, 5]", 16) + &node("b", "cpus = [6]", 16);
    let e = errors(&text, &t);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("c.toml:3:12: CPU 5 does not exist"));
    assert!(e[1].starts_with("c.toml:7:9: CPU 6 does not exist"));
}

#[test]
fn planning_is_deterministic() {
    let t = topology("cpus=8,numa=2,mem-mib=1024");
    let c = config(&(node("a", "count = 3", 64) + &node("b", "numa = 1", 128)));
    assert_eq!(plan(&c, &t), plan(&c, &t));
}
