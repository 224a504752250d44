//! Extended page tables (SDM Vol. 3C, 29.3): each VM's guest-physical to
//! host-physical translation, built through the same narrow
//! [`TableMemory`] trait as the hypervisor's own page tables, so it runs,
//! and is tested, on the host.
//!
//! A VM's EPT maps only memory of the VM's node that the VM owns (its RAM,
//! and channels it maps by hypercall). Anything else is absent, so a guest
//! access there is an EPT violation the VMM decides about: an emulated
//! device, or a fault. Nothing is ever mapped "just in case".
//!
//! ```text
//!  guest-physical bits: 47..39 PML4 | 38..30 PDPT | 29..21 PD | 20..12 PT | 11..0
//!  entry: bit 0 read, 1 write, 2 execute; leaf: 5..3 memory type, 6 ignore
//!  PAT, 7 large page (PD level = 2 MiB); 51..12 host-physical address
//! ```

use crate::paging::{PAGE_2M, PAGE_4K, TableMemory};

const READ: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
const EXECUTE: u64 = 1 << 2;
const MEMORY_TYPE_SHIFT: u32 = 3;
const IGNORE_PAT: u64 = 1 << 6;
const LARGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Guest-physical addresses a 4-level EPT covers (SDM 29.3.2).
pub const GUEST_PHYS_LIMIT: u64 = 1 << 48;

/// EPT memory types (SDM 29.3.7, Table 11-8 encodings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryType {
    /// UC: no caching, no speculative reads.
    Uncacheable = 0,
    /// WB: fully cached.
    WriteBack = 6,
}

/// What a guest-physical region is backed by, which fixes its memory type
/// (the written policy):
///
/// | region  | type | why |
/// |---------|------|-----|
/// | RAM     | WB, PAT honoured | ordinary memory; the guest's PAT may still ask for less caching |
/// | channel | WB, PAT ignored  | shared with another node's CPUs, which map it WB: both sides must agree or coherence is lost (SDM 11.12.4) |
/// | device  | UC, PAT ignored  | passed-through registers must never be cached |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// The VM's own RAM.
    Ram,
    /// A shared-memory channel.
    Channel,
    /// Passed-through device registers.
    Device,
}

impl RegionKind {
    fn type_bits(self) -> u64 {
        let (ty, ignore_pat) = match self {
            RegionKind::Ram => (MemoryType::WriteBack, false),
            RegionKind::Channel => (MemoryType::WriteBack, true),
            RegionKind::Device => (MemoryType::Uncacheable, true),
        };
        ((ty as u64) << MEMORY_TYPE_SHIFT) | if ignore_pat { IGNORE_PAT } else { 0 }
    }
}

/// Access rights of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Writes allowed (EPT bit 1); reads always are.
    pub write: bool,
    /// Instruction fetches allowed (EPT bit 2).
    pub execute: bool,
}

impl Access {
    /// Guest RAM: everything.
    pub const RWX: Access = Access {
        write: true,
        execute: true,
    };
    /// Read and write, no instruction fetch (channels, devices).
    pub const RW: Access = Access {
        write: true,
        execute: false,
    };
    /// Read only (read-only channels).
    pub const R: Access = Access {
        write: false,
        execute: false,
    };

    fn bits(self) -> u64 {
        READ | if self.write { WRITE } else { 0 } | if self.execute { EXECUTE } else { 0 }
    }
}

/// Why a mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    /// Not 4 KiB aligned, empty, or past the guest-physical limit.
    BadRange {
        /// First guest-physical byte asked for.
        gpa: u64,
        /// Length asked for, in bytes.
        len: u64,
    },
    /// Part of the range is mapped already.
    AlreadyMapped {
        /// The first guest-physical address found mapped.
        gpa: u64,
    },
    /// The table-frame supply ran out.
    OutOfFrames,
}

impl core::fmt::Display for EptError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EptError::BadRange { gpa, len } => write!(
                f,
                "cannot map {len:#x} bytes at guest-physical {gpa:#x}: not 4 KiB aligned or beyond the EPT's reach"
            ),
            EptError::AlreadyMapped { gpa } => {
                write!(f, "guest-physical {gpa:#x} is mapped already")
            }
            EptError::OutOfFrames => write!(f, "out of EPT table frames"),
        }
    }
}

