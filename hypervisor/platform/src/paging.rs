//! x86-64 4-level page tables (SDM Vol. 3A, 5.5), built through a narrow
//! memory trait so the builder runs, and is tested, on the host.
//!
//! Each node builds its own tables with this: identity mappings of exactly
//! what the node may touch (its memory, its channels, the image read-only),
//! so a stray access anywhere else faults (hardware-enforced isolation).
//!
//! ```text
//!  virtual address bits: 47..39 PML4 | 38..30 PDPT | 29..21 PD | 20..12 PT | 11..0
//!  leaf at PD level with PS = a 2 MiB page, at PT level = a 4 KiB page
//! ```
//!
//! Intermediate entries are present + writable and executable; the leaf
//! entry alone decides the access rights (SDM 5.6: rights combine as the
//! most restrictive along the walk, so permissive upper levels defer to the
//! leaf).

/// Bytes in a 4 KiB page.
pub const PAGE_4K: u64 = 4096;
/// Bytes in a 2 MiB page.
pub const PAGE_2M: u64 = 2 << 20;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
/// Physical-address bits of an entry (bits 51:12; SDM Table 5-20).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// The highest canonical lower-half address + 1 (48-bit linear addresses).
const LOWER_HALF_END: u64 = 1 << 47;

/// Access rights and caching of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags {
    /// Writes allowed (R/W set).
    pub writable: bool,
    /// Instruction fetches allowed (XD clear).
    pub executable: bool,
    /// Uncached (PCD|PWT): for device registers such as the local APIC.
    pub uncached: bool,
}

impl Flags {
    /// Data the node reads and writes: its own memory.
    pub const READ_WRITE: Flags = Flags {
        writable: true,
        executable: false,
        uncached: false,
    };
    /// Data the node only reads: the global boot state, read-only channels.
    pub const READ_ONLY: Flags = Flags {
        writable: false,
        executable: false,
        uncached: false,
    };
    /// The hypervisor's code.
    pub const CODE: Flags = Flags {
        writable: false,
        executable: true,
        uncached: false,
    };
    /// Memory-mapped device registers.
    pub const DEVICE: Flags = Flags {
        writable: true,
        executable: false,
        uncached: true,
    };

    fn leaf_bits(self) -> u64 {
        let mut bits = PRESENT;
        if self.writable {
            bits |= WRITABLE;
        }
        if !self.executable {
            bits |= NO_EXECUTE;
        }
        if self.uncached {
            bits |= CACHE_DISABLE | WRITE_THROUGH;
        }
        bits
    }

    fn from_leaf(entry: u64) -> Flags {
        Flags {
            writable: entry & WRITABLE != 0,
            executable: entry & NO_EXECUTE == 0,
            uncached: entry & CACHE_DISABLE != 0,
        }
    }
}

/// Where the tables live: frames the builder may allocate and fill.
pub trait TableMemory {
    /// A zeroed, 4 KiB aligned physical frame, or `None` when out of frames.
    fn alloc_frame(&mut self) -> Option<u64>;
    /// Entry `index` (0..512) of the table at physical address `table`.
    fn read_entry(&self, table: u64, index: usize) -> u64;
    /// Sets entry `index` (0..512) of the table at `table`.
    fn write_entry(&mut self, table: u64, index: usize, entry: u64);
}

impl<T: TableMemory> TableMemory for &mut T {
    fn alloc_frame(&mut self) -> Option<u64> {
        (**self).alloc_frame()
    }
    fn read_entry(&self, table: u64, index: usize) -> u64 {
        (**self).read_entry(table, index)
    }
    fn write_entry(&mut self, table: u64, index: usize, entry: u64) {
        (**self).write_entry(table, index, entry)
    }
}

/// Why a mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Start or length not 4 KiB aligned, or the range wraps or leaves the
    /// lower canonical half.
    BadRange {
        /// First byte asked for.
        start: u64,
        /// Length asked for, in bytes.
        len: u64,
    },
    /// Part of the range is mapped already: two plan items overlap.
    AlreadyMapped {
        /// The first address found mapped.
        addr: u64,
    },
    /// The frame supply ran out.
    OutOfFrames,
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapError::BadRange { start, len } => write!(
                f,
                "cannot map {len:#x} bytes at {start:#x}: not 4 KiB aligned or outside the lower half"
            ),
            MapError::AlreadyMapped { addr } => write!(f, "address {addr:#x} is mapped twice"),
            MapError::OutOfFrames => write!(f, "out of page-table frames"),
        }
    }
}

/// The end of a page walk: a mapping, or a hole of `span` bytes (aligned)
/// where no table exists at some level.
enum Walk {
    Mapped(u64, Flags),
    Hole { span: u64 },
}

/// A set of page tables under one PML4.
pub struct PageTables<M: TableMemory> {
    root: u64,
    memory: M,
}

