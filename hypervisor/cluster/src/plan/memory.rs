//! Where each node's memory, trampoline, channel and doorbell goes.
//!
//! ```text
//!   0        0x8000          0x9f000   1 MiB                      top of RAM
//!   |--------|-- trampolines --|.......|-- nodes (from the bottom) ... --|
//!                                       ... channels, doorbells (from the top)
//! ```
//!
//! One free list holds all RAM at or above 1 MiB minus the reserved
//! regions; everything is carved from it, so nodes, channels and doorbells
//! cannot overlap each other or the reserved regions. The order gives the
//! hardest requests the first pick:
//! 1. each node's kernel memory: one 2 MiB aligned block, lowest fit in the
//!    node's domain. Nodes tied to a domain go first, since they have only
//!    that domain's memory to choose from;
//! 2. the rest of each node's memory, lowest pages of its domain first, in
//!    as many pieces as it takes (same node order);
//! 3. channels, contiguous, from the top of the memory of their first node's
//!    domain, else from the top of any memory;
//! 4. one doorbell page per signalling node pair, from the top, preferring
//!    the receiving node's domain (the receiver reads it on every signal).
//!
//! Nodes fill from the bottom and shared pages from the top, so the shared
//! pages find contiguous memory whenever the nodes leave some.
//! Trampolines come from their own list: RAM in `[0x8000, 0x9f000)`, which
//! real-mode startup code can reach (a SIPI vector names a page below
//! 1 MiB).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::Problems;
use super::fmt::size;
use super::ranges::{MIB, PAGE, RangeSet, align_down, align_up};
use crate::config::{ClusterConfig, ErrorKind, Location, Signal};
use crate::topology::{DomainId, PhysRange, Topology};

/// Kernel memory alignment: the node maps it with 2 MiB pages.
pub const KERNEL_ALIGN: u64 = 2 * MIB;
/// Trampoline pages: above the real-mode IVT, BIOS data area and the boot
/// loader's low use, below the EBDA.
pub const TRAMPOLINE_FIRST: u64 = 0x8000;
/// End (exclusive) of the trampoline pages.
pub const TRAMPOLINE_END: u64 = 0x9f000;

pub(super) struct NodeMemory {
    pub memory: Vec<PhysRange>,
    pub kernel: PhysRange,
    pub trampoline: PhysRange,
}

pub(super) struct Placement {
    pub nodes: Vec<NodeMemory>,
    pub channels: Vec<PhysRange>,
    pub doorbells: Vec<PhysRange>,
}

/// A signal and the `[[ipi]]` that first declared its pair.
pub(super) struct SignalAt<'c> {
    pub signal: Signal,
    pub at: &'c Location,
}

