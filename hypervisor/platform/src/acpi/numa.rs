//! NUMA facts from firmware: the SRAT (which proximity domain each CPU and
//! memory range belongs to, ACPI 6.5, 5.2.16) and the SLIT (relative
//! distances between domains, ACPI 6.5, 5.2.17).
//!
//! Atoll groups CPUs into nodes by these domains by default, so both tables
//! are parsed by hand from their bytes, as hostile input like the MADT: every
//! entry's length is checked against its type and the table, and a damaged
//! table is an [`Error`] value, never a panic.
//!
//! Both tables are optional. A machine without NUMA (Bochs, QEMU without
//! `-numa`) has no SRAT: [`Tables::srat`] then returns `Ok(None)` and all
//! memory is one domain. QEMU emits a SLIT only when given `-numa dist`.
//!
//! ```text
//! SRAT (5.2.16)                       SLIT (5.2.17)
//!  0  header (36 bytes)                0  header (36 bytes)
//! 36  u32 reserved, 1 for old OSes    36  u64 N, number of localities
//! 40  u64 reserved                    44  u8 distance[N][N], row-major:
//! 48  affinity structures:                distance[i][j] at 44 + i*N + j
//!       u8 type, u8 length, body...
//! ```

use super::{Error, HEADER_LEN, PhysMemory, Signature, Tables};
use crate::HostPhysAddr;
use crate::bytes::{slice_at, u8_at, u32_at, u64_at};

/// Most memory ranges Atoll records from the SRAT. Firmware lists a few per
/// domain (split around the legacy and PCI holes), plus hot-plug windows.
pub const MAX_MEMORY_RANGES: usize = 64;
/// Most CPUs Atoll records from the SRAT, as from the MADT.
pub const MAX_CPUS: usize = super::MAX_CPUS;

/// A proximity domain as the SRAT numbers it. The SLIT's locality `i` is
/// proximity domain `i` (ACPI 6.5, 5.2.17: localities are numbered like the
/// `_PXM` values, which are the SRAT's domains).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ProximityDomain(pub u32);

impl core::fmt::Display for ProximityDomain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An enabled processor and its domain (SRAT structure type 0 or 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuAffinity {
    /// The local APIC ID (type 0) or x2APIC ID (type 2); match it against
    /// the MADT's [`super::Cpu::apic_id`].
    pub apic_id: u32,
    /// Its proximity domain.
    pub domain: ProximityDomain,
    /// Listed by an x2APIC affinity structure (type 2).
    pub x2apic: bool,
}

/// An enabled memory range and its domain (SRAT structure type 1).
///
/// The SRAT says where memory *would* be close to, not that it is RAM: the
/// boot loader's memory map says what is usable. A hot-pluggable range is
/// usually a window for memory that is not there yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryAffinity {
    /// First byte.
    pub base: HostPhysAddr,
    /// Bytes; never 0 (empty ranges are dropped) and `base + len` does not
    /// overflow.
    pub len: u64,
    /// Its proximity domain.
    pub domain: ProximityDomain,
    /// Flags bit 1: memory may be added or removed at run time.
    pub hot_pluggable: bool,
    /// Flags bit 2: the range is non-volatile memory.
    pub non_volatile: bool,
}

impl MemoryAffinity {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        // `Srat::parse` rejects ranges whose end overflows.
        self.base.0.saturating_add(self.len)
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: HostPhysAddr) -> bool {
        self.base <= addr && addr.0 < self.end()
    }
}

/// What Atoll takes from the SRAT: the enabled processor and memory
/// affinities, in table order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Srat {
    /// One entry per APIC ID. The SRAT may list CPUs the MADT does not
    /// enable (QEMU lists every possible CPU, present or not, as enabled),
    /// so join the two tables by APIC ID.
    pub cpus: heapless::Vec<CpuAffinity, MAX_CPUS>,
    /// Enabled memory ranges, in table order.
    pub memory: heapless::Vec<MemoryAffinity, MAX_MEMORY_RANGES>,
}

/// SRAT layout facts (ACPI 6.5, 5.2.16, tables 5.58-5.66).
mod srat {
    /// The affinity structures start after the header and 12 reserved bytes.
    pub const ENTRIES: usize = 48;
    /// Table revision from which the processor structure's proximity domain
    /// has 32 bits. Revision 1 (ACPI 2.0/3.0) defined only bits 7:0, and
    /// old firmware leaves garbage in the bytes that later became bits
    /// 31:8; Linux masks them the same way (`acpi_srat_revision`).
    pub const WIDE_DOMAINS_REVISION: u8 = 2;

    /// Processor Local APIC/SAPIC Affinity Structure (5.2.16.1).
    pub mod local_apic {
        pub const TYPE: u8 = 0;
        pub const LEN: usize = 16;
        /// Proximity domain bits 7:0.
        pub const DOMAIN_LO: usize = 2;
        pub const APIC_ID: usize = 3;
        pub const FLAGS: usize = 4;
        /// Proximity domain bits 31:8, three bytes.
        pub const DOMAIN_HI: usize = 9;
    }

