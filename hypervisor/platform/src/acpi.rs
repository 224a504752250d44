//! The ACPI tables Atoll reads at boot (ACPI 6.5, chapter 5): the RSDP, the
//! RSDT or XSDT, the MADT (CPUs and I/O APICs), the FADT/DSDT facts
//! needed to power off through ACPI S5 and, in [`numa`], the SRAT and SLIT
//! (NUMA domains and their distances).
//!
//! Tables come from firmware and are treated as untrusted input: every
//! length is range-checked, every checksum verified, and all reads go
//! through [`PhysMemory`], which the arch layer implements over the identity
//! map and host tests implement over a byte vector.

use crate::HostPhysAddr;
use crate::bytes::{array_at, checksum_ok, slice_at, u8_at, u32_at, u64_at};
use crate::multiboot2::RsdpCopy;

pub mod numa;

/// Most CPUs Atoll records from the MADT.
pub const MAX_CPUS: usize = 256;
/// Most I/O APICs Atoll records from the MADT.
pub const MAX_IOAPICS: usize = 16;
/// Largest table Atoll reads; real DSDTs are well under this.
pub const MAX_TABLE_LEN: u32 = 4 << 20;
/// Size of the common table header (ACPI 6.5, 5.2.6).
const HEADER_LEN: usize = 36;

/// Read access to physical memory.
pub trait PhysMemory {
    /// The `len` bytes at `addr`, or `None` when that range cannot be read.
    fn bytes(&self, addr: HostPhysAddr, len: usize) -> Option<&[u8]>;
}

/// A four-character table signature, printable in messages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 4]);

impl core::fmt::Debug for Signature {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

impl core::fmt::Display for Signature {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for &b in &self.0 {
            let c = if b.is_ascii_graphic() { b as char } else { '?' };
            core::fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

/// Why the tables could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The boot loader passed no RSDP.
    NoRsdp,
    /// The RSDP copy is short, lacks "RSD PTR " or fails its checksum.
    BadRsdp,
    /// A table's bytes cannot be read at its address.
    Unreadable {
        /// The table's signature.
        signature: Signature,
        /// Where the table was said to be.
        addr: HostPhysAddr,
    },
    /// A table's length is under its header or above [`MAX_TABLE_LEN`].
    BadLength {
        /// The table's signature.
        signature: Signature,
        /// The length its header gives, in bytes.
        len: u32,
    },
    /// A table's bytes do not sum to zero.
    BadChecksum {
        /// The table's signature.
        signature: Signature,
    },
    /// A table has a different signature than the pointer to it promised.
    WrongSignature {
        /// The signature the pointer promised.
        expected: Signature,
        /// The signature the table has.
        found: Signature,
    },
    /// There is no table with this signature.
    Missing(Signature),
    /// A MADT entry at this offset is shorter than 2 bytes or than its type
    /// requires, or runs past the table.
    BadMadtEntry {
        /// Byte offset of the entry in the MADT.
        offset: usize,
    },
    /// An SRAT entry at this offset is malformed; `reason` says how.
    BadSratEntry {
        /// Byte offset of the entry in the SRAT.
        offset: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The SLIT's matrix of `localities` x `localities` bytes does not fit
    /// in its `len`-byte table.
    BadSlitSize {
        /// The number of localities the SLIT claims.
        localities: u64,
        /// The table's length in bytes.
        len: usize,
    },
    /// A SLIT distance breaks ACPI 6.5, 5.2.17: a locality's distance to
    /// itself must be 10, and 0-9 are reserved.
    BadSlitDistance {
        /// Row: the locality measured from.
        from: usize,
        /// Column: the locality measured to.
        to: usize,
        /// The distance found.
        distance: u8,
    },
    /// A table lists more CPUs, I/O APICs or memory ranges than Atoll
    /// records.
    TooMany {
        /// The table's signature.
        table: Signature,
        /// What it lists too many of.
        what: &'static str,
        /// How many Atoll records.
        limit: usize,
    },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::NoRsdp => write!(
                f,
                "the boot loader passed no ACPI RSDP; Atoll needs ACPI to find CPUs"
            ),
            Error::BadRsdp => write!(f, "the ACPI RSDP is malformed (signature or checksum)"),
            Error::Unreadable { signature, addr } => {
                write!(
                    f,
                    "ACPI table {signature} at {addr} lies outside readable memory"
                )
            }
            Error::BadLength { signature, len } => {
                write!(f, "ACPI table {signature} has impossible length {len}")
            }
            Error::BadChecksum { signature } => {
                write!(f, "ACPI table {signature} fails its checksum")
            }
            Error::WrongSignature { expected, found } => {
                write!(
                    f,
                    "ACPI table at the {expected} pointer has signature {found}"
                )
            }
            Error::Missing(signature) => write!(f, "the firmware has no ACPI {signature} table"),
            Error::BadMadtEntry { offset } => {
                write!(f, "ACPI MADT entry at offset {offset} is malformed")
            }
            Error::BadSratEntry { offset, reason } => {
                write!(
                    f,
                    "ACPI SRAT entry at offset {offset} is malformed: {reason}"
                )
            }
            Error::BadSlitSize { localities, len } => write!(
                f,
                "ACPI SLIT claims {localities} localities, but a {localities} x {localities} \
                 matrix does not fit in its {len} bytes"
            ),
            Error::BadSlitDistance { from, to, distance } => write!(
                f,
                "ACPI SLIT distance from locality {from} to {to} is {distance}; \
                 a locality's distance to itself must be 10 and 0-9 are reserved"
            ),
            Error::TooMany { table, what, limit } => {
                write!(f, "the {table} lists more than {limit} {what}")
            }
        }
    }
}

/// The root of the tables: the XSDT (8-byte entries) or, for ACPI 1.0, the
/// RSDT (4-byte entries).
pub struct Tables<'m, M: PhysMemory> {
    mem: &'m M,
    root: &'m [u8],
    entry_size: usize,
}

