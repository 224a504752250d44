//! The planner: a pure function from (config, topology) to the [`Plan`] that
//! the two-part boot carries out (thesis 4.5.3 step 2, 5.4.1).
//!
//! The plan is the *global boot state*: part 1 writes it once, makes it
//! read-only, and each node's part 2 receives only its own [`NodePlan`].
//!
//! [`plan`] checks the config against the machine (CPUs and NUMA domains
//! that exist, enough CPUs and memory) and reports every mismatch at the
//! config key that asked for it. Its rules are in the `cpus` and `memory`
//! submodules and in this crate's `DESIGN.md`; the boot axioms it
//! guarantees are property-tested in `tests/properties.rs`.

pub mod admit;
mod cpus;
mod fmt;
mod memory;
mod ranges;
mod vms;

pub use memory::{KERNEL_ALIGN, TRAMPOLINE_END, TRAMPOLINE_FIRST};
pub use vms::{DEVICES, VM_ALIGN, VmPlan, VmSignalPlan};

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::config::{ClusterConfig, ConfigError, CpuSelection, ErrorKind, ErrorList, Location};
use crate::topology::{Cpu, DomainId, PhysRange, Topology};

/// A node's number: its position in the config's `[[node]]` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u16);

/// How a node may touch a channel's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Mapped read-only.
    Read,
    /// Mapped read-write.
    ReadWrite,
}

/// A node's share of the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    /// The node's number.
    pub id: NodeId,
    /// The node's `name` from the config.
    pub name: String,
    /// The node's CPUs; `cpus[0]` is the node's first CPU, which runs part 2.
    /// For the boot node that is the boot CPU.
    pub cpus: Vec<Cpu>,
    /// The NUMA domain the memory came from, when the node is tied to one.
    pub domain: Option<DomainId>,
    /// All memory the node owns (`mem_mib` in total), sorted, disjoint, each
    /// range 4 KiB aligned. Includes `kernel_memory`.
    pub memory: Vec<PhysRange>,
    /// The part of `memory` for the node's kernel: its heap, page tables,
    /// per-CPU blocks and stacks (the node's static state, axioms
    /// 5.4.18-5.4.20). 2 MiB aligned.
    pub kernel_memory: PhysRange,
    /// A 4 KiB page below 1 MiB that belongs to this node only: the real-mode
    /// trampoline its CPUs start in (SIPI vector = `start >> 12`).
    pub trampoline: PhysRange,
    /// Channels this node maps: index into [`Plan::channels`] and access.
    pub channels: Vec<(usize, Access)>,
}

/// A config-declared shared-memory region between nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelPlan {
    /// The channel's `name` from the config.
    pub name: String,
    /// 4 KiB aligned, outside every node's memory.
    pub range: PhysRange,
    /// Each node that maps the channel, and how.
    pub grants: Vec<(NodeId, Access)>,
}

/// The right of node `from` to raise notifications in node `to` (one entry
/// per ordered pair; the IPI capability of thesis 4.5.6, made finer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalPlan {
    /// The node that raises.
    pub from: NodeId,
    /// The node that receives.
    pub to: NodeId,
    /// Bit n set: `from` may raise notification n (0..64) in `to`.
    pub notifications: u64,
    /// A 4 KiB page outside every node's memory, mapped read-write in both
    /// nodes: the coalescing doorbell (see [`crate::doorbell`]).
    pub doorbell: PhysRange,
}

/// The whole plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// In config order (`nodes[i].id == NodeId(i)`).
    pub nodes: Vec<NodePlan>,
    /// The node whose first CPU is the boot CPU: part 1 runs there and then
    /// becomes that node's part 2.
    pub boot_node: NodeId,
    /// Shared-memory channels, in config order.
    pub channels: Vec<ChannelPlan>,
    /// Signal rights between nodes, one per ordered pair that has any.
    pub signals: Vec<SignalPlan>,
    /// In config order; each VM inside its node (see [`VmPlan`]).
    pub vms: Vec<VmPlan>,
}

impl Plan {
    /// The plan of node `id`, if it exists.
    pub fn node(&self, id: NodeId) -> Option<&NodePlan> {
        self.nodes.get(usize::from(id.0))
    }

    /// The VM (index into `vms`) on node `to` that receives notification
    /// `n` when node `from` raises it, if any VM holds such a capability.
    pub fn receiver(&self, from: NodeId, to: NodeId, n: u8) -> Option<usize> {
        let bit = 1u64.checked_shl(u32::from(n))?;
        self.vms
            .iter()
            .filter(|vm| vm.node == from)
            .flat_map(|vm| &vm.signals)
            .find(|s| s.node == to && s.notifications & bit != 0)
            .map(|s| s.target)
    }
}

impl NodePlan {
    /// Bytes of memory the node owns, kernel memory included.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.iter().fold(0, |t, r| t.saturating_add(r.len))
    }
}

impl Access {
    /// As the config writes it: `"r"` or `"rw"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "r",
            Access::ReadWrite => "rw",
        }
    }
}

/// Errors found while planning, reported against the config's file.
pub(crate) struct Problems<'c> {
    file: &'c str,
    errors: ErrorList,
}

impl<'c> Problems<'c> {
    fn new(file: &'c str) -> Self {
        Self {
            file,
            errors: ErrorList::new(file),
        }
    }

    fn error(&mut self, at: &Location, kind: ErrorKind, message: String, fix: String) {
        self.errors
            .push(ConfigError::new(self.file, at, kind, message, fix));
    }

