//! What a node's page tables map, and with which rights: the hardware half
//! of node isolation (hypervisor/DESIGN.md, "What a node's page tables
//! map"). The hypervisor maps
//! exactly the regions [`node_regions`] yields; the tests below check that
//! no node can reach another node's memory and that nothing but code is
//! executable.
//!
//! | region | rights |
//! |---|---|
//! | image code | read, execute |
//! | rest of the image (global boot state, IDT, ...) | read |
//! | image `.shared` (console lock, stop flag) | read, write |
//! | status board: own page / others | read, write / read |
//! | own memory, minus the stacks' guard pages | read, write |
//! | own trampoline page | read, write |
//! | channels held | read, or read and write |
//! | doorbells of signals sent or received | read, write |
//! | the local APIC page | read, write, uncached |

use crate::layout::{GUARD_BYTES, KernelLayout};
use crate::plan::{Access, Plan};
use atoll_platform::paging::Flags;

/// Where the linker put the image's parts (page aligned).
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    /// The image's first byte (its header).
    pub start: u64,
    /// `[start, end)` of `.text`, the only executable part.
    pub text: (u64, u64),
    /// `[start, end)` of `.shared`, the state all nodes write (console lock,
    /// stop flag).
    pub shared: (u64, u64),
    /// The status board: one page per node, node `i` at `board.0 + i * 4096`.
    pub board: (u64, u64),
    /// The end of the image (exclusive).
    pub end: u64,
}

/// One identity-mapped range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte, page aligned.
    pub start: u64,
    /// End (exclusive), page aligned.
    pub end: u64,
    /// The rights the page-table entries give.
    pub flags: Flags,
    /// What the range holds, for error reports and tests.
    pub what: &'static str,
}