    /// Memory Affinity Structure (5.2.16.2).
    pub mod memory {
        pub const TYPE: u8 = 1;
        pub const LEN: usize = 40;
        pub const DOMAIN: usize = 2;
        /// Base address low then high dword: one little-endian u64.
        pub const BASE: usize = 8;
        pub const LENGTH: usize = 16;
        pub const FLAGS: usize = 28;
        pub const HOT_PLUGGABLE: u32 = 1 << 1;
        pub const NON_VOLATILE: u32 = 1 << 2;
    }

    /// Processor Local x2APIC Affinity Structure (5.2.16.3).
    pub mod local_x2apic {
        pub const TYPE: u8 = 2;
        pub const LEN: usize = 24;
        pub const DOMAIN: usize = 4;
        pub const X2APIC_ID: usize = 8;
        pub const FLAGS: usize = 12;
    }

    /// Flags bit 0 in all three structures: the entry is in use. Firmware
    /// lists disabled entries as padding (QEMU adds zeroed memory entries).
    pub const ENABLED: u32 = 1;
}

const _: () = assert!(srat::local_apic::DOMAIN_HI + 3 <= srat::local_apic::LEN);
const _: () = assert!(srat::memory::FLAGS + 4 <= srat::memory::LEN);
const _: () = assert!(srat::local_x2apic::FLAGS + 4 <= srat::local_x2apic::LEN);

/// One recognised, enabled SRAT structure.
enum Affinity {
    Cpu(CpuAffinity),
    Memory(MemoryAffinity),
}

impl Srat {
    /// Parses a checked SRAT (as [`Tables::find`] returns it). Structures of
    /// other types (GICC, generic initiator, ...) are skipped by their
    /// length; disabled ones are ignored, as are empty memory ranges.
    pub fn parse(table: &[u8]) -> Result<Self, Error> {
        let signature = Signature(*b"SRAT");
        if table.len() < srat::ENTRIES {
            return Err(Error::BadLength {
                signature,
                len: u32::try_from(table.len()).unwrap_or(u32::MAX),
            });
        }
        let wide_domains = u8_at(table, 8).is_some_and(|r| r >= srat::WIDE_DOMAINS_REVISION);
        let mut result = Srat::default();
        let mut offset = srat::ENTRIES;
        while offset < table.len() {
            let bad = |reason| Error::BadSratEntry { offset, reason };
            let len = usize::from(u8_at(table, offset + 1).ok_or(bad("no length byte"))?);
            if len < 2 {
                // A zero length would never advance: an endless loop.
                return Err(bad("length under 2"));
            }
            let entry = slice_at(table, offset, len).ok_or(bad("runs past the table"))?;
            match Self::entry(entry, wide_domains).map_err(bad)? {
                Some(Affinity::Cpu(cpu)) => result.add_cpu(cpu).map_err(bad)?,
                Some(Affinity::Memory(mem)) => {
                    result.memory.push(mem).map_err(|_| Error::TooMany {
                        table: signature,
                        what: "memory ranges",
                        limit: MAX_MEMORY_RANGES,
                    })?
                }
                None => {}
            }
            offset += len;
        }
        Ok(result)
    }