impl<'m, M: PhysMemory> Tables<'m, M> {
    /// Checks the RSDP copy (ACPI 6.5, 5.2.5.3) and the root table it points to.
    pub fn new(mem: &'m M, rsdp: Option<RsdpCopy<'_>>) -> Result<Self, Error> {
        let rsdp = rsdp.ok_or(Error::NoRsdp)?;
        let (bytes, v2) = match rsdp {
            RsdpCopy::V2(b) => (b, true),
            RsdpCopy::V1(b) => (b, false),
        };
        let v1_part = bytes.get(..20).ok_or(Error::BadRsdp)?;
        if v1_part.get(..8) != Some(b"RSD PTR ") || !checksum_ok(v1_part) {
            return Err(Error::BadRsdp);
        }
        let xsdt = if v2 && u8_at(bytes, 15).is_some_and(|rev| rev >= 2) {
            let len = u32_at(bytes, 20).ok_or(Error::BadRsdp)? as usize;
            let whole = bytes
                .get(..len)
                .filter(|b| b.len() >= 36)
                .ok_or(Error::BadRsdp)?;
            if !checksum_ok(whole) {
                return Err(Error::BadRsdp);
            }
            u64_at(bytes, 24).filter(|&a| a != 0)
        } else {
            None
        };
        let (addr, signature, entry_size) = match xsdt {
            Some(a) => (a, *b"XSDT", 8),
            None => (
                u64::from(u32_at(bytes, 16).ok_or(Error::BadRsdp)?),
                *b"RSDT",
                4,
            ),
        };
        let root = read_table(mem, HostPhysAddr(addr), Some(Signature(signature)))?;
        Ok(Self {
            mem,
            root,
            entry_size,
        })
    }