/// Calls `map` for every region node `index` maps, stopping at the first
/// error. Allocates nothing (a node builds its tables before it has a
/// heap). Empty regions are skipped.
pub fn node_regions<E>(
    plan: &Plan,
    index: usize,
    image: &ImageLayout,
    layout: &KernelLayout,
    apic_page: u64,
    mut map: impl FnMut(Region) -> Result<(), E>,
) -> Result<(), E> {
    let mut region = |start: u64, end: u64, flags: Flags, what: &'static str| {
        if end > start {
            map(Region {
                start,
                end,
                flags,
                what,
            })
        } else {
            Ok(())
        }
    };
    let own_status = image
        .board
        .0
        .saturating_add((index as u64).saturating_mul(4096));
    let status_end = own_status.saturating_add(4096).min(image.board.1);
    region(image.start, image.text.0, Flags::READ_ONLY, "image header")?;
    region(image.text.0, image.text.1, Flags::CODE, "image code")?;
    region(image.text.1, image.shared.0, Flags::READ_ONLY, "image data")?;
    region(
        image.shared.0,
        image.shared.1,
        Flags::READ_WRITE,
        "image .shared",
    )?;
    region(
        image.shared.1,
        image.board.0,
        Flags::READ_ONLY,
        "image data",
    )?;
    region(image.board.0, own_status, Flags::READ_ONLY, "status board")?;
    region(own_status, status_end, Flags::READ_WRITE, "own status page")?;
    region(status_end, image.board.1, Flags::READ_ONLY, "status board")?;
    region(image.board.1, image.end, Flags::READ_ONLY, "image data")?;
    let Some(me) = plan.nodes.get(index) else {
        return Ok(());
    };
    for range in &me.memory {
        // Node memory, leaving out each stack's guard page (the guards come
        // lowest address first).
        let mut from = range.start.0;
        for guard in layout
            .guards()
            .filter(|&g| range.start.0 <= g && g < range.end())
        {
            region(from, guard, Flags::READ_WRITE, "node memory")?;
            from = guard + GUARD_BYTES;
        }
        region(from, range.end(), Flags::READ_WRITE, "node memory")?;
    }
    let tramp = me.trampoline;
    region(tramp.start.0, tramp.end(), Flags::READ_WRITE, "trampoline")?;
    for &(channel, access) in &me.channels {
        if let Some(ch) = plan.channels.get(channel) {
            let flags = match access {
                Access::Read => Flags::READ_ONLY,
                Access::ReadWrite => Flags::READ_WRITE,
            };
            region(ch.range.start.0, ch.range.end(), flags, "channel")?;
        }
    }
    for signal in plan
        .signals
        .iter()
        .filter(|s| s.from == me.id || s.to == me.id)
    {
        let bell = signal.doorbell;
        region(bell.start.0, bell.end(), Flags::READ_WRITE, "doorbell")?;
    }
    region(
        apic_page,
        apic_page.saturating_add(4096),
        Flags::DEVICE,
        "local APIC",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;
    use crate::topology::Topology;
    use std::vec::Vec;

    const IMAGE: ImageLayout = ImageLayout {
        start: 0x20_0000,
        text: (0x20_1000, 0x24_0000),
        shared: (0x26_0000, 0x26_1000),
        board: (0x50_0000, 0x54_0000),
        end: 0x54_0000,
    };
    const APIC: u64 = 0xfee0_0000;

    fn regions(plan: &Plan, index: usize) -> Vec<Region> {
        let node = &plan.nodes[index];
        let k = node.kernel_memory;
        let layout = KernelLayout::new(k.start.0, k.end(), node.cpus.len()).unwrap();
        let mut out = Vec::new();
        node_regions(plan, index, &IMAGE, &layout, APIC, |r| {
            out.push(r);
            Ok::<(), ()>(())
        })
        .unwrap();
        out
    }

    fn plan_for(config: &str, spec: &str) -> Plan {
        let path = std::format!("{}/../../configs/{config}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).unwrap();
        let config = ClusterConfig::parse(config, &text).unwrap();
        let mut topology = Topology::from_spec(spec).unwrap();
        topology.reserved.push(crate::topology::PhysRange::new(
            IMAGE.start,
            IMAGE.end - IMAGE.start,
        ));
        crate::plan::plan(&config, &topology).unwrap()
    }

    fn overlaps(r: &Region, start: u64, end: u64) -> bool {
        r.start < end && start < r.end
    }

    /// The isolation invariants, for every node of every shipped config.
    #[test]
    fn no_node_reaches_another_nodes_memory() {
        for (config, spec) in [
            ("default.toml", "cpus=4,numa=1,mem-mib=512"),
            ("multikernel.toml", "cpus=4,numa=1,mem-mib=512"),
            ("numa.toml", "cpus=4,numa=2,mem-mib=1024"),
            ("single-node.toml", "cpus=4,numa=1,mem-mib=512"),
        ] {
            let plan = plan_for(config, spec);
            for (i, node) in plan.nodes.iter().enumerate() {
                let mapped = regions(&plan, i);
                for other in plan.nodes.iter().filter(|n| n.id != node.id) {
                    for r in &other.memory {
                        let hit = mapped.iter().find(|m| overlaps(m, r.start.0, r.end()));
                        assert!(
                            hit.is_none(),
                            "{config}: node {i} maps {hit:?} of node {:?}",
                            other.id
                        );
                    }
                    let t = other.trampoline;
                    assert!(!mapped.iter().any(|m| overlaps(m, t.start.0, t.end())));
                }
                for signal in plan
                    .signals
                    .iter()
                    .filter(|s| s.from != node.id && s.to != node.id)
                {
                    let d = signal.doorbell;
                    assert!(
                        !mapped.iter().any(|m| overlaps(m, d.start.0, d.end())),
                        "{config}"
                    );
                }
                for (c, ch) in plan.channels.iter().enumerate() {
                    let held = node
                        .channels
                        .iter()
                        .find(|&&(n, _)| n == c)
                        .map(|&(_, a)| a);
                    let hits: Vec<_> = mapped
                        .iter()
                        .filter(|m| overlaps(m, ch.range.start.0, ch.range.end()))
                        .collect();
                    match held {
                        None => assert!(hits.is_empty(), "{config}: node {i} maps channel {c}"),
                        Some(access) => assert!(
                            hits.iter()
                                .all(|m| m.flags.writable == (access == Access::ReadWrite)),
                            "{config}"
                        ),
                    }
                }
            }
        }
    }

    #[test]
    fn only_code_executes_and_the_image_is_read_only_but_for_shared_state() {
        let plan = plan_for("default.toml", "cpus=4,numa=1,mem-mib=512");
        for i in 0..plan.nodes.len() {
            let mapped = regions(&plan, i);
            for m in &mapped {
                assert_eq!(m.flags.executable, m.what == "image code", "{m:?}");
                if overlaps(m, IMAGE.start, IMAGE.end) {
                    let writable_ok = m.what == "image .shared" || m.what == "own status page";
                    assert_eq!(m.flags.writable, writable_ok, "{m:?}");
                }
            }
            let own: Vec<_> = mapped
                .iter()
                .filter(|m| m.what == "own status page")
                .collect();
            assert_eq!(own.len(), 1);
            assert_eq!(own[0].start, IMAGE.board.0 + i as u64 * 4096);
        }
    }

    #[test]
    fn stack_guard_pages_are_left_unmapped() {
        let plan = plan_for("default.toml", "cpus=4,numa=1,mem-mib=512");
        for (i, node) in plan.nodes.iter().enumerate() {
            let k = node.kernel_memory;
            let layout = KernelLayout::new(k.start.0, k.end(), node.cpus.len()).unwrap();
            let mapped = regions(&plan, i);
            let guards: Vec<u64> = layout.guards().collect();
            assert_eq!(guards.len(), node.cpus.len());
            for g in guards {
                assert!(!mapped.iter().any(|m| overlaps(m, g, g + GUARD_BYTES)));
            }
            // Everything else of the node's memory is mapped read-write.
            let mapped_bytes: u64 = mapped
                .iter()
                .filter(|m| m.what == "node memory")
                .map(|m| m.end - m.start)
                .sum();
            let memory: u64 = node.memory.iter().map(|r| r.len).sum();
            assert_eq!(mapped_bytes + node.cpus.len() as u64 * GUARD_BYTES, memory);
        }
    }
}
