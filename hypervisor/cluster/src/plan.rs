//! The planner: a pure function from (config, topology) to the [`Plan`] that
//! the two-part boot carries out (thesis 4.5.3 step 2, 5.4.1).
//!
//! The plan is the *global boot state*: part 1 writes it once, makes it
//! read-only, and each node's part 2 receives only its own [`NodePlan`].

use alloc::string::String;
use alloc::vec::Vec;

use crate::topology::{Cpu, DomainId, PhysRange};

/// A node's number: its position in the config's `[[node]]` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u16);

/// How a node may touch a channel's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// A node's share of the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    pub id: NodeId,
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
    pub name: String,
    /// 4 KiB aligned, outside every node's memory.
    pub range: PhysRange,
    pub grants: Vec<(NodeId, Access)>,
}

/// The right of node `from` to raise notifications in node `to` (one entry
/// per ordered pair; the IPI capability of thesis 4.5.6, made finer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalPlan {
    pub from: NodeId,
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
    pub channels: Vec<ChannelPlan>,
    pub signals: Vec<SignalPlan>,
}