    /// The addresses the root table lists.
    fn entries(&self) -> impl Iterator<Item = HostPhysAddr> + '_ {
        let list = self.root.get(HEADER_LEN..).unwrap_or(&[]);
        list.chunks_exact(self.entry_size).map(|e| {
            let addr = if e.len() == 8 {
                u64_at(e, 0)
            } else {
                u32_at(e, 0).map(u64::from)
            };
            HostPhysAddr(addr.unwrap_or(0))
        })
    }

    /// Every table listed with this signature, each checked.
    pub fn all(&self, signature: [u8; 4]) -> impl Iterator<Item = Result<&'m [u8], Error>> + '_ {
        self.entries().filter_map(move |addr| {
            let header = self.mem.bytes(addr, 4)?;
            (header == signature).then(|| read_table(self.mem, addr, Some(Signature(signature))))
        })
    }

    /// The first table with this signature.
    pub fn find(&self, signature: [u8; 4]) -> Result<&'m [u8], Error> {
        self.all(signature)
            .next()
            .unwrap_or(Err(Error::Missing(Signature(signature))))
    }

    /// The CPUs and I/O APICs of the MADT.
    pub fn madt(&self) -> Result<Madt, Error> {
        Madt::parse(self.find(*b"APIC")?)
    }

    /// How to enter ACPI S5 (soft off), from the FADT and the `\_S5`
    /// package of the DSDT or an SSDT. `Ok(None)` when the firmware defines
    /// no `\_S5` or no PM1a control block.
    pub fn soft_off(&self) -> Result<Option<SoftOff>, Error> {
        let fadt = self.find(*b"FACP")?;
        let pm1a = u32_at(fadt, 64).unwrap_or(0);
        if pm1a == 0 || pm1a > 0xffff {
            return Ok(None);
        }
        let dsdt_addr = u64_at(fadt, 140)
            .filter(|&x| x != 0 && fadt.len() >= 148)
            .or_else(|| u32_at(fadt, 40).map(u64::from))
            .unwrap_or(0);
        let dsdt = read_table(self.mem, HostPhysAddr(dsdt_addr), Some(Signature(*b"DSDT")))?;
        let from_ssdts = || {
            self.all(*b"SSDT")
                .filter_map(Result::ok)
                .find_map(find_s5_package)
        };
        let Some((slp_typ_a, slp_typ_b)) = find_s5_package(dsdt).or_else(from_ssdts) else {
            return Ok(None);
        };
        let pm1b = u32_at(fadt, 68).unwrap_or(0);
        Ok(Some(SoftOff {
            pm1a_control_port: pm1a as u16,
            pm1b_control_port: u16::try_from(pm1b).ok().filter(|&p| p != 0),
            slp_typ_a,
            slp_typ_b,
            smi_command_port: u16::try_from(u32_at(fadt, 48).unwrap_or(0))
                .ok()
                .filter(|&p| p != 0),
            acpi_enable: u8_at(fadt, 52).unwrap_or(0),
        }))
    }
}

/// Reads and checks the table at `addr`: its length, its checksum and, when
/// given, its signature.
fn read_table<M: PhysMemory>(
    mem: &M,
    addr: HostPhysAddr,
    expected: Option<Signature>,
) -> Result<&[u8], Error> {
    let unknown = expected.unwrap_or(Signature(*b"????"));
    let header = mem.bytes(addr, HEADER_LEN).ok_or(Error::Unreadable {
        signature: unknown,
        addr,
    })?;
    let signature = Signature(array_at::<4>(header, 0).ok_or(Error::BadRsdp)?);
    if let Some(expected) = expected.filter(|&e| e != signature) {
        return Err(Error::WrongSignature {
            expected,
            found: signature,
        });
    }
    let len = u32_at(header, 4).unwrap_or(0);
    if (len as usize) < HEADER_LEN || len > MAX_TABLE_LEN {
        return Err(Error::BadLength { signature, len });
    }
    let table = mem
        .bytes(addr, len as usize)
        .ok_or(Error::Unreadable { signature, addr })?;
    if !checksum_ok(table) {
        return Err(Error::BadChecksum { signature });
    }
    Ok(table)
}

/// A processor the MADT lists as enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// Its local APIC ID, or x2APIC ID for an x2APIC entry.
    pub apic_id: u32,
    /// The ACPI processor UID.
    pub uid: u32,
    /// Listed by an x2APIC entry (type 9).
    pub x2apic: bool,
}

/// An I/O APIC the MADT lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    /// Its I/O APIC ID.
    pub id: u8,
    /// The physical address of its register window.
    pub address: HostPhysAddr,
    /// The first global system interrupt it serves.
    pub gsi_base: u32,
}

/// What Atoll takes from the MADT (ACPI 6.5, 5.2.12).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Madt {
    /// The local APIC's physical address: the MADT header's 32-bit Local
    /// Interrupt Controller Address (an override entry is not read).
    pub local_apic_address: HostPhysAddr,
    /// The enabled processors, in table order.
    pub cpus: heapless::Vec<Cpu, MAX_CPUS>,
    /// The I/O APICs, in table order.
    pub ioapics: heapless::Vec<IoApic, MAX_IOAPICS>,
}