/// A translation found by [`Ept::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The host-physical address.
    pub host: u64,
    /// The mapping's rights.
    pub access: Access,
}

/// One VM's EPT.
pub struct Ept<M: TableMemory> {
    root: u64,
    memory: M,
}

fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

fn span(level: u32) -> u64 {
    PAGE_4K << (9 * (level - 1))
}

impl<M: TableMemory> Ept<M> {
    /// An empty EPT whose tables come from `memory` (one frame now, for
    /// the root).
    pub fn new(mut memory: M) -> Result<Self, EptError> {
        let root = memory.alloc_frame().ok_or(EptError::OutOfFrames)?;
        Ok(Ept { root, memory })
    }

    /// The EPT pointer for the VMCS (SDM 25.6.11): write-back paging
    /// structures (type 6 in bits 2:0), a 4-level walk (3 in bits 5:3), no
    /// accessed/dirty flags.
    pub fn pointer(&self) -> u64 {
        self.root | (3 << 3) | MemoryType::WriteBack as u64
    }

    /// Maps guest-physical `[gpa, gpa + len)` to host-physical
    /// `[host, host + len)`. 2 MiB pages where both addresses and the
    /// remaining length allow, 4 KiB pages elsewhere. Refuses (changing no
    /// mapping) if any page is mapped already.
    pub fn map(
        &mut self,
        gpa: u64,
        host: u64,
        len: u64,
        access: Access,
        kind: RegionKind,
    ) -> Result<(), EptError> {
        let bad = EptError::BadRange { gpa, len };
        let end = gpa.checked_add(len).ok_or(bad)?;
        let aligned = [gpa, host, len].iter().all(|v| v.is_multiple_of(PAGE_4K));
        if len == 0 || !aligned || end > GUEST_PHYS_LIMIT || host.checked_add(len).is_none() {
            return Err(bad);
        }
        if let Some(gpa) = self.first_mapped(gpa, end) {
            return Err(EptError::AlreadyMapped { gpa });
        }
        let leaf = access.bits() | kind.type_bits();
        let mut offset = 0;
        while offset < len {
            let (g, h) = (gpa + offset, host + offset);
            let large =
                g.is_multiple_of(PAGE_2M) && h.is_multiple_of(PAGE_2M) && len - offset >= PAGE_2M;
            let level = if large { 2 } else { 1 };
            let entry = h | leaf | if large { LARGE } else { 0 };
            self.set_leaf(g, level, entry)?;
            offset += span(level);
        }
        Ok(())
    }

    /// Removes every mapping in `[gpa, gpa + len)` (4 KiB aligned); a 2 MiB
    /// page partly inside is removed whole. The caller must invalidate
    /// (INVEPT) on every CPU that ran the VM before reusing the memory.
    pub fn unmap(&mut self, gpa: u64, len: u64) {
        let end = gpa.saturating_add(len).min(GUEST_PHYS_LIMIT);
        let mut at = gpa;
        while at < end {
            at = match self.leaf_slot(at) {
                Some((table, slot, level)) => {
                    self.memory.write_entry(table, slot, 0);
                    (at | (span(level) - 1)).saturating_add(1)
                }
                None => at.saturating_add(PAGE_4K) & !(PAGE_4K - 1),
            };
        }
    }

    /// Where `gpa` maps to, if anywhere.
    pub fn translate(&self, gpa: u64) -> Option<Translation> {
        let (table, slot, level) = self.leaf_slot(gpa)?;
        let entry = self.memory.read_entry(table, slot);
        let base = entry & ADDR_MASK & !(span(level) - 1);
        Some(Translation {
            host: base | (gpa & (span(level) - 1)),
            access: Access {
                write: entry & WRITE != 0,
                execute: entry & EXECUTE != 0,
            },
        })
    }

    /// The table, slot and level of the present leaf mapping `gpa`.
    fn leaf_slot(&self, gpa: u64) -> Option<(u64, usize, u32)> {
        if gpa >= GUEST_PHYS_LIMIT {
            return None;
        }
        let mut table = self.root;
        for level in (1..=4).rev() {
            let slot = index(gpa, level);
            let entry = self.memory.read_entry(table, slot);
            if entry & READ == 0 {
                return None;
            }
            if level == 1 || (level == 2 && entry & LARGE != 0) {
                return Some((table, slot, level));
            }
            table = entry & ADDR_MASK;
        }
        None
    }