fn index(addr: u64, level: u32) -> usize {
    // 9 bits per level above the 12-bit page offset; the mask keeps it < 512.
    ((addr >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

impl<M: TableMemory> PageTables<M> {
    /// Empty tables: nothing mapped.
    pub fn new(mut memory: M) -> Result<Self, MapError> {
        let root = memory.alloc_frame().ok_or(MapError::OutOfFrames)?;
        Ok(Self { root, memory })
    }

    /// The PML4's physical address (the CR3 value).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Identity-maps `[start, start + len)`, with 2 MiB pages where the
    /// range allows and 4 KiB pages at unaligned edges. Fails without
    /// changing an existing mapping if any page is mapped already (tables it
    /// allocated on the way stay, empty).
    pub fn identity_map(&mut self, start: u64, len: u64, flags: Flags) -> Result<(), MapError> {
        let end = start
            .checked_add(len)
            .filter(|&end| end <= LOWER_HALF_END)
            .ok_or(MapError::BadRange { start, len })?;
        if !start.is_multiple_of(PAGE_4K) || !len.is_multiple_of(PAGE_4K) {
            return Err(MapError::BadRange { start, len });
        }
        self.check_unmapped(start, end)?;
        let mut addr = start;
        while addr < end {
            let big = addr.is_multiple_of(PAGE_2M) && end - addr >= PAGE_2M;
            if big {
                self.set_leaf(addr, 2, addr | flags.leaf_bits() | HUGE)?;
                addr += PAGE_2M;
            } else {
                self.set_leaf(addr, 1, addr | flags.leaf_bits())?;
                addr += PAGE_4K;
            }
        }
        Ok(())
    }

    /// The physical address and rights `addr` maps to, if it is mapped.
    pub fn translate(&self, addr: u64) -> Option<(u64, Flags)> {
        match self.walk(addr) {
            Walk::Mapped(phys, flags) => Some((phys, flags)),
            Walk::Hole { .. } => None,
        }
    }

    fn walk(&self, addr: u64) -> Walk {
        let mut table = self.root;
        for level in (1..=4).rev() {
            let entry = self.memory.read_entry(table, index(addr, level));
            let span = PAGE_4K << (9 * (level - 1));
            if entry & PRESENT == 0 {
                return Walk::Hole { span };
            }
            if level == 1 || (level == 2 && entry & HUGE != 0) {
                let base = entry & ADDR_MASK & !(span - 1);
                return Walk::Mapped(base | (addr & (span - 1)), Flags::from_leaf(entry));
            }
            table = entry & ADDR_MASK;
        }
        Walk::Hole { span: PAGE_4K }
    }

    /// Checks that nothing in `[start, end)` is mapped, skipping whole
    /// unmapped subtrees so large ranges cost a few walks.
    fn check_unmapped(&self, start: u64, end: u64) -> Result<(), MapError> {
        let mut addr = start;
        while addr < end {
            match self.walk(addr) {
                Walk::Mapped(..) => return Err(MapError::AlreadyMapped { addr }),
                Walk::Hole { span } => addr = (addr | (span - 1)).saturating_add(1),
            }
        }
        Ok(())
    }

    /// Walks from the PML4 down to the table at `leaf_level` (2 = PD,
    /// 1 = PT), creating missing tables, and sets the leaf entry.
    fn set_leaf(&mut self, addr: u64, leaf_level: u32, entry: u64) -> Result<(), MapError> {
        let mut table = self.root;
        for level in ((leaf_level + 1)..=4).rev() {
            let slot = index(addr, level);
            let current = self.memory.read_entry(table, slot);
            table = if current & PRESENT == 0 {
                let frame = self.memory.alloc_frame().ok_or(MapError::OutOfFrames)?;
                self.memory
                    .write_entry(table, slot, frame | PRESENT | WRITABLE);
                frame
            } else if current & HUGE != 0 {
                return Err(MapError::AlreadyMapped { addr });
            } else {
                current & ADDR_MASK
            };
        }
        let slot = index(addr, leaf_level);
        if self.memory.read_entry(table, slot) & PRESENT != 0 {
            return Err(MapError::AlreadyMapped { addr });
        }
        self.memory.write_entry(table, slot, entry);
        Ok(())
    }

    /// Gives the memory back (for tests that inspect it).
    pub fn into_memory(self) -> M {
        self.memory
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    /// Frames as a map from address to 512 entries; records allocations.
    #[derive(Default)]
    pub(crate) struct FakeFrames {
        next: u64,
        limit: usize,
        pub(crate) tables: BTreeMap<u64, Vec<u64>>,
    }

    impl FakeFrames {
        pub(crate) fn new(limit: usize) -> Self {
            Self {
                next: 0x100_0000,
                limit,
                tables: BTreeMap::new(),
            }
        }
    }

    impl TableMemory for FakeFrames {
        fn alloc_frame(&mut self) -> Option<u64> {
            if self.tables.len() >= self.limit {
                return None;
            }
            let frame = self.next;
            self.next += PAGE_4K;
            self.tables.insert(frame, std::vec![0; 512]);
            Some(frame)
        }
        fn read_entry(&self, table: u64, index: usize) -> u64 {
            self.tables[&table][index]
        }
        fn write_entry(&mut self, table: u64, index: usize, entry: u64) {
            self.tables.get_mut(&table).unwrap()[index] = entry;
        }
    }

    #[test]
    fn maps_aligned_range_with_2m_pages_and_edges_with_4k() {
        let mut pt = PageTables::new(FakeFrames::new(64)).unwrap();
        // 4 KiB below a 2 MiB boundary up to 4 KiB past the next one.
        pt.identity_map(PAGE_2M - PAGE_4K, PAGE_2M + 2 * PAGE_4K, Flags::READ_WRITE)
            .unwrap();
        assert_eq!(
            pt.translate(PAGE_2M - PAGE_4K + 8),
            Some((PAGE_2M - PAGE_4K + 8, Flags::READ_WRITE))
        );
        assert_eq!(
            pt.translate(PAGE_2M + 0x12345).unwrap().0,
            PAGE_2M + 0x12345
        );
        assert!(pt.translate(2 * PAGE_2M + PAGE_4K).is_none());
        assert!(pt.translate(PAGE_2M - 2 * PAGE_4K).is_none());
        // PML4 + PDPT + PD + two PTs (one per unaligned edge).
        assert_eq!(pt.into_memory().tables.len(), 5);
    }

    #[test]
    fn leaf_bits_follow_flags() {
        let mut pt = PageTables::new(FakeFrames::new(64)).unwrap();
        pt.identity_map(0x1000, 0x1000, Flags::CODE).unwrap();
        pt.identity_map(0xfee0_0000, 0x1000, Flags::DEVICE).unwrap();
        pt.identity_map(0x40_0000, PAGE_2M, Flags::READ_ONLY)
            .unwrap();
        assert_eq!(pt.translate(0x1000).unwrap().1, Flags::CODE);
        assert_eq!(pt.translate(0xfee0_0030).unwrap().1, Flags::DEVICE);
        assert_eq!(pt.translate(0x50_0000).unwrap().1, Flags::READ_ONLY);
        let mem = pt.into_memory();
        let raw: Vec<u64> = mem.tables.values().flatten().copied().collect();
        // Exactly one 2 MiB leaf: present, no write, NX, PS.
        let huge: Vec<_> = raw.iter().filter(|e| *e & HUGE != 0).collect();
        assert_eq!(huge, [&(0x40_0000 | PRESENT | HUGE | NO_EXECUTE)]);
    }

    #[test]
    fn refuses_overlap_and_bad_ranges() {
        let mut pt = PageTables::new(FakeFrames::new(64)).unwrap();
        pt.identity_map(0x20_0000, 0x40_0000, Flags::READ_WRITE)
            .unwrap();
        assert_eq!(
            pt.identity_map(0x5f_f000, 0x2000, Flags::READ_ONLY),
            Err(MapError::AlreadyMapped { addr: 0x5f_f000 })
        );
        assert_eq!(
            pt.identity_map(0x1001, 0x1000, Flags::READ_ONLY),
            Err(MapError::BadRange {
                start: 0x1001,
                len: 0x1000
            })
        );
        assert!(matches!(
            pt.identity_map(u64::MAX - 0xfff, 0x1000, Flags::READ_ONLY),
            Err(MapError::BadRange { .. })
        ));
        assert!(matches!(
            pt.identity_map(LOWER_HALF_END, 0x1000, Flags::READ_ONLY),
            Err(MapError::BadRange { .. })
        ));
    }

    #[test]
    fn running_out_of_frames_is_an_error() {
        let mut pt = PageTables::new(FakeFrames::new(2)).unwrap();
        assert_eq!(
            pt.identity_map(0, 0x1000, Flags::READ_WRITE),
            Err(MapError::OutOfFrames)
        );
    }

    proptest::proptest! {
        /// Whatever is mapped translates to itself with its flags, and
        /// nothing outside the mapped ranges translates.
        #[test]
        fn identity_maps_exactly_what_was_asked(
            ranges in proptest::collection::vec((0u64..2048, 1u64..1200), 1..6)
        ) {
            let mut pt = PageTables::new(FakeFrames::new(4096)).unwrap();
            let mut mapped: Vec<(u64, u64)> = Vec::new();
            for (page, pages) in ranges {
                let (start, len) = (page * PAGE_4K, pages * PAGE_4K);
                let overlaps = mapped.iter().any(|&(s, l)| start < s + l && s < start + len);
                let result = pt.identity_map(start, len, Flags::READ_WRITE);
                proptest::prop_assert_eq!(result.is_ok(), !overlaps);
                if result.is_ok() {
                    mapped.push((start, len));
                }
            }
            for probe in (0..3300u64).map(|p| p * PAGE_4K + 0x10) {
                let inside = mapped.iter().any(|&(s, l)| s <= probe && probe < s + l);
                let got = pt.translate(probe);
                proptest::prop_assert_eq!(got.is_some(), inside);
                if let Some((phys, _)) = got {
                    proptest::prop_assert_eq!(phys, probe);
                }
            }
        }
    }
}