    /// Decodes one structure: `Ok(None)` for a disabled or unknown one.
    fn entry(entry: &[u8], wide_domains: bool) -> Result<Option<Affinity>, &'static str> {
        let Some(kind) = u8_at(entry, 0) else {
            return Ok(None);
        };
        let min_len = match kind {
            srat::local_apic::TYPE => srat::local_apic::LEN,
            srat::memory::TYPE => srat::memory::LEN,
            srat::local_x2apic::TYPE => srat::local_x2apic::LEN,
            _ => return Ok(None),
        };
        let short = "shorter than its type requires";
        // The lengths are exact in 6.5; a longer entry is accepted (its
        // tail unread) so a future revision that grows one still parses.
        if entry.len() < min_len {
            return Err(short);
        }
        let enabled = |at| {
            u32_at(entry, at)
                .map(|f| f & srat::ENABLED != 0)
                .ok_or(short)
        };
        match kind {
            srat::local_apic::TYPE => {
                if !enabled(srat::local_apic::FLAGS)? {
                    return Ok(None);
                }
                let lo = u32::from(u8_at(entry, srat::local_apic::DOMAIN_LO).ok_or(short)?);
                let hi = if wide_domains {
                    let b = |i| u8_at(entry, srat::local_apic::DOMAIN_HI + i).ok_or(short);
                    u32::from_le_bytes([b(0)?, b(1)?, b(2)?, 0])
                } else {
                    0
                };
                Ok(Some(Affinity::Cpu(CpuAffinity {
                    apic_id: u8_at(entry, srat::local_apic::APIC_ID).ok_or(short)?.into(),
                    domain: ProximityDomain(hi << 8 | lo),
                    x2apic: false,
                })))
            }
            srat::local_x2apic::TYPE => {
                if !enabled(srat::local_x2apic::FLAGS)? {
                    return Ok(None);
                }
                Ok(Some(Affinity::Cpu(CpuAffinity {
                    apic_id: u32_at(entry, srat::local_x2apic::X2APIC_ID).ok_or(short)?,
                    domain: ProximityDomain(
                        u32_at(entry, srat::local_x2apic::DOMAIN).ok_or(short)?,
                    ),
                    x2apic: true,
                })))
            }
            _ => {
                let flags = u32_at(entry, srat::memory::FLAGS).ok_or(short)?;
                let len = u64_at(entry, srat::memory::LENGTH).ok_or(short)?;
                if flags & srat::ENABLED == 0 || len == 0 {
                    return Ok(None);
                }
                let base = u64_at(entry, srat::memory::BASE).ok_or(short)?;
                if base.checked_add(len).is_none() {
                    return Err("memory range ends past 2^64");
                }
                let mut domain = u32_at(entry, srat::memory::DOMAIN).ok_or(short)?;
                if !wide_domains {
                    domain &= 0xff;
                }
                Ok(Some(Affinity::Memory(MemoryAffinity {
                    base: HostPhysAddr(base),
                    len,
                    domain: ProximityDomain(domain),
                    hot_pluggable: flags & srat::memory::HOT_PLUGGABLE != 0,
                    non_volatile: flags & srat::memory::NON_VOLATILE != 0,
                })))
            }
        }
    }

    /// Records a CPU once. Firmware may list one CPU twice (a local APIC and
    /// an x2APIC structure); that is fine if both name the same domain.
    fn add_cpu(&mut self, cpu: CpuAffinity) -> Result<(), &'static str> {
        match self.cpus.iter().find(|c| c.apic_id == cpu.apic_id) {
            Some(seen) if seen.domain == cpu.domain => Ok(()),
            Some(_) => Err("a CPU listed again in a different domain"),
            None => self
                .cpus
                .push(cpu)
                .map_err(|_| "more CPUs than Atoll records (MAX_CPUS)"),
        }
    }

    /// The domain of the CPU with this APIC or x2APIC ID.
    pub fn domain_of_apic(&self, apic_id: u32) -> Option<ProximityDomain> {
        self.cpus
            .iter()
            .find(|c| c.apic_id == apic_id)
            .map(|c| c.domain)
    }

    /// The domain of the memory at `addr`, if an enabled range covers it.
    pub fn domain_of_address(&self, addr: HostPhysAddr) -> Option<ProximityDomain> {
        self.memory
            .iter()
            .find(|m| m.contains(addr))
            .map(|m| m.domain)
    }
}

/// The SLIT: distances between localities (proximity domains), borrowed
/// from the table bytes.
///
/// A distance is relative: 10 is a locality's distance to itself, 20 means
/// twice as far; 255 means unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slit<'t> {
    localities: usize,
    /// `localities * localities` bytes, row-major.
    matrix: &'t [u8],
}

/// SLIT layout facts (ACPI 6.5, 5.2.17, table 5.67).
mod slit {
    pub const LOCALITIES: usize = 36;
    pub const MATRIX: usize = 44;
    /// A locality's distance to itself.
    pub const LOCAL: u8 = 10;
    /// Values 0-9 are reserved.
    pub const RESERVED_BELOW: u8 = 10;
}

impl<'t> Slit<'t> {
    /// Parses a checked SLIT: the matrix must fit in the table, every
    /// diagonal entry must be 10 and no entry may be a reserved 0-9.
    ///
    /// Linux drops a SLIT with such values and uses default distances; a
    /// caller may do the same with the error this returns.
    pub fn parse(table: &'t [u8]) -> Result<Self, Error> {
        let len = table.len();
        let localities_raw = u64_at(table, slit::LOCALITIES).ok_or(Error::BadLength {
            signature: Signature(*b"SLIT"),
            len: u32::try_from(len).unwrap_or(u32::MAX),
        })?;
        let bad_size = Error::BadSlitSize {
            localities: localities_raw,
            len,
        };
        let localities = usize::try_from(localities_raw).map_err(|_| bad_size)?;
        let cells = localities.checked_mul(localities).ok_or(bad_size)?;
        let matrix = slice_at(table, slit::MATRIX, cells).ok_or(bad_size)?;
        let this = Slit { localities, matrix };
        for from in 0..localities {
            for to in 0..localities {
                let distance = this.distance_at(from, to).ok_or(bad_size)?;
                let ok = if from == to {
                    distance == slit::LOCAL
                } else {
                    distance >= slit::RESERVED_BELOW
                };
                if !ok {
                    return Err(Error::BadSlitDistance { from, to, distance });
                }
            }
        }
        Ok(this)
    }

    /// The number of localities (the matrix is this many rows and columns).
    pub fn localities(&self) -> usize {
        self.localities
    }

    /// The distance from one domain to another; `None` when either is not a
    /// locality of this table.
    pub fn distance(&self, from: ProximityDomain, to: ProximityDomain) -> Option<u8> {
        self.distance_at(usize::try_from(from.0).ok()?, usize::try_from(to.0).ok()?)
    }

    fn distance_at(&self, from: usize, to: usize) -> Option<u8> {
        if from >= self.localities || to >= self.localities {
            return None;
        }
        let index = from.checked_mul(self.localities)?.checked_add(to)?;
        self.matrix.get(index).copied()
    }

    /// The whole matrix, row-major (`localities * localities` bytes).
    pub fn matrix(&self) -> &'t [u8] {
        self.matrix
    }
}