mod madt_entry {
    pub const LOCAL_APIC: u8 = 0;
    pub const IO_APIC: u8 = 1;
    pub const LOCAL_X2APIC: u8 = 9;
    /// Flags bit 0: the processor is usable now.
    pub const ENABLED: u32 = 1;
}

impl Madt {
    /// Parses a checked MADT. Processors that are not enabled are skipped;
    /// a processor listed twice (as local APIC and x2APIC) is kept once.
    pub fn parse(table: &[u8]) -> Result<Self, Error> {
        let mut madt = Madt {
            local_apic_address: HostPhysAddr(u32_at(table, 36).unwrap_or(0).into()),
            ..Madt::default()
        };
        let mut offset = HEADER_LEN + 8;
        while offset < table.len() {
            let bad = Error::BadMadtEntry { offset };
            let len = u8_at(table, offset + 1).ok_or(bad)? as usize;
            let entry = slice_at(table, offset, len)
                .filter(|_| len >= 2)
                .ok_or(bad)?;
            madt.add_entry(entry).ok_or(bad)??;
            offset += len;
        }
        Ok(madt)
    }

    /// Records one entry. The outer `None` means the entry is too short for
    /// its type.
    fn add_entry(&mut self, entry: &[u8]) -> Option<Result<(), Error>> {
        let cpu = match u8_at(entry, 0)? {
            madt_entry::LOCAL_APIC => Some(Cpu {
                uid: u8_at(entry, 2)?.into(),
                apic_id: u8_at(entry, 3)?.into(),
                x2apic: false,
            })
            .filter(|_| u32_at(entry, 4).is_some_and(|f| f & madt_entry::ENABLED != 0)),
            madt_entry::LOCAL_X2APIC => Some(Cpu {
                apic_id: u32_at(entry, 4)?,
                uid: u32_at(entry, 12)?,
                x2apic: true,
            })
            .filter(|_| u32_at(entry, 8).is_some_and(|f| f & madt_entry::ENABLED != 0)),
            madt_entry::IO_APIC => {
                let ioapic = IoApic {
                    id: u8_at(entry, 2)?,
                    address: HostPhysAddr(u32_at(entry, 4)?.into()),
                    gsi_base: u32_at(entry, 8)?,
                };
                let full = Error::TooMany {
                    table: Signature(*b"APIC"),
                    what: "I/O APICs",
                    limit: MAX_IOAPICS,
                };
                return Some(self.ioapics.push(ioapic).map_err(|_| full));
            }
            _ => None,
        };
        let Some(cpu) = cpu else { return Some(Ok(())) };
        if self.cpus.iter().any(|c| c.apic_id == cpu.apic_id) {
            return Some(Ok(()));
        }
        let full = Error::TooMany {
            table: Signature(*b"APIC"),
            what: "CPUs",
            limit: MAX_CPUS,
        };
        Some(self.cpus.push(cpu).map_err(|_| full))
    }
}

/// The register writes that enter ACPI S5 (ACPI 6.5, 7.4.2 and 4.8.3.2.1):
/// write `SLP_TYPx << 10 | SLP_EN` to each PM1 control block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftOff {
    /// FADT PM1a_CNT_BLK: the I/O port of the PM1a control register.
    pub pm1a_control_port: u16,
    /// FADT PM1b_CNT_BLK, when the platform has a second block.
    pub pm1b_control_port: Option<u16>,
    /// SLP_TYPa of the DSDT's `\_S5` package.
    pub slp_typ_a: u8,
    /// SLP_TYPb of the DSDT's `\_S5` package.
    pub slp_typ_b: u8,
    /// Where to write `acpi_enable` if the firmware is still in legacy mode
    /// (PM1 control SCI_EN clear).
    pub smi_command_port: Option<u16>,
    /// FADT ACPI_ENABLE: the value written to the SMI command port.
    pub acpi_enable: u8,
}

impl SoftOff {
    /// SLP_EN, PM1 control bit 13.
    pub const SLP_EN: u16 = 1 << 13;
    /// SCI_EN, PM1 control bit 0: set once the OS owns ACPI.
    pub const SCI_EN: u16 = 1;

    /// The value to write to a PM1 control block that now reads `current`.
    pub fn control_value(current: u16, slp_typ: u8) -> u16 {
        (current & !(0x7 << 10)) | (u16::from(slp_typ & 0x7) << 10) | Self::SLP_EN
    }
}