    /// The first mapped 4 KiB page in `[start, end)`, skipping absent
    /// subtrees whole.
    fn first_mapped(&self, start: u64, end: u64) -> Option<u64> {
        let mut at = start;
        while at < end {
            if self.leaf_slot(at).is_some() {
                return Some(at);
            }
            at = (at | (self.hole_span(at) - 1)).saturating_add(1);
        }
        None
    }

    /// The size of the absent subtree containing the unmapped `gpa`.
    fn hole_span(&self, gpa: u64) -> u64 {
        let mut table = self.root;
        for level in (2..=4).rev() {
            let entry = self.memory.read_entry(table, index(gpa, level));
            if entry & READ == 0 {
                return span(level);
            }
            table = entry & ADDR_MASK;
        }
        PAGE_4K
    }

    /// Walks to the table at `leaf_level`, creating tables, and sets the
    /// leaf. Non-leaf entries grant everything: the leaf decides.
    fn set_leaf(&mut self, gpa: u64, leaf_level: u32, entry: u64) -> Result<(), EptError> {
        let mut table = self.root;
        for level in ((leaf_level + 1)..=4).rev() {
            let slot = index(gpa, level);
            let current = self.memory.read_entry(table, slot);
            table = if current & READ == 0 {
                let frame = self.memory.alloc_frame().ok_or(EptError::OutOfFrames)?;
                self.memory
                    .write_entry(table, slot, frame | READ | WRITE | EXECUTE);
                frame
            } else if current & LARGE != 0 {
                return Err(EptError::AlreadyMapped { gpa });
            } else {
                current & ADDR_MASK
            };
        }
        self.memory
            .write_entry(table, index(gpa, leaf_level), entry);
        Ok(())
    }

