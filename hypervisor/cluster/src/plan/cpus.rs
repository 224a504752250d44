//! Which CPUs each node gets.
//!
//! Order of assignment, so that explicit requests never lose to the
//! planner's own choices:
//! 1. `cpus = [..]` nodes get exactly their CPUs;
//! 2. `numa = K` nodes get every CPU of domain K;
//! 3. `count = N` nodes, in file order, get N of the CPUs left. The first of
//!    them takes the boot CPU if no node has it yet (the boot CPU must be in
//!    a node), topped up from the boot CPU's domain; the others prefer N
//!    CPUs of one domain (the first domain, in CPU order, with N free CPUs)
//!    and otherwise take the lowest-numbered free CPUs.
//!
//! Then the boot CPU must belong to a node; it becomes `cpus[0]` of that
//! node (it runs part 1 of the boot and continues as that node's part 2).
//! Every other list is sorted by index.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::Problems;
use super::fmt::{cpu_list, index_set};
use crate::config::{ClusterConfig, CpuSelection, ErrorKind, Location, NodeConfig};
use crate::plan::NodeId;
use crate::topology::{Cpu, CpuIndex, DomainId, Topology};

pub(super) struct Assignment {
    /// Per node, in config order; the boot node's list starts with the boot
    /// CPU, every other list is sorted.
    pub cpus: Vec<Vec<Cpu>>,
    pub boot_node: NodeId,
}

pub(super) fn assign(
    config: &ClusterConfig,
    topology: &Topology,
    problems: &mut Problems<'_>,
) -> Option<Assignment> {
    let n = topology.cpus.len();
    // owner[i]: the node (position in config.nodes) holding CPU i.
    let mut owner: Vec<Option<usize>> = vec![None; n];
    let mut sets: Vec<Vec<usize>> = vec![Vec::new(); config.nodes.len()];
    let machine = machine_cpus(topology);
    let name = |i: usize| node_name(config, i);

    for (i, node) in config.nodes.iter().enumerate() {
        let CpuSelection::List(list) = &node.cpus.value else {
            continue;
        };
        for cpu in list {
            let Some(slot) = position(cpu.value, n) else {
                problems.error(
                    &cpu.at,
                    ErrorKind::Hardware,
                    format!(
                        "CPU {} does not exist: this machine has {machine}",
                        cpu.value.0
                    ),
                    match n {
                        1 => "list only CPU 0".into(),
                        _ => format!("list CPUs between 0 and {}", n - 1),
                    },
                );
                continue;
            };
            if let Some(Some(first)) = owner.get(slot).copied() {
                // The parser already reports a CPU in two lists; this
                // guards configs built in code.
                problems.error(
                    &cpu.at,
                    ErrorKind::Conflict,
                    format!(
                        "CPU {} is in node '{}' and node '{}'",
                        cpu.value.0,
                        name(first),
                        name(i)
                    ),
                    "a CPU belongs to one node".into(),
                );
                continue;
            }
            claim(&mut owner, &mut sets, slot, i);
        }
    }

    for (i, node) in config.nodes.iter().enumerate() {
        let CpuSelection::Numa(domain) = node.cpus.value else {
            continue;
        };
        let members: Vec<usize> = topology
            .cpus
            .iter()
            .enumerate()
            .filter(|(_, c)| c.domain == domain)
            .map(|(slot, _)| slot)
            .collect();
        if let Some(message) = missing_domain(topology, domain, members.is_empty()) {
            let (message, fix) = message;
            problems.error(&node.cpus.at, ErrorKind::Hardware, message, fix);
            continue;
        }
        let taken = members
            .iter()
            .find_map(|&slot| owner.get(slot).copied().flatten().map(|o| (slot, o)));
        if let Some((slot, other)) = taken {
            problems.error(
                &node.cpus.at,
                ErrorKind::Conflict,
                format!(
                    "NUMA domain {} includes CPU {slot}, which node '{}' also takes",
                    domain.0,
                    name(other)
                ),
                format!(
                    "a CPU belongs to one node: remove CPU {slot} from node '{}', or give node '{}' explicit cpus",
                    name(other),
                    name(i)
                ),
            );
            continue;
        }
        for slot in members {
            claim(&mut owner, &mut sets, slot, i);
        }
    }

    let boot = topology.boot_cpu_or_default();
    let boot_slot = position(boot, n);
    for (i, node) in config.nodes.iter().enumerate() {
        let CpuSelection::Count(count) = node.cpus.value else {
            continue;
        };
        let free: Vec<usize> = (0..n)
            .filter(|&s| owner.get(s).is_some_and(Option::is_none))
            .collect();
        let want = usize::try_from(count).unwrap_or(usize::MAX);
        if want == 0 {
            // The parser refuses `count = 0`; this guards configs built in
            // code.
            problems.error(
                &node.cpus.at,
                ErrorKind::BadValue,
                format!("node '{}' asks for 0 CPUs", name(i)),
                "a node needs at least one CPU: set count = 1 or more".into(),
            );
            continue;
        }
        if free.len() < want {
            let held = n - free.len();
            let (message, fix) = if free.is_empty() {
                (
                    format!(
                        "node '{}' asks for {count} CPUs but none is free: this machine has {machine} and the other nodes hold them all",
                        name(i)
                    ),
                    "take CPUs from another node, or remove this node".into(),
                )
            } else {
                (
                    format!(
                        "node '{}' asks for {count} CPUs but only {} {} free: this machine has {machine} and other nodes hold {held}",
                        name(i),
                        free.len(),
                        if free.len() == 1 { "is" } else { "are" }
                    ),
                    format!("lower count to {}", free.len()),
                )
            };
            problems.error(&node.cpus.at, ErrorKind::Hardware, message, fix);
            continue;
        }
        let domain_of = |s: usize| topology.cpus.get(s).map(|c| c.domain);
        let boot_free = boot_slot.filter(|b| free.contains(b));
        let chosen: Vec<usize> = match boot_free {
            Some(b) => {
                let d = domain_of(b);
                let mut chosen = vec![b];
                chosen.extend(
                    free.iter()
                        .filter(|&&s| s != b && domain_of(s) == d)
                        .take(want.saturating_sub(1)),
                );
                let more = want.saturating_sub(chosen.len());
                let rest: Vec<usize> = free
                    .iter()
                    .copied()
                    .filter(|s| !chosen.contains(s))
                    .take(more)
                    .collect();
                chosen.extend(rest);
                chosen
            }
            None => {
                let mut domains: Vec<Option<DomainId>> =
                    free.iter().map(|&s| domain_of(s)).collect();
                domains.dedup();
                let one_domain = domains.iter().find_map(|d| {
                    let in_d: Vec<usize> = free
                        .iter()
                        .copied()
                        .filter(|&s| domain_of(s) == *d)
                        .take(want)
                        .collect();
                    (in_d.len() == want).then_some(in_d)
                });
                one_domain.unwrap_or_else(|| free.iter().copied().take(want).collect())
            }
        };
        for slot in chosen {
            claim(&mut owner, &mut sets, slot, i);
        }
    }

    if !problems.is_empty() {
        return None;
    }

    let Some(boot_slot) = boot_slot else {
        problems.topology(format!(
            "the boot CPU {} is not among the machine's {machine}",
            boot.0
        ));
        return None;
    };
    let Some(boot_node) = owner.get(boot_slot).copied().flatten() else {
        let first = config.nodes.first();
        let at = first.map_or_else(Location::start_of_file, |n| n.cpus.at.clone());
        problems.error(
            &at,
            ErrorKind::Hardware,
            format!(
                "the boot CPU {} is in no node: it runs the first part of the boot and then joins its node",
                boot.0
            ),
            format!(
                "add CPU {} to a node's cpus, for example node '{}'",
                boot.0,
                first.map_or("?", |n| n.name.value.as_str())
            ),
        );
        return None;
    };

    let mut cpus = Vec::with_capacity(sets.len());
    for (i, mut set) in sets.into_iter().enumerate() {
        set.sort_unstable();
        if i == boot_node {
            set.retain(|&s| s != boot_slot);
            set.insert(0, boot_slot);
        }
        cpus.push(
            set.iter()
                .filter_map(|&s| topology.cpus.get(s).copied())
                .collect(),
        );
    }
    Some(Assignment {
        cpus,
        boot_node: NodeId(u16::try_from(boot_node).ok()?),
    })
}