/// Finds `Name (\_S5, Package () { a, b, ... })` in AML and returns the first
/// two elements (SLP_TYPa, SLP_TYPb).
///
/// A full AML interpreter is not needed for this one object: firmware emits it
/// as NameOp (0x08), optional root prefix `\`, "_S5_", PackageOp (0x12),
/// PkgLength, NumElements, then integer elements (ACPI 6.5, 20.2.5).
pub fn find_s5_package(aml: &[u8]) -> Option<(u8, u8)> {
    let body = aml.get(HEADER_LEN..)?;
    (0..body.len()).find_map(|i| {
        if body.get(i..i + 4)? != b"_S5_" || body.get(i + 4) != Some(&0x12) {
            return None;
        }
        let named = match i {
            0 => false,
            _ => {
                body.get(i - 1) == Some(&0x08)
                    || (body.get(i - 1) == Some(&b'\\') && i >= 2 && body.get(i - 2) == Some(&0x08))
            }
        };
        if !named {
            return None;
        }
        let pkg_len_lead = *body.get(i + 5)?;
        let mut pos = i + 5 + 1 + usize::from(pkg_len_lead >> 6) + 1; // PkgLength, NumElements
        let a = aml_integer(body, &mut pos)?;
        let b = aml_integer(body, &mut pos).unwrap_or(a);
        Some((a, b))
    })
}