    /// Gives the memory back (for tests that inspect it).
    pub fn into_memory(self) -> M {
        self.memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::tests::FakeFrames;
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;

    #[test]
    fn ram_maps_with_2m_pages_when_both_sides_align() {
        let mut ept = Ept::new(FakeFrames::new(64)).unwrap();
        ept.map(0, 0x4000_0000, 8 * MIB, Access::RWX, RegionKind::Ram)
            .unwrap();
        let t = ept.translate(0x30_1234).unwrap();
        assert_eq!(t.host, 0x4030_1234);
        assert_eq!(t.access, Access::RWX);
        assert!(ept.translate(8 * MIB).is_none());
        // PML4, PDPT, PD: no page tables needed.
        let frames = ept.into_memory();
        assert_eq!(frames.tables.len(), 3);
        let leaves: Vec<u64> = frames
            .tables
            .values()
            .flatten()
            .copied()
            .filter(|e| e & LARGE != 0)
            .collect();
        assert_eq!(leaves.len(), 4);
        assert!(
            leaves
                .iter()
                .all(|e| e & 0x7f == READ | WRITE | EXECUTE | (6 << 3))
        );
    }

    #[test]
    fn misaligned_host_memory_falls_back_to_4k_pages() {
        let mut ept = Ept::new(FakeFrames::new(64)).unwrap();
        ept.map(0, 0x4000_1000, 2 * MIB, Access::RWX, RegionKind::Ram)
            .unwrap();
        assert_eq!(ept.translate(2 * MIB - 1).unwrap().host, 0x4020_0fff);
        assert_eq!(ept.into_memory().tables.len(), 4);
    }

    #[test]
    fn channels_and_devices_follow_the_memory_type_policy() {
        let mut ept = Ept::new(FakeFrames::new(64)).unwrap();
        ept.map(
            0x80_0000_0000 - 0x1000,
            0x9000,
            0x1000,
            Access::R,
            RegionKind::Channel,
        )
        .unwrap();
        ept.map(
            0xfec0_0000,
            0xfec0_0000,
            0x1000,
            Access::RW,
            RegionKind::Device,
        )
        .unwrap();
        let frames = ept.into_memory();
        let leaves: Vec<u64> = frames
            .tables
            .values()
            .flatten()
            .copied()
            .filter(|e| e & ADDR_MASK == 0x9000 || e & ADDR_MASK == 0xfec0_0000)
            .collect();
        assert!(leaves.contains(&(0x9000 | READ | IGNORE_PAT | (6 << 3))));
        assert!(leaves.contains(&(0xfec0_0000 | READ | WRITE | IGNORE_PAT)));
    }

    #[test]
    fn refuses_overlaps_bad_ranges_and_reports_exhaustion() {
        let mut ept = Ept::new(FakeFrames::new(64)).unwrap();
        ept.map(2 * MIB, 0, 2 * MIB, Access::RWX, RegionKind::Ram)
            .unwrap();
        assert_eq!(
            ept.map(4 * MIB - 0x1000, 0, 0x2000, Access::RWX, RegionKind::Ram),
            Err(EptError::AlreadyMapped {
                gpa: 4 * MIB - 0x1000
            })
        );
        for (gpa, host, len) in [
            (0x800, 0, 0x1000),
            (0, 0x800, 0x1000),
            (0, 0, 0),
            (GUEST_PHYS_LIMIT - 0x1000, 0, 0x2000),
            (!0xfffu64, 0, 0x1000),
            (0, !0xfffu64, 0x2000),
        ] {
            assert!(
                matches!(
                    ept.map(gpa, host, len, Access::RWX, RegionKind::Ram),
                    Err(EptError::BadRange { .. })
                ),
                "{gpa:#x} {host:#x} {len:#x}"
            );
        }
        let mut tiny = Ept::new(FakeFrames::new(2)).unwrap();
        assert_eq!(
            tiny.map(0, 0, 0x1000, Access::RWX, RegionKind::Ram),
            Err(EptError::OutOfFrames)
        );
    }

    #[test]
    fn unmap_removes_exactly_the_range() {
        let mut ept = Ept::new(FakeFrames::new(64)).unwrap();
        ept.map(0, 0x1000_0000, 4 * MIB, Access::RWX, RegionKind::Ram)
            .unwrap();
        ept.map(
            0x1_0000_0000,
            0x2000_0000,
            0x3000,
            Access::RW,
            RegionKind::Channel,
        )
        .unwrap();
        ept.unmap(0x1_0000_0000, 0x3000);
        assert!(ept.translate(0x1_0000_2000).is_none());
        assert!(ept.translate(0).is_some() && ept.translate(4 * MIB - 1).is_some());
        // The window can be mapped again.
        ept.map(
            0x1_0000_0000,
            0x3000_0000,
            0x1000,
            Access::RW,
            RegionKind::Channel,
        )
        .unwrap();
        assert_eq!(ept.translate(0x1_0000_0010).unwrap().host, 0x3000_0010);
    }

    proptest::proptest! {
        /// Every mapped guest page translates to its host page at the
        /// right offset; nothing else translates.
        #[test]
        fn translates_exactly_what_was_mapped(
            ranges in proptest::collection::vec((0u64..1024, 0u64..1024, 1u64..700), 1..5)
        ) {
            let mut ept = Ept::new(FakeFrames::new(4096)).unwrap();
            let mut mapped: Vec<(u64, u64, u64)> = Vec::new();
            for (gpage, hpage, pages) in ranges {
                let (gpa, host, len) = (gpage * PAGE_4K, 0x4000_0000 + hpage * PAGE_4K, pages * PAGE_4K);
                let overlaps = mapped.iter().any(|&(g, _, l)| gpa < g + l && g < gpa + len);
                let result = ept.map(gpa, host, len, Access::RWX, RegionKind::Ram);
                proptest::prop_assert_eq!(result.is_ok(), !overlaps);
                if result.is_ok() {
                    mapped.push((gpa, host, len));
                }
            }
            for probe in (0..1800u64).map(|p| p * PAGE_4K + 0x18) {
                let expect = mapped.iter().find(|&&(g, _, l)| g <= probe && probe < g + l).map(|&(g, h, _)| h + probe - g);
                proptest::prop_assert_eq!(ept.translate(probe).map(|t| t.host), expect);
            }
        }
    }
}