impl<'m, M: PhysMemory> Tables<'m, M> {
    /// The first table with this signature, `None` when there is none.
    fn optional(&self, signature: [u8; 4]) -> Result<Option<&'m [u8]>, Error> {
        match self.find(signature) {
            Ok(table) => Ok(Some(table)),
            Err(Error::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The SRAT's CPU and memory affinities; `Ok(None)` on a machine without
    /// an SRAT, an error for a damaged one.
    pub fn srat(&self) -> Result<Option<Srat>, Error> {
        self.optional(*b"SRAT")?.map(Srat::parse).transpose()
    }

    /// The SLIT's distance matrix; `Ok(None)` on a machine without a SLIT,
    /// an error for a damaged one.
    pub fn slit(&self) -> Result<Option<Slit<'m>>, Error> {
        self.optional(*b"SLIT")?.map(Slit::parse).transpose()
    }
}

// Keep the header size the parsers rely on in one place.
const _: () = assert!(HEADER_LEN == 36 && srat::ENTRIES == HEADER_LEN + 12);
const _: () = assert!(slit::LOCALITIES == HEADER_LEN && slit::MATRIX == HEADER_LEN + 8);

#[cfg(test)]
mod tests {
    use super::super::tests::{FakeMemory, fix_checksum, layout, rsdp_v2, table};
    use super::*;
    use crate::multiboot2::RsdpCopy;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    const ENABLED: u32 = 1;
    const HOT_PLUGGABLE: u32 = 2;
    const NON_VOLATILE: u32 = 4;

    fn local_apic(domain: u32, apic_id: u8, flags: u32) -> Vec<u8> {
        let d = domain.to_le_bytes();
        let mut e = vec![0, 16, d[0], apic_id];
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&[0, d[1], d[2], d[3]]); // SAPIC EID, domain 31:8
        e.extend_from_slice(&[0; 4]); // clock domain
        e
    }

    fn memory(domain: u32, base: u64, len: u64, flags: u32) -> Vec<u8> {
        let mut e = vec![1, 40];
        e.extend_from_slice(&domain.to_le_bytes());
        e.extend_from_slice(&[0; 2]);
        e.extend_from_slice(&base.to_le_bytes());
        e.extend_from_slice(&len.to_le_bytes());
        e.extend_from_slice(&[0; 4]);
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        e
    }

    fn local_x2apic(domain: u32, x2apic_id: u32, flags: u32) -> Vec<u8> {
        let mut e = vec![2, 24, 0, 0];
        e.extend_from_slice(&domain.to_le_bytes());
        e.extend_from_slice(&x2apic_id.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&[0; 8]); // clock domain, reserved
        e
    }