    /// A topology that breaks its own invariants: a discovery bug, which
    /// no config can fix, reported at the start of the file.
    fn topology(&mut self, message: String) {
        self.error(
            &Location::start_of_file(),
            ErrorKind::Topology,
            message,
            "the machine description is inconsistent; report this with the boot log".into(),
        );
    }

    fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The errors. Never empty: a planning step that gives up reports
    /// why, and this guards one that would not (a config built in code
    /// beyond the parser's limits, say).
    fn into_list(mut self) -> ErrorList {
        if self.errors.is_empty() {
            self.error(
                &Location::start_of_file(),
                ErrorKind::BadValue,
                "the config cannot be planned".into(),
                "check it with ClusterConfig::parse, which enforces the language's limits".into(),
            );
        }
        self.errors
    }
}

/// Plans `config` on the machine `topology`: which CPUs and memory each
/// node gets, where channels, doorbells and trampolines go.
///
/// Pure and deterministic: the same inputs give the same plan. Every error
/// points at the config key that cannot be honoured and says how much was
/// asked and how much there is.
///
/// The errors come in file order: at most [`crate::config::MAX_ERRORS`],
/// then a line counting the rest.
pub fn plan(config: &ClusterConfig, topology: &Topology) -> Result<Plan, Vec<ConfigError>> {
    plan_checked(config, topology).map_err(ErrorList::into_sorted)
}

/// [`plan`], with the errors as the refusal of VMs needs them.
pub(crate) fn plan_checked(config: &ClusterConfig, topology: &Topology) -> Result<Plan, ErrorList> {
    let mut problems = Problems::new(&config.file);
    check_topology(topology, &mut problems);
    if !problems.is_empty() {
        return Err(problems.into_list());
    }
    let Some(assignment) = cpus::assign(config, topology, &mut problems) else {
        return Err(problems.into_list());
    };
    let domains: Vec<Option<DomainId>> = config
        .nodes
        .iter()
        .zip(&assignment.cpus)
        .map(|(node, cpus)| node_domain(topology, &node.cpus.value, cpus))
        .collect();
    let signals: Vec<memory::SignalAt<'_>> = config
        .signals()
        .into_iter()
        .filter_map(|signal| {
            let first = config
                .ipis
                .iter()
                .find(|i| i.from.value == signal.from && i.to.value == signal.to)?;
            Some(memory::SignalAt {
                signal,
                at: &first.at,
            })
        })
        .collect();
    let Some(placement) = memory::place(config, topology, &domains, &signals, &mut problems) else {
        return Err(problems.into_list());
    };

    let channels: Vec<ChannelPlan> = config
        .channels
        .iter()
        .zip(placement.channels)
        .map(|(c, range)| ChannelPlan {
            name: c.name.value.clone(),
            range,
            grants: c
                .access
                .iter()
                .map(|g| (g.node.value, g.access.value))
                .collect(),
        })
        .collect();
    let nodes: Vec<NodePlan> = config
        .nodes
        .iter()
        .zip(assignment.cpus)
        .zip(domains)
        .zip(placement.nodes)
        .map(|(((node, cpus), domain), mem)| NodePlan {
            id: node.id,
            name: node.name.value.clone(),
            cpus,
            domain,
            memory: mem.memory,
            kernel_memory: mem.kernel,
            trampoline: mem.trampoline,
            channels: channels
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    c.grants
                        .iter()
                        .find(|(n, _)| *n == node.id)
                        .map(|(_, a)| (i, *a))
                })
                .collect(),
        })
        .collect();
    let signals = signals
        .iter()
        .zip(placement.doorbells)
        .map(|(s, doorbell)| SignalPlan {
            from: s.signal.from,
            to: s.signal.to,
            notifications: s.signal.notifications,
            doorbell,
        })
        .collect();
    let vms = vms::place(config, &nodes, &channels, &mut problems);
    if !problems.is_empty() {
        return Err(problems.into_list());
    }
    Ok(Plan {
        nodes,
        boot_node: assignment.boot_node,
        channels,
        signals,
        vms,
    })
}

/// The topology's own invariants, which the planner relies on.
fn check_topology(topology: &Topology, problems: &mut Problems<'_>) {
    if topology.cpus.is_empty() {
        problems.topology("the machine description has no CPUs".into());
    }
    for (i, cpu) in topology.cpus.iter().enumerate() {
        if usize::try_from(cpu.index.0).ok() != Some(i) {
            problems.topology(format!(
                "the machine description lists CPU {} in position {i}",
                cpu.index.0
            ));
            return;
        }
    }
}

/// The domain a node's memory comes from: the one domain all its CPUs are
/// in, when the platform describes that domain's memory (SRAT). A node
/// whose CPUs span domains, or on a machine without an SRAT, takes memory
/// from anywhere.
fn node_domain(topology: &Topology, selection: &CpuSelection, cpus: &[Cpu]) -> Option<DomainId> {
    let first = cpus.first()?.domain;
    let one_domain = cpus.iter().all(|c| c.domain == first);
    let has_memory = topology
        .domain_memory
        .iter()
        .any(|m| m.domain == first && m.range.len > 0);
    let domain = (one_domain && has_memory).then_some(first);
    match selection {
        // `numa = K` asked for domain K's memory; the CPU check made sure K
        // has memory when the machine has an SRAT.
        CpuSelection::Numa(k) if topology.has_srat() => Some(*k),
        _ => domain,
    }
}

#[cfg(test)]
mod tests;