fn claim(owner: &mut [Option<usize>], sets: &mut [Vec<usize>], slot: usize, node: usize) {
    if let (Some(o), Some(set)) = (owner.get_mut(slot), sets.get_mut(node)) {
        *o = Some(node);
        set.push(slot);
    }
}

/// CPU `index` as a position in `topology.cpus`, when it exists.
fn position(index: CpuIndex, n: usize) -> Option<usize> {
    usize::try_from(index.0).ok().filter(|&i| i < n)
}

fn node_name(config: &ClusterConfig, i: usize) -> &str {
    config
        .nodes
        .get(i)
        .map_or("?", |n: &NodeConfig| n.name.value.as_str())
}

/// "CPUs 0-3", "CPU 0" or "no CPUs".
pub(super) fn machine_cpus(topology: &Topology) -> String {
    cpu_list(topology.cpus.len())
}

/// Why `numa = domain` cannot be honoured, if it cannot.
fn missing_domain(
    topology: &Topology,
    domain: DomainId,
    no_cpus: bool,
) -> Option<(String, String)> {
    let has_memory = topology
        .domain_memory
        .iter()
        .any(|m| m.domain == domain && m.range.len > 0);
    if !no_cpus && (has_memory || !topology.has_srat()) {
        return None;
    }
    // The error path only: lists of domains for the message.
    let mut with_cpus: Vec<u32> = topology.cpus.iter().map(|c| c.domain.0).collect();
    with_cpus.sort_unstable();
    with_cpus.dedup();
    let all: Vec<u32> = topology.domains().iter().map(|d| d.0).collect();
    let use_one = match with_cpus.as_slice() {
        [only] => format!("use numa = {only}"),
        _ => format!(
            "use one of the domains with CPUs: {}",
            index_set(&with_cpus)
        ),
    };
    if !all.contains(&domain.0) {
        let has = match all.as_slice() {
            [only] => format!("domain {only}"),
            _ => format!("domains {}", index_set(&all)),
        };
        return Some((
            format!(
                "NUMA domain {} does not exist: this machine has {has}",
                domain.0
            ),
            use_one,
        ));
    }
    if no_cpus {
        return Some((format!("NUMA domain {} has no CPUs", domain.0), use_one));
    }
    Some((
        format!("NUMA domain {} has no memory", domain.0),
        "list its CPUs with cpus = [..] instead: the node's memory then comes from any domain"
            .into(),
    ))
}