pub(super) fn place(
    config: &ClusterConfig,
    topology: &Topology,
    domains: &[Option<DomainId>],
    signals: &[SignalAt<'_>],
    problems: &mut Problems<'_>,
) -> Option<Placement> {
    let usable = RangeSet::inner_pages(topology.ram.iter().copied())
        .minus(&RangeSet::outer_pages(topology.reserved.iter().copied()));
    let mut free = usable.intersect(&RangeSet::between(MIB, align_down(u64::MAX, PAGE)));
    let mut low = usable.intersect(&RangeSet::between(TRAMPOLINE_FIRST, TRAMPOLINE_END));
    let mut domain_sets: BTreeMap<DomainId, RangeSet> = BTreeMap::new();
    for m in &topology.domain_memory {
        let set = domain_sets.entry(m.domain).or_default();
        *set = set.union(&RangeSet::inner_pages([m.range]));
    }
    let pool = |free: &RangeSet, domain: Option<DomainId>| match domain {
        Some(d) => domain_sets
            .get(&d)
            .map_or_else(RangeSet::default, |s| free.intersect(s)),
        None => free.clone(),
    };
    let domain_of = |i: usize| domains.get(i).copied().flatten();
    let place_name = |d: Option<DomainId>| match d {
        Some(d) => format!("in NUMA domain {}", d.0),
        None => String::from("on this machine"),
    };

    let count = config.nodes.len();
    let mut order: Vec<usize> = (0..count).filter(|&i| domain_of(i).is_some()).collect();
    order.extend((0..count).filter(|&i| domain_of(i).is_none()));
    let mut kernels: Vec<Option<PhysRange>> = vec![None; count];

    for &i in &order {
        let Some(node) = config.nodes.get(i) else {
            continue;
        };
        let domain = domain_of(i);
        let available = pool(&free, domain);
        let need = node.mem_mib.value.saturating_mul(MIB);
        if available.total() < need {
            problems.error(
                &node.mem_mib.at,
                ErrorKind::OutOfMemory,
                format!(
                    "node '{}' needs {} {} but only {} is free there",
                    node.name.value,
                    size(need),
                    place_name(domain),
                    size(available.total())
                ),
                lower_mem_fix(available.total(), node.kernel_mib(), domain),
            );
            continue;
        }
        let kernel_len = node.kernel_mib().saturating_mul(MIB);
        match available.lowest_block(kernel_len, KERNEL_ALIGN) {
            Some(block) => {
                free.remove(block);
                if let Some(k) = kernels.get_mut(i) {
                    *k = Some(block);
                }
            }
            None => {
                let largest = available.largest_block(KERNEL_ALIGN);
                problems.error(
                    node.kernel_at(),
                    ErrorKind::OutOfMemory,
                    format!(
                        "node '{}' needs one 2 MiB aligned block of {} for its kernel memory {}, but the largest free one is {}",
                        node.name.value,
                        size(kernel_len),
                        place_name(domain),
                        size(largest)
                    ),
                    if largest >= KERNEL_ALIGN {
                        format!("set kernel_mib to {} or less", largest / MIB)
                    } else {
                        format!("give the other nodes {} less memory", place_name(domain))
                    },
                );
            }
        }
    }

    let mut memory: Vec<Vec<PhysRange>> = vec![Vec::new(); count];
    for &i in &order {
        let (Some(node), Some(Some(kernel))) = (config.nodes.get(i), kernels.get(i)) else {
            continue;
        };
        let domain = domain_of(i);
        let available = pool(&free, domain);
        let need = node.mem_mib.value.saturating_mul(MIB);
        let rest = need.saturating_sub(kernel.len);
        // One contiguous range if any is big enough (fewer, larger ranges
        // map with 2 MiB pages and keep VM memory whole), else the lowest
        // pieces that add up.
        let contiguous = available
            .lowest_block(rest, PAGE)
            .map(|b| RangeSet::between(b.start.0, b.end()));
        match contiguous.or_else(|| available.lowest_bytes(rest)) {
            Some(pieces) => {
                free = free.minus(&pieces);
                let mine = pieces.union(&RangeSet::between(kernel.start.0, kernel.end()));
                if let Some(m) = memory.get_mut(i) {
                    *m = mine.ranges().to_vec();
                }
            }
            None => {
                let left = available.total().saturating_add(kernel.len);
                problems.error(
                    &node.mem_mib.at,
                    ErrorKind::OutOfMemory,
                    format!(
                        "node '{}' needs {} {} but only {} is left for it after the other nodes",
                        node.name.value,
                        size(need),
                        place_name(domain),
                        size(left)
                    ),
                    lower_mem_fix(left, node.kernel_mib(), domain),
                );
            }
        }
    }

    let low_pages = low.total() / PAGE;
    let mut trampolines = Vec::with_capacity(count);
    for node in &config.nodes {
        match low.lowest_block(PAGE, PAGE) {
            Some(page) => {
                low.remove(page);
                trampolines.push(page);
            }
            None => problems.error(
                &node.at,
                ErrorKind::OutOfMemory,
                format!(
                    "no page below 1 MiB is left for the startup trampoline of node '{}': {count} nodes need one page each and {:#x}-{:#x} has {low_pages} free",
                    node.name.value, TRAMPOLINE_FIRST, TRAMPOLINE_END
                ),
                format!("use at most {low_pages} nodes"),
            ),
        }
    }

    let shared_block = |free: &RangeSet, len: u64, prefer: Option<DomainId>| {
        prefer
            .and_then(|d| pool(free, Some(d)).highest_block(len, PAGE))
            .or_else(|| free.highest_block(len, PAGE))
    };
    let mut channels = Vec::with_capacity(config.channels.len());
    for channel in &config.channels {
        let len = align_up(channel.size_bytes(), PAGE).unwrap_or(u64::MAX);
        let prefer = channel
            .access
            .first()
            .and_then(|g| domain_of(usize::from(g.node.value.0)));
        match shared_block(&free, len, prefer) {
            Some(block) => {
                free.remove(block);
                channels.push(block);
            }
            None => {
                let largest = free.largest_block(PAGE);
                problems.error(
                    &channel.size_kib.at,
                    ErrorKind::OutOfMemory,
                    format!(
                        "channel '{}' needs {} of contiguous memory outside the nodes, but the largest free block is {}",
                        channel.name.value,
                        size(len),
                        size(largest)
                    ),
                    if largest >= PAGE {
                        format!(
                            "set size_kib to {} or less, or give the nodes less memory",
                            largest / 1024
                        )
                    } else {
                        "give the nodes less memory".into()
                    },
                );
            }
        }
    }

    let mut doorbells = Vec::with_capacity(signals.len());
    for s in signals {
        let prefer = domain_of(usize::from(s.signal.to.0));
        match shared_block(&free, PAGE, prefer) {
            Some(page) => {
                free.remove(page);
                doorbells.push(page);
            }
            None => problems.error(
                s.at,
                ErrorKind::OutOfMemory,
                format!(
                    "no 4 KiB page outside the nodes is left for the doorbell from node '{}' to node '{}'",
                    config.node_name(s.signal.from),
                    config.node_name(s.signal.to)
                ),
                "give the nodes or channels less memory".into(),
            ),
        }
    }

    if !problems.is_empty() {
        return None;
    }
    let nodes = memory
        .into_iter()
        .zip(kernels)
        .zip(trampolines)
        .map(|((memory, kernel), trampoline)| {
            Some(NodeMemory {
                memory,
                kernel: kernel?,
                trampoline,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Placement {
        nodes,
        channels,
        doorbells,
    })
}

/// The fix for a node that does not fit in `available` bytes.
fn lower_mem_fix(available: u64, kernel_mib: u64, domain: Option<DomainId>) -> String {
    let mib = available / MIB;
    let elsewhere = match domain {
        Some(d) => format!("give the other nodes in NUMA domain {} less memory", d.0),
        None => "give the other nodes less memory".into(),
    };
    if mib > kernel_mib {
        format!("set mem_mib to {mib} or less, or {elsewhere}")
    } else {
        elsewhere
    }
}