    /// An SRAT of this revision around these structures.
    fn srat_table(revision: u8, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 8]);
        body.extend(entries.iter().flatten());
        let mut t = table(b"SRAT", &body);
        t[8] = revision;
        fix_checksum(&mut t, 9);
        t
    }

    fn slit_table(localities: u64, matrix: &[u8]) -> Vec<u8> {
        let mut body = localities.to_le_bytes().to_vec();
        body.extend_from_slice(matrix);
        table(b"SLIT", &body)
    }

    /// Memory holding these tables and an XSDT listing them; and the RSDP.
    fn machine(tables: &[Vec<u8>]) -> (FakeMemory, Vec<u8>) {
        let (_, addrs) = layout(tables);
        let xsdt: Vec<u8> = addrs.iter().flat_map(|a| a.to_le_bytes()).collect();
        let mut all = tables.to_vec();
        all.push(table(b"XSDT", &xsdt));
        let (mem, addrs) = layout(&all);
        (mem, rsdp_v2(*addrs.last().unwrap()))
    }

    fn cpu(apic_id: u32, domain: u32, x2apic: bool) -> CpuAffinity {
        CpuAffinity {
            apic_id,
            domain: ProximityDomain(domain),
            x2apic,
        }
    }

    fn range(domain: u32, base: u64, len: u64, flags: u32) -> MemoryAffinity {
        MemoryAffinity {
            base: HostPhysAddr(base),
            len,
            domain: ProximityDomain(domain),
            hot_pluggable: flags & HOT_PLUGGABLE != 0,
            non_volatile: flags & NON_VOLATILE != 0,
        }
    }

    #[test]
    fn reads_enabled_cpus_and_memory_of_all_three_types() {
        let t = srat_table(
            3,
            &[
                local_apic(0x0102_0304, 7, ENABLED),
                local_apic(1, 8, 0), // disabled
                memory(2, 0x1_0000_0000, 0x4000_0000, ENABLED | HOT_PLUGGABLE),
                memory(3, 0x2_0000_0000, 0x1000, ENABLED | NON_VOLATILE),
                memory(1, 0x3_0000_0000, 0x1000, HOT_PLUGGABLE), // disabled
                memory(1, 0x4_0000_0000, 0, ENABLED),            // empty
                vec![3, 18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // GICC
                vec![0x7f, 5, 1, 2, 3],                          // future type
                local_x2apic(5, 300, ENABLED),
                local_x2apic(6, 301, 0), // disabled
            ],
        );
        let srat = Srat::parse(&t).unwrap();
        assert_eq!(
            srat.cpus.as_slice(),
            [cpu(7, 0x0102_0304, false), cpu(300, 5, true)]
        );
        assert_eq!(
            srat.memory.as_slice(),
            [
                range(2, 0x1_0000_0000, 0x4000_0000, HOT_PLUGGABLE),
                range(3, 0x2_0000_0000, 0x1000, NON_VOLATILE),
            ]
        );
        assert_eq!(srat.domain_of_apic(300), Some(ProximityDomain(5)));
        assert_eq!(srat.domain_of_apic(8), None);
        let at = |a| srat.domain_of_address(HostPhysAddr(a));
        assert_eq!(at(0x1_3fff_ffff), Some(ProximityDomain(2)));
        assert_eq!(at(0x1_4000_0000), None);
        assert_eq!(at(0x2_0000_0fff), Some(ProximityDomain(3)));
    }

    #[test]
    fn revision_1_domains_have_8_bits() {
        let entries = [
            local_apic(0x0102_0304, 1, ENABLED),
            memory(0xdead_be05, 0, 0x1000, ENABLED),
            local_x2apic(0x0001_0000, 2, ENABLED),
        ];
        let srat = Srat::parse(&srat_table(1, &entries)).unwrap();
        assert_eq!(srat.cpus[0].domain, ProximityDomain(4));
        assert_eq!(srat.memory[0].domain, ProximityDomain(5));
        // The x2APIC structure came with ACPI 4.0 and always had 32 bits.
        assert_eq!(srat.cpus[1].domain, ProximityDomain(0x0001_0000));
        let srat = Srat::parse(&srat_table(2, &entries)).unwrap();
        assert_eq!(srat.cpus[0].domain, ProximityDomain(0x0102_0304));
        assert_eq!(srat.memory[0].domain, ProximityDomain(0xdead_be05));
    }

    #[test]
    fn a_cpu_listed_twice_is_kept_once_unless_the_domains_differ() {
        let same = [local_apic(1, 4, ENABLED), local_x2apic(1, 4, ENABLED)];
        let srat = Srat::parse(&srat_table(3, &same)).unwrap();
        assert_eq!(srat.cpus.as_slice(), [cpu(4, 1, false)]);
        let differ = [local_apic(1, 4, ENABLED), local_x2apic(2, 4, ENABLED)];
        assert_eq!(
            Srat::parse(&srat_table(3, &differ)),
            Err(Error::BadSratEntry {
                offset: 48 + 16,
                reason: "a CPU listed again in a different domain"
            })
        );
    }

    #[test]
    fn malformed_structures_are_errors_with_their_offset() {
        let ok = local_apic(0, 0, ENABLED);
        let cases: [(Vec<u8>, &str); 5] = [
            (vec![0x7f, 0], "length under 2"),
            (vec![0x7f, 1], "length under 2"),
            (vec![0x7f], "no length byte"),
            (vec![0x7f, 9, 0, 0], "runs past the table"),
            (
                vec![1, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "shorter than its type requires",
            ),
        ];
        for (entry, reason) in cases {
            let t = srat_table(3, &[ok.clone(), entry]);
            assert_eq!(
                Srat::parse(&t),
                Err(Error::BadSratEntry { offset: 64, reason }),
                "{reason}"
            );
        }
        let overflow = memory(0, u64::MAX - 0xfff, 0x1000, ENABLED);
        assert_eq!(
            Srat::parse(&srat_table(3, &[overflow])),
            Err(Error::BadSratEntry {
                offset: 48,
                reason: "memory range ends past 2^64"
            })
        );
        // Up to the very last byte is fine.
        let top = memory(0, u64::MAX - 0xfff, 0xfff, ENABLED);
        assert_eq!(
            Srat::parse(&srat_table(3, &[top])).unwrap().memory[0].end(),
            u64::MAX
        );
    }

    #[test]
    fn a_table_too_short_for_its_reserved_fields_is_an_error() {
        let t = table(b"SRAT", &[1, 0, 0, 0]);
        assert_eq!(
            Srat::parse(&t),
            Err(Error::BadLength {
                signature: Signature(*b"SRAT"),
                len: 40
            })
        );
        assert_eq!(Srat::parse(&srat_table(3, &[])), Ok(Srat::default()));
    }

    #[test]
    fn more_ranges_or_cpus_than_recorded_is_an_error() {
        let ranges: Vec<_> = (0..=MAX_MEMORY_RANGES as u64)
            .map(|i| memory(0, i << 20, 1 << 20, ENABLED))
            .collect();
        assert_eq!(
            Srat::parse(&srat_table(3, &ranges)),
            Err(Error::TooMany {
                table: Signature(*b"SRAT"),
                what: "memory ranges",
                limit: MAX_MEMORY_RANGES
            })
        );
        let cpus: Vec<_> = (0..=MAX_CPUS as u32)
            .map(|id| local_x2apic(0, id, ENABLED))
            .collect();
        assert!(matches!(
            Srat::parse(&srat_table(3, &cpus)),
            Err(Error::BadSratEntry {
                reason: "more CPUs than Atoll records (MAX_CPUS)",
                ..
            })
        ));
        // Disabled entries do not count.
        let mut padded: Vec<_> = (0..300).map(|id| local_x2apic(0, id, 0)).collect();
        padded.push(local_x2apic(0, 9, ENABLED));
        assert_eq!(Srat::parse(&srat_table(3, &padded)).unwrap().cpus.len(), 1);
    }

    #[test]
    fn slit_distances() {
        let slit_bytes = slit_table(3, &[10, 20, 30, 20, 10, 255, 30, 255, 10]);
        let slit = Slit::parse(&slit_bytes).unwrap();
        assert_eq!(slit.localities(), 3);
        let d = |a, b| slit.distance(ProximityDomain(a), ProximityDomain(b));
        assert_eq!(d(0, 2), Some(30));
        assert_eq!(d(1, 2), Some(255));
        assert_eq!(d(2, 2), Some(10));
        assert_eq!(d(3, 0), None);
        assert_eq!(d(0, u32::MAX), None);
        assert_eq!(slit.matrix().len(), 9);
        // Trailing bytes after the matrix are tolerated.
        let mut longer = vec![10, 20, 20, 10];
        longer.extend_from_slice(&[0xee; 3]);
        assert_eq!(
            Slit::parse(&slit_table(2, &longer)).unwrap().localities(),
            2
        );
        // No localities: an empty matrix.
        assert_eq!(Slit::parse(&slit_table(0, &[])).unwrap().localities(), 0);
    }

    #[test]
    fn slit_matrix_must_fit_the_table() {
        for n in [4, 1 << 32, u64::MAX] {
            assert_eq!(
                Slit::parse(&slit_table(n, &[10; 9])),
                Err(Error::BadSlitSize {
                    localities: n,
                    len: 36 + 8 + 9
                })
            );
        }
        assert_eq!(
            Slit::parse(&table(b"SLIT", &[1, 0, 0, 0])),
            Err(Error::BadLength {
                signature: Signature(*b"SLIT"),
                len: 40
            })
        );
    }

    #[test]
    fn slit_distances_must_follow_the_spec() {
        assert_eq!(
            Slit::parse(&slit_table(2, &[10, 20, 20, 11])),
            Err(Error::BadSlitDistance {
                from: 1,
                to: 1,
                distance: 11
            })
        );
        assert_eq!(
            Slit::parse(&slit_table(2, &[10, 9, 20, 10])),
            Err(Error::BadSlitDistance {
                from: 0,
                to: 1,
                distance: 9
            })
        );
    }

    #[test]
    fn tables_without_srat_or_slit_give_none() {
        let (mem, rsdp) = machine(&[table(b"APIC", &[0; 8])]);
        let tables = Tables::new(&mem, Some(RsdpCopy::V2(&rsdp))).unwrap();
        assert_eq!(tables.srat(), Ok(None));
        assert_eq!(tables.slit(), Ok(None));
    }

    #[test]
    fn tables_find_srat_and_slit_and_refuse_damaged_ones() {
        let srat = srat_table(3, &[local_apic(1, 0, ENABLED)]);
        let slit = slit_table(2, &[10, 21, 21, 10]);
        let (mut mem, rsdp) = machine(&[srat.clone(), slit]);
        let tables = Tables::new(&mem, Some(RsdpCopy::V2(&rsdp))).unwrap();
        assert_eq!(
            tables.srat().unwrap().unwrap().cpus.as_slice(),
            [cpu(0, 1, false)]
        );
        let slit = tables.slit().unwrap().unwrap();
        assert_eq!(
            slit.distance(ProximityDomain(0), ProximityDomain(1)),
            Some(21)
        );
        // One flipped bit in the SRAT: its checksum no longer holds.
        mem.data[50] ^= 1;
        let tables = Tables::new(&mem, Some(RsdpCopy::V2(&rsdp))).unwrap();
        assert_eq!(
            tables.srat(),
            Err(Error::BadChecksum {
                signature: Signature(*b"SRAT")
            })
        );
        assert!(tables.slit().unwrap().is_some());
    }

    /// Builds a table the way QEMU's `acpi_table_begin`/`acpi_table_end`
    /// do: OEM "BOCHS ", table ID "BXPC" + signature, revisions 1.
    fn qemu_table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = sig.to_vec();
        t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
        t.extend_from_slice(&[1, 0]); // revision, checksum
        t.extend_from_slice(b"BOCHS BXPC");
        t.extend_from_slice(sig);
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"BXPC");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    /// The SRAT QEMU 7.2 builds for a `pc` machine (`build_srat` in
    /// hw/i386/acpi-build.c): one processor structure per possible CPU, all
    /// enabled; each node's memory from address 0 up, cut around the
    /// 640 KiB-1 MiB hole and the PCI hole below 4 GiB; zeroed, disabled
    /// memory structures until there are nodes + 2; then, with `maxmem`, an
    /// enabled hot-pluggable window in the last node.
    fn qemu_srat(
        cpu_nodes: &[u32],
        node_mem: &[u64],
        below_4g: u64,
        hotplug: Option<(u64, u64)>,
    ) -> Vec<u8> {
        const HOLE_640K_START: u64 = 640 << 10;
        const HOLE_640K_END: u64 = 1 << 20;
        let mut entries: Vec<Vec<u8>> = cpu_nodes
            .iter()
            .enumerate()
            .map(|(id, &node)| local_apic(node, id as u8, ENABLED))
            .collect();
        let mut ranges = Vec::new();
        let mut next_base = 0;
        for (node, &size) in node_mem.iter().enumerate() {
            let node = node as u32;
            let mut base = next_base;
            let mut len = size;
            next_base = base + len;
            if base <= HOLE_640K_START && next_base > HOLE_640K_START {
                len -= next_base - HOLE_640K_START;
                if len > 0 {
                    ranges.push(memory(node, base, len, ENABLED));
                }
                if next_base <= HOLE_640K_END {
                    next_base = HOLE_640K_END;
                    continue;
                }
                base = HOLE_640K_END;
                len = next_base - HOLE_640K_END;
            }
            if base <= below_4g && next_base > below_4g {
                len -= next_base - below_4g;
                if len > 0 {
                    ranges.push(memory(node, base, len, ENABLED));
                }
                base = 1 << 32;
                len = next_base - below_4g;
                next_base = base + len;
            }
            if len > 0 {
                ranges.push(memory(node, base, len, ENABLED));
            }
        }
        while ranges.len() < node_mem.len() + 2 {
            ranges.push(memory(0, 0, 0, 0));
        }
        if let Some((base, len)) = hotplug {
            let last = node_mem.len() as u32 - 1;
            ranges.push(memory(last, base, len, ENABLED | HOT_PLUGGABLE));
        }
        entries.extend(ranges);
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 8]);
        body.extend(entries.iter().flatten());
        qemu_table(b"SRAT", &body)
    }

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn the_builder_matches_a_real_qemu_srat() {
        // QEMU's own ACPI test `memhp` (tests/data/acpi/pc/SRAT.memhp):
        // -m 128,slots=3,maxmem=1G, two 64 MiB nodes, one CPU. Its dump is
        // 0x108 bytes with checksum 0xa2; the same bytes from the builder
        // confirm the layout it produces.
        let hotplug = (4 * GIB, (GIB - 128 * MIB) + 3 * GIB);
        let t = qemu_srat(&[0], &[64 * MIB, 64 * MIB], 128 * MIB, Some(hotplug));
        assert_eq!((t.len(), t[9]), (0x108, 0xa2));
    }

    #[test]
    fn qemu_two_node_machine() {
        // The harness' NUMA machine: -machine pc -smp 4 -m 512, nodes of
        // 256 MiB with CPUs 0-1 and 2-3. All RAM is below the PCI hole.
        let t = qemu_srat(&[0, 0, 1, 1], &[256 * MIB, 256 * MIB], 512 * MIB, None);
        let srat = Srat::parse(&t).unwrap();
        assert_eq!(
            srat.cpus.as_slice(),
            [
                cpu(0, 0, false),
                cpu(1, 0, false),
                cpu(2, 1, false),
                cpu(3, 1, false)
            ]
        );
        assert_eq!(
            srat.memory.as_slice(),
            [
                range(0, 0, 640 << 10, 0),
                range(0, MIB, 255 * MIB, 0),
                range(1, 256 * MIB, 256 * MIB, 0),
            ]
        );
        // Through the tables, next to QEMU's SLIT for `-numa dist,...,val=21`.
        let slit = qemu_table(b"SLIT", &[2, 0, 0, 0, 0, 0, 0, 0, 10, 21, 21, 10]);
        let (mem, rsdp) = machine(&[t, slit]);
        let tables = Tables::new(&mem, Some(RsdpCopy::V2(&rsdp))).unwrap();
        assert_eq!(tables.srat().unwrap(), Some(srat));
        let slit = tables.slit().unwrap().unwrap();
        assert_eq!(slit.matrix(), [10, 21, 21, 10]);
    }

    #[test]
    fn qemu_machine_with_hotplug_memory_and_ram_above_4g() {
        // -smp 4,maxcpus=6 -m 6G,slots=2,maxmem=8G with 2 GiB in node 0 and
        // 4 GiB in node 1; on `pc` QEMU keeps 3 GiB below 4 GiB (the rest
        // moves above 4 GiB) and puts the hot-plug window 1 GiB-aligned
        // after it, sized maxmem - ram + 1 GiB per slot.
        let below_4g = 3 * GIB;
        let hotplug = (7 * GIB, 2 * GIB + 2 * GIB);
        let t = qemu_srat(
            &[0, 0, 1, 1, 1, 1],
            &[2 * GIB, 4 * GIB],
            below_4g,
            Some(hotplug),
        );
        let srat = Srat::parse(&t).unwrap();
        assert_eq!(srat.cpus.len(), 6);
        assert_eq!(srat.domain_of_apic(5), Some(ProximityDomain(1)));
        assert_eq!(
            srat.memory.as_slice(),
            [
                range(0, 0, 640 << 10, 0),
                range(0, MIB, 2 * GIB - MIB, 0),
                range(1, 2 * GIB, GIB, 0),
                range(1, 4 * GIB, 3 * GIB, 0),
                range(1, 7 * GIB, 4 * GIB, HOT_PLUGGABLE),
            ]
        );
        assert_eq!(
            srat.domain_of_address(HostPhysAddr(3 * GIB)),
            None,
            "the PCI hole is in no domain"
        );
    }

    /// One SRAT structure of a known type with arbitrary fields.
    fn any_structure() -> impl Strategy<Value = Vec<u8>> {
        let flags = prop_oneof![Just(0u32), Just(ENABLED), any::<u32>()];
        prop_oneof![
            (0u32..4, 0u8..8, flags.clone()).prop_map(|(d, id, f)| local_apic(d, id, f)),
            (0u32..4, 0u64..1 << 40, 0u64..1 << 30, flags.clone())
                .prop_map(|(d, b, l, f)| memory(d, b, l, f)),
            (0u32..4, 0u32..8, flags).prop_map(|(d, id, f)| local_x2apic(d, id, f)),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(|mut v| {
                v.splice(0..0, [0x40, v.len() as u8 + 2]);
                v
            }),
        ]
    }

    proptest! {
        #[test]
        fn random_srat_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut t = table(b"SRAT", &body);
            t[8] = 3;
            fix_checksum(&mut t, 9);
            if let Ok(srat) = Srat::parse(&t) {
                for m in &srat.memory {
                    prop_assert!(m.len > 0 && m.base.0.checked_add(m.len).is_some());
                }
            }
        }

        #[test]
        fn structured_srats_parse_to_their_enabled_entries(
            entries in proptest::collection::vec(any_structure(), 0..24),
            cut in any::<prop::sample::Index>(),
        ) {
            let t = srat_table(3, &entries);
            let mut cpus: Vec<CpuAffinity> = Vec::new();
            let mut conflict = false;
            let mut ranges = Vec::new();
            for e in &entries {
                let flags = |at: usize| u32::from_le_bytes(e[at..at + 4].try_into().unwrap());
                let c = match e[0] {
                    0 if flags(4) & 1 != 0 => Some(cpu(e[3].into(), e[2].into(), false)),
                    2 if flags(12) & 1 != 0 => Some(cpu(flags(8), flags(4), true)),
                    1 if flags(28) & 1 != 0 && e[16..24] != [0; 8] => {
                        let f = flags(28);
                        let base = u64::from_le_bytes(e[8..16].try_into().unwrap());
                        let len = u64::from_le_bytes(e[16..24].try_into().unwrap());
                        ranges.push(range(flags(2), base, len, f));
                        None
                    }
                    _ => None,
                };
                if let Some(c) = c {
                    match cpus.iter().find(|s| s.apic_id == c.apic_id) {
                        Some(s) if s.domain != c.domain => conflict = true,
                        Some(_) => {}
                        None => cpus.push(c),
                    }
                }
            }
            let parsed = Srat::parse(&t);
            if conflict {
                prop_assert!(parsed.is_err());
            } else {
                let parsed = parsed.unwrap();
                prop_assert_eq!(parsed.cpus.as_slice(), cpus.as_slice());
                prop_assert_eq!(parsed.memory.as_slice(), ranges.as_slice());
            }
            // Any truncation of the same table never panics.
            let short = &t[..cut.index(t.len() + 1)];
            let _ = Srat::parse(short);
        }

        #[test]
        fn damaged_qemu_srat_never_panics(at in any::<prop::sample::Index>(), xor in 1u8..) {
            let mut t = qemu_srat(&[0, 0, 1, 1], &[256 * MIB, 256 * MIB], 512 * MIB, None);
            let i = at.index(t.len());
            t[i] ^= xor;
            let (mem, rsdp) = machine(&[t.clone()]);
            let tables = Tables::new(&mem, Some(RsdpCopy::V2(&rsdp))).unwrap();
            // Damage without a fixed checksum never gets past the check (a
            // damaged signature just hides the table) ...
            prop_assert!(!matches!(tables.srat(), Ok(Some(_))));
            // ... and parsed anyway, it is still only an error value.
            fix_checksum(&mut t, 9);
            if let Ok(srat) = Srat::parse(&t) {
                prop_assert!(srat.cpus.len() <= 4 && srat.memory.len() <= 3);
            }
        }

        #[test]
        fn random_slits_never_panic(n in 0u64..6, big in any::<u64>(), matrix in proptest::collection::vec(any::<u8>(), 0..40)) {
            for localities in [n, big] {
                if let Ok(slit) = Slit::parse(&slit_table(localities, &matrix)) {
                    let n = slit.localities();
                    prop_assert!(n * n <= matrix.len());
                    for i in 0..n as u32 {
                        let d = |a, b| slit.distance(ProximityDomain(a), ProximityDomain(b));
                        prop_assert_eq!(d(i, i), Some(10));
                        prop_assert_eq!(d(i, n as u32), None);
                    }
                }
            }
        }

        #[test]
        fn valid_slits_round_trip(n in 1usize..6, seed in proptest::collection::vec(10u8.., 36)) {
            let mut matrix = vec![0; n * n];
            for i in 0..n {
                for j in 0..n {
                    matrix[i * n + j] = if i == j { 10 } else { seed[i * 6 + j] };
                }
            }
            let bytes = slit_table(n as u64, &matrix);
            let slit = Slit::parse(&bytes).unwrap();
            prop_assert_eq!(slit.matrix(), matrix.as_slice());
        }
    }
}