/// Reads one small AML integer (ZeroOp, OneOp or a Byte/Word/DWord constant)
/// at `*pos`, returning its low byte.
fn aml_integer(aml: &[u8], pos: &mut usize) -> Option<u8> {
    let op = *aml.get(*pos)?;
    let (value, size) = match op {
        0x00 => (0, 1),
        0x01 => (1, 1),
        0x0a..=0x0c => (*aml.get(*pos + 1)?, 1 + (1usize << (op - 0x0a))),
        _ => return None,
    };
    *pos += size;
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// Physical memory made of one vector at a base address.
    pub(super) struct FakeMemory {
        pub(super) base: u64,
        pub(super) data: Vec<u8>,
    }

    impl PhysMemory for FakeMemory {
        fn bytes(&self, addr: HostPhysAddr, len: usize) -> Option<&[u8]> {
            let start = usize::try_from(addr.0.checked_sub(self.base)?).ok()?;
            self.data.get(start..start.checked_add(len)?)
        }
    }

    pub(super) const BASE: u64 = 0xe0000;

    /// Builds a table with a correct header and checksum.
    pub(super) fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
        t.push(1); // revision
        t.push(0); // checksum, fixed below
        t.extend_from_slice(b"ATOLL TESTTABLE\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        t.truncate(HEADER_LEN);
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    pub(super) fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        t[at] = 0u8.wrapping_sub(sum);
    }

    fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut r = b"RSD PTR ".to_vec();
        r.push(0);
        r.extend_from_slice(b"ATOLL ");
        r.push(0); // revision 0
        r.extend_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut r, 8);
        r
    }

    pub(super) fn rsdp_v2(xsdt: u64) -> Vec<u8> {
        let mut r = b"RSD PTR ".to_vec();
        r.push(0);
        r.extend_from_slice(b"ATOLL ");
        r.push(2);
        r.extend_from_slice(&0u32.to_le_bytes());
        fix_checksum(&mut r, 8);
        r.extend_from_slice(&36u32.to_le_bytes());
        r.extend_from_slice(&xsdt.to_le_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        fix_checksum(&mut r, 32);
        r
    }

    fn madt_body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]); // CPU uid 0 apic 0 enabled
        b.extend_from_slice(&[0, 8, 1, 1, 1, 0, 0, 0]); // CPU uid 1 apic 1 enabled
        b.extend_from_slice(&[0, 8, 2, 2, 0, 0, 0, 0]); // CPU 2 disabled
        b.extend_from_slice(&[1, 12, 4, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]); // IOAPIC
        let mut x2 = vec![9, 16, 0, 0];
        x2.extend_from_slice(&300u32.to_le_bytes());
        x2.extend_from_slice(&1u32.to_le_bytes());
        x2.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&x2); // x2APIC 300
        b.extend_from_slice(&[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]); // an override: skipped
        b
    }

    fn dsdt_with_s5(slp: &[u8]) -> Vec<u8> {
        let mut aml = vec![0x10, 0x05, b'\\', b'_', b'S', b'B', b'_']; // some scope noise
        aml.extend_from_slice(&[0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04]);
        aml.extend_from_slice(slp);
        table(b"DSDT", &aml)
    }

    fn fadt_body(dsdt: u32) -> Vec<u8> {
        let mut b = vec![0u8; 112];
        b[40 - 36..44 - 36].copy_from_slice(&dsdt.to_le_bytes());
        b[48 - 36..52 - 36].copy_from_slice(&0xb2u32.to_le_bytes());
        b[52 - 36] = 0xf1;
        b[64 - 36..68 - 36].copy_from_slice(&0xb004u32.to_le_bytes());
        b
    }

    /// Lays out tables one after another, 16-byte aligned; returns memory and
    /// their addresses.
    pub(super) fn layout(tables: &[Vec<u8>]) -> (FakeMemory, Vec<u64>) {
        let mut data = Vec::new();
        let mut addrs = Vec::new();
        for t in tables {
            while !data.len().is_multiple_of(16) {
                data.push(0);
            }
            addrs.push(BASE + data.len() as u64);
            data.extend_from_slice(t);
        }
        (FakeMemory { base: BASE, data }, addrs)
    }

    /// A machine: MADT, DSDT, FADT and a root table (RSDT or XSDT) last.
    fn machine(xsdt: bool, dsdt: Vec<u8>) -> (FakeMemory, Vec<u8>) {
        let madt = table(b"APIC", &madt_body());
        let (_, addrs) = layout(&[madt.clone(), dsdt.clone()]);
        let fadt = table(b"FACP", &fadt_body(addrs[1] as u32));
        let (_, addrs) = layout(&[madt.clone(), dsdt.clone(), fadt.clone()]);
        let root = if xsdt {
            let body: Vec<u8> = [addrs[0], addrs[2]]
                .iter()
                .flat_map(|a| a.to_le_bytes())
                .collect();
            table(b"XSDT", &body)
        } else {
            let body: Vec<u8> = [addrs[0], addrs[2]]
                .iter()
                .flat_map(|a| (*a as u32).to_le_bytes())
                .collect();
            table(b"RSDT", &body)
        };
        let (mem, addrs) = layout(&[madt, dsdt, fadt, root]);
        let rsdp = if xsdt {
            rsdp_v2(addrs[3])
        } else {
            rsdp_v1(addrs[3] as u32)
        };
        (mem, rsdp)
    }

    #[test]
    fn reads_cpus_and_ioapics_through_rsdt_and_xsdt() {
        for xsdt in [false, true] {
            let (mem, rsdp) = machine(xsdt, dsdt_with_s5(&[0x0a, 0x05, 0x00]));
            let copy = if xsdt {
                RsdpCopy::V2(&rsdp)
            } else {
                RsdpCopy::V1(&rsdp)
            };
            let madt = Tables::new(&mem, Some(copy)).unwrap().madt().unwrap();
            let ids: Vec<_> = madt.cpus.iter().map(|c| (c.apic_id, c.x2apic)).collect();
            assert_eq!(ids, [(0, false), (1, false), (300, true)]);
            assert_eq!(madt.cpus[2].uid, 7);
            assert_eq!(madt.local_apic_address, HostPhysAddr(0xfee0_0000));
            assert_eq!(
                madt.ioapics.as_slice(),
                [IoApic {
                    id: 4,
                    address: HostPhysAddr(0xfec0_0000),
                    gsi_base: 0
                }]
            );
        }
    }

    #[test]
    fn finds_the_s5_sleep_type() {
        let (mem, rsdp) = machine(true, dsdt_with_s5(&[0x0a, 0x05, 0x00]));
        let off = Tables::new(&mem, Some(RsdpCopy::V2(&rsdp)))
            .unwrap()
            .soft_off()
            .unwrap()
            .unwrap();
        assert_eq!(off.pm1a_control_port, 0xb004);
        assert_eq!((off.slp_typ_a, off.slp_typ_b), (5, 0));
        assert_eq!(off.smi_command_port, Some(0xb2));
        assert_eq!(off.acpi_enable, 0xf1);
        assert_eq!(SoftOff::control_value(0x1c01, 5), 0x1401 | 1 << 13);
    }

    #[test]
    fn no_s5_means_no_soft_off() {
        let dsdt = table(
            b"DSDT",
            &[0x08, b'_', b'S', b'4', b'_', 0x12, 0x04, 0x02, 0x00, 0x00],
        );
        let (mem, rsdp) = machine(false, dsdt);
        let tables = Tables::new(&mem, Some(RsdpCopy::V1(&rsdp))).unwrap();
        assert_eq!(tables.soft_off().unwrap(), None);
    }

    #[test]
    fn refuses_bad_rsdp_checksum_and_lengths() {
        let (mem, mut rsdp) = machine(false, dsdt_with_s5(&[0, 0]));
        assert_eq!(Tables::new(&mem, None).err(), Some(Error::NoRsdp));
        rsdp[10] ^= 1;
        assert_eq!(
            Tables::new(&mem, Some(RsdpCopy::V1(&rsdp))).err(),
            Some(Error::BadRsdp)
        );
        assert_eq!(
            Tables::new(&mem, Some(RsdpCopy::V1(&rsdp[..10]))).err(),
            Some(Error::BadRsdp)
        );
    }

    #[test]
    fn refuses_damaged_tables() {
        let (mut mem, rsdp) = machine(false, dsdt_with_s5(&[0, 0]));
        // Corrupt one MADT byte: the checksum catches it.
        mem.data[50] ^= 0x40;
        let tables = Tables::new(&mem, Some(RsdpCopy::V1(&rsdp))).unwrap();
        assert_eq!(
            tables.madt(),
            Err(Error::BadChecksum {
                signature: Signature(*b"APIC")
            })
        );
        // A root pointer outside memory.
        let rsdp_far = rsdp_v1(0x1000);
        assert!(matches!(
            Tables::new(&mem, Some(RsdpCopy::V1(&rsdp_far))),
            Err(Error::Unreadable { .. })
        ));
    }

    #[test]
    fn madt_entry_of_length_zero_is_an_error_not_a_loop() {
        let mut body = madt_body();
        body.extend_from_slice(&[0, 0]);
        let t = table(b"APIC", &body);
        assert!(matches!(Madt::parse(&t), Err(Error::BadMadtEntry { .. })));
        let mut short = madt_body();
        short.extend_from_slice(&[9, 4, 0, 0]); // x2APIC entry too short for its fields
        assert!(matches!(
            Madt::parse(&table(b"APIC", &short)),
            Err(Error::BadMadtEntry { .. })
        ));
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        let mut body = vec![0; 8];
        for id in 0..=MAX_CPUS as u32 {
            let mut e = vec![9, 16, 0, 0];
            e.extend_from_slice(&id.to_le_bytes());
            e.extend_from_slice(&1u32.to_le_bytes());
            e.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(&e);
        }
        assert_eq!(
            Madt::parse(&table(b"APIC", &body)),
            Err(Error::TooMany {
                table: Signature(*b"APIC"),
                what: "CPUs",
                limit: MAX_CPUS
            })
        );
    }

    proptest::proptest! {
        #[test]
        fn random_madt_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(madt) = Madt::parse(&table(b"APIC", &body)) {
                // Each CPU once: a repeated APIC ID is refused, not listed.
                let mut ids: Vec<u32> = madt.cpus.iter().map(|c| c.apic_id).collect();
                ids.sort_unstable();
                ids.dedup();
                proptest::prop_assert_eq!(ids.len(), madt.cpus.len());
            }
        }

        #[test]
        fn random_aml_never_panics(body in proptest::collection::vec(0u8..20, 0..300)) {
            let mut aml = body.clone();
            aml.splice(0..0, [0x08, b'_', b'S', b'5', b'_', 0x12]);
            let found = find_s5_package(&table(b"DSDT", &aml));
            // The values come from the package, never from elsewhere: the
            // body's bytes are all below 20.
            if let Some((a, b)) = found {
                proptest::prop_assert!(a < 20 && b < 20, "{a} {b}");
            }
            // A one-byte PkgLength (lead below 0x40), NumElements, then a
            // ZeroOp or OneOp: that is SLP_TYPa.
            if let (Some(&lead), Some(&first)) = (body.first(), body.get(2))
                && lead < 0x40
                && first <= 1
            {
                proptest::prop_assert_eq!(found.map(|(a, _)| a), Some(first));
            }
        }
    }
}
