//! The guest's ACPI tables (ACPI 6.4 chapter 5), generated from the VM's
//! config and written below 1 MiB where the guest also finds them by
//! scanning 0xe0000-0xfffff (5.2.5.1): RSDP -> XSDT -> FADT (-> FACS,
//! DSDT) and MADT.
//!
//! What they describe is the machine Atoll emulates and nothing more:
//! x2APIC processors, one I/O APIC, a masked dual 8259 (PCAT_COMPAT), a
//! PM1a event block and control block for the SCI and power-off, a reset
//! register, the CMOS RTC (Linux reads the wall clock there whatever the
//! FADT says); no SMI command port (the hardware is always in ACPI mode), no
//! PM timer, no GPE blocks, no 8042, no VGA. The DSDT holds
//! only `\_S5` so the guest can power off.
//!
//! # Layout
//!
//! The RSDP is at [`RSDP_ADDRESS`] (0xe0000, 16-byte aligned as 5.2.5.1
//! requires); the XSDT, FADT, FACS (64-byte aligned, 5.2.10), DSDT and
//! MADT follow in that order, each 8-byte aligned, all below
//! [`ACPI_END`] (0x100000), inside the e820 reserved range.

use alloc::vec::Vec;

use crate::addr::GuestPhysAddr;
use crate::memory::{GuestMemory, MemoryError};
use atoll_platform::bytes::put;

/// Where the tables start, and the RSDP's address.
pub const RSDP_ADDRESS: u64 = 0xe_0000;
/// The tables end below this (the BIOS area's end).
pub const ACPI_END: u64 = 0x10_0000;

/// Default I/O ports and values of the ACPI fixed hardware Atoll emulates.
/// PM1a event block (PM1_STS, PM1_EN: 2 bytes each, 4.8.3.1).
pub const PM1A_EVT_PORT: u16 = 0x600;
/// The PM1a event block's length in bytes (FADT PM1_EVT_LEN).
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block (PM1_CNT, 4.8.3.2.1).
pub const PM1A_CNT_PORT: u16 = 0x604;
/// The PM1a control block's length in bytes (FADT PM1_CNT_LEN).
pub const PM1_CNT_LEN: u8 = 2;
/// The reset register: the PC reset control port, value 6 (full reset).
pub const RESET_PORT: u16 = 0xcf9;
/// The value written to [`RESET_PORT`] to reset (FADT RESET_VALUE).
pub const RESET_VALUE: u8 = 0x06;
/// The SCI's ISA IRQ (and GSI: identity-mapped by an override).
pub const SCI_IRQ: u8 = 9;
/// The IOAPIC's MMIO base (the MADT's I/O APIC structure, 5.2.12.3).
pub const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
/// The local APIC's MMIO base (the MADT header's field, 5.2.12).
pub const LAPIC_ADDRESS: u32 = 0xfee0_0000;

/// PM1 control register fields (4.8.3.2.1, Table 4.13): SLP_TYP in bits
/// 12:10, SLP_EN in bit 13. The DSDT's `\_S5` gives SLP_TYP 5 for S5.
pub const SLP_TYP_S5: u16 = 5;
/// SLP_TYP's position in PM1_CNT (bits 12:10).
pub const SLP_TYP_SHIFT: u16 = 10;
/// The SLP_TYP field of PM1_CNT.
pub const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
/// SLP_EN (PM1_CNT bit 13): writing 1 enters the sleep state SLP_TYP names.
pub const SLP_EN: u16 = 1 << 13;

/// Whether a write of `value` to PM1a_CNT asks for S5 (power off): SLP_EN
/// set with SLP_TYP = [`SLP_TYP_S5`].
pub fn is_power_off(value: u16) -> bool {
    value & SLP_EN != 0 && (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == SLP_TYP_S5
}

/// What the tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs, with x2APIC IDs and ACPI processor UIDs `0..vcpus`.
    pub vcpus: u32,
    /// The local APIC address in the MADT header.
    pub lapic_address: u32,
    /// The IOAPIC's address in its MADT entry.
    pub ioapic_address: u32,
    /// The IOAPIC's ID in its MADT entry.
    pub ioapic_id: u8,
    /// The FADT's PM1a_EVT_BLK port.
    pub pm1a_event_port: u16,
    /// The FADT's PM1a_CNT_BLK port.
    pub pm1a_control_port: u16,
    /// The FADT's reset register: an I/O port.
    pub reset_port: u16,
    /// The value the FADT says to write to `reset_port`.
    pub reset_value: u8,
    /// The SCI's ISA IRQ (FADT SCI_INT).
    pub sci_irq: u8,
}

impl AcpiConfig {
    /// `vcpus` processors and the default ports and addresses.
    pub fn new(vcpus: u32) -> Self {
        AcpiConfig {
            vcpus,
            lapic_address: LAPIC_ADDRESS,
            ioapic_address: IOAPIC_ADDRESS,
            ioapic_id: 0,
            pm1a_event_port: PM1A_EVT_PORT,
            pm1a_control_port: PM1A_CNT_PORT,
            reset_port: RESET_PORT,
            reset_value: RESET_VALUE,
            sci_irq: SCI_IRQ,
        }
    }
}

/// Table header fields common to Atoll's tables (5.2.6).
const OEM_ID: &[u8; 6] = b"ATOLL ";
const OEM_TABLE_ID: &[u8; 8] = b"ATOLLVM ";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: &[u8; 4] = b"ATOL";
const CREATOR_REVISION: u32 = 1;
const HEADER_LEN: usize = 36;

/// Table revisions for ACPI 6.4.
const XSDT_REVISION: u8 = 1;
const FADT_REVISION: u8 = 6;
const FADT_MINOR_REVISION: u8 = 4;
const MADT_REVISION: u8 = 5;
/// Revision 2: AML integers are 64-bit (5.2.11.1).
const DSDT_REVISION: u8 = 2;

const RSDP_LEN: usize = 36;
const XSDT_LEN: u64 = HEADER_LEN as u64 + 2 * 8;
const FADT_LEN: usize = 276;
const FACS_LEN: usize = 64;
const MADT_FIXED_LEN: u64 = 44;
/// MADT entry lengths: each entry's one-byte Length field (5.2.12).
const MADT_X2APIC_LEN: u8 = 16;
const MADT_IOAPIC_LEN: u8 = 12;
const MADT_ISO_LEN: u8 = 10;

/// The DSDT's AML (ACPI 6.4 20.2, AML grammar): `Name (_S5, Package (4)
/// {5, 5, 0, 0})`, the \_S5 sleep state object (7.4.2) whose first two
/// elements are SLP_TYPa and SLP_TYPb.
///
/// - 0x08 NameOp, then the NameString "_S5_" (a NameSeg: 4 characters,
///   padded with '_') (20.2.5.1 DefName, 20.2.2 NameSeg);
/// - 0x12 PackageOp (20.2.5.4 DefPackage), then PkgLength 0x08: a
///   one-byte PkgLength (bits 7:6 zero) counting itself and what follows
///   up to the package's end: 1 + 1 + 2 + 2 + 1 + 1 = 8 (20.2.4);
/// - 0x04 NumElements;
/// - 0x0a 0x05 twice: BytePrefix and the byte 5 (20.2.3 ByteConst);
/// - 0x00 twice: ZeroOp, the constant 0 (20.2.3 ConstObj).
pub const DSDT_AML: [u8; 14] = [
    0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,
];

/// Where each table goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    xsdt: u64,
    fadt: u64,
    facs: u64,
    dsdt: u64,
    madt: u64,
    madt_len: u64,
}

impl Layout {
    /// Lays the tables out after the RSDP; a table that would reach past
    /// [`ACPI_END`] is the error.
    fn new(cfg: &AcpiConfig) -> Result<Self, MemoryError> {
        let madt_len = u64::from(cfg.vcpus)
            .checked_mul(u64::from(MADT_X2APIC_LEN))
            .and_then(|cpus| {
                cpus.checked_add(
                    MADT_FIXED_LEN + u64::from(MADT_IOAPIC_LEN) + 2 * u64::from(MADT_ISO_LEN),
                )
            })
            .ok_or(MemoryError {
                gpa: GuestPhysAddr(RSDP_ADDRESS),
                len: u64::MAX,
            })?;
        let mut next = RSDP_ADDRESS + RSDP_LEN as u64;
        let mut place = |len: u64, align: u64| -> Result<u64, MemoryError> {
            let at = next.next_multiple_of(align);
            let end = at.checked_add(len).filter(|&end| end <= ACPI_END);
            next = end.ok_or(MemoryError {
                gpa: GuestPhysAddr(at),
                len,
            })?;
            Ok(at)
        };
        Ok(Layout {
            xsdt: place(XSDT_LEN, 8)?,
            fadt: place(FADT_LEN as u64, 8)?,
            facs: place(FACS_LEN as u64, 64)?,
            dsdt: place(HEADER_LEN as u64 + DSDT_AML.len() as u64, 8)?,
            madt: place(madt_len, 8)?,
            madt_len,
        })
    }
}

/// Writes the tables for `cfg`; returns the RSDP's address. Fails, having
/// written nothing, if they would not fit below [`ACPI_END`] (too many
/// vCPUs) or the VM's RAM does not reach it.
pub fn build(mem: &mut impl GuestMemory, cfg: &AcpiConfig) -> Result<u64, MemoryError> {
    let layout = Layout::new(cfg)?;
    crate::memory::check_range(
        mem.size(),
        GuestPhysAddr(RSDP_ADDRESS),
        ACPI_END - RSDP_ADDRESS,
    )?;
    let tables = [
        (RSDP_ADDRESS, rsdp(layout.xsdt)),
        (layout.xsdt, xsdt(&[layout.fadt, layout.madt])),
        (layout.fadt, fadt(cfg, &layout)),
        (layout.facs, facs()),
        (layout.dsdt, table(b"DSDT", DSDT_REVISION, &DSDT_AML)),
        (layout.madt, madt(cfg)),
    ];
    mem.zero(GuestPhysAddr(RSDP_ADDRESS), ACPI_END - RSDP_ADDRESS)?;
    for (at, bytes) in &tables {
        mem.write(GuestPhysAddr(*at), bytes)?;
    }
    Ok(RSDP_ADDRESS)
}

/// The RSDP (5.2.5.3): revision 2, no RSDT, the XSDT's address; the first
/// checksum covers bytes 0-19, the extended one all 36.
fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut t = Vec::with_capacity(RSDP_LEN);
    t.extend_from_slice(b"RSD PTR ");
    t.push(0);
    t.extend_from_slice(OEM_ID);
    t.push(2);
    t.extend_from_slice(&0u32.to_le_bytes());
    t.extend_from_slice(&length_field(RSDP_LEN));
    t.extend_from_slice(&xsdt.to_le_bytes());
    t.extend_from_slice(&[0; 4]);
    set_checksum(&mut t, 8, 0..20);
    set_checksum(&mut t, 32, 0..RSDP_LEN);
    t
}

/// The XSDT (5.2.8): 64-bit addresses of the other tables.
fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    table(b"XSDT", XSDT_REVISION, &body)
}

/// FADT Flags (5.2.9, Table 5.10): WBINVD works (0); the power (4) and
/// sleep (5) buttons are not fixed features (there are none); the reset
/// register is supported (10).
const FADT_FLAGS: u32 = 1 << 0 | 1 << 4 | 1 << 5 | 1 << 10;
/// IA-PC boot architecture flags (5.2.9.3, Table 5.11): LEGACY_DEVICES (0,
/// COM1 and the RTC are ISA devices), VGA Not Present (2). The 8042 flag
/// (1) stays clear: there is no keyboard controller.
const IAPC_BOOT_ARCH: u16 = 1 << 0 | 1 << 2;
/// P_LVL2_LAT > 100 and P_LVL3_LAT > 1000: no C2 or C3 (5.2.9).
const NO_C2_LATENCY: u16 = 101;
const NO_C3_LATENCY: u16 = 1001;

/// The FADT (5.2.9, Table 5.9), revision 6 (276 bytes). Field offsets are
/// the table's; both the 32-bit and the X_ (64-bit) forms of each address
/// are filled and agree.
fn fadt(cfg: &AcpiConfig, layout: &Layout) -> Vec<u8> {
    let mut b = alloc::vec![0u8; FADT_LEN - HEADER_LEN];
    let mut at = |offset: usize, bytes: &[u8]| put(&mut b, offset - HEADER_LEN, bytes);
    at(36, &address_32(layout.facs)); // FIRMWARE_CTRL
    at(40, &address_32(layout.dsdt)); // DSDT
    at(46, &u16::from(cfg.sci_irq).to_le_bytes()); // SCI_INT
    // SMI_CMD (48), ACPI_ENABLE, ACPI_DISABLE stay 0: no SMI, always in
    // ACPI mode (5.2.9: "zero ... indicates ... SMI command port is not
    // supported").
    at(56, &u32::from(cfg.pm1a_event_port).to_le_bytes()); // PM1a_EVT_BLK
    at(64, &u32::from(cfg.pm1a_control_port).to_le_bytes()); // PM1a_CNT_BLK
    // PM_TMR_BLK (76), GPE0_BLK (80), GPE1_BLK (84) stay 0: none.
    at(88, &[PM1_EVT_LEN, PM1_CNT_LEN]); // PM1_EVT_LEN, PM1_CNT_LEN
    at(96, &NO_C2_LATENCY.to_le_bytes()); // P_LVL2_LAT
    at(98, &NO_C3_LATENCY.to_le_bytes()); // P_LVL3_LAT
    at(109, &IAPC_BOOT_ARCH.to_le_bytes()); // IAPC_BOOT_ARCH
    at(112, &FADT_FLAGS.to_le_bytes()); // Flags
    at(116, &gas_io(cfg.reset_port, 8, ACCESS_BYTE)); // RESET_REG
    at(128, &[cfg.reset_value]); // RESET_VALUE
    at(131, &[FADT_MINOR_REVISION]); // FADT Minor Version
    at(132, &layout.facs.to_le_bytes()); // X_FIRMWARE_CTRL
    at(140, &layout.dsdt.to_le_bytes()); // X_DSDT
    let evt_bits = PM1_EVT_LEN * 8;
    at(148, &gas_io(cfg.pm1a_event_port, evt_bits, ACCESS_WORD)); // X_PM1a_EVT_BLK
    let cnt_bits = PM1_CNT_LEN * 8;
    at(172, &gas_io(cfg.pm1a_control_port, cnt_bits, ACCESS_WORD)); // X_PM1a_CNT_BLK
    table(b"FACP", FADT_REVISION, &b)
}

/// Generic Address Structure access sizes (5.2.3.2, Table 5.1).
const ACCESS_BYTE: u8 = 1;
const ACCESS_WORD: u8 = 2;

/// A Generic Address Structure (5.2.3.2) for `bits` bits of system I/O
/// space (address space ID 1) at `port`.
fn gas_io(port: u16, bits: u8, access: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    put(&mut g, 0, &[1, bits, 0, access]);
    put(&mut g, 4, &u64::from(port).to_le_bytes());
    g
}

/// The FACS (5.2.10): no waking vector, no global lock; version 2. It has
/// no checksum.
fn facs() -> Vec<u8> {
    let mut t = alloc::vec![0u8; FACS_LEN];
    put(&mut t, 0, b"FACS");
    put(&mut t, 4, &length_field(FACS_LEN));
    put(&mut t, 32, &[2]);
    t
}

/// MADT flags (5.2.12, Table 5.20): PCAT_COMPAT, a dual 8259 is present
/// (Atoll's is masked; the guest must still mask it, as it does).
const MADT_PCAT_COMPAT: u32 = 1;
/// Interrupt controller structure types (5.2.12, Table 5.21).
const MADT_IOAPIC: u8 = 1;
const MADT_ISO: u8 = 2;
const MADT_X2APIC: u8 = 9;
/// Local x2APIC flags (5.2.12.2, Table 5.23): Enabled.
const X2APIC_ENABLED: u32 = 1;
/// MPS INTI flags (5.2.12.5, Table 5.26): polarity in bits 1:0 (01 active
/// high), trigger mode in bits 3:2 (11 level); 0 conforms to the ISA bus
/// (edge, active high).
const INTI_CONFORMS: u16 = 0;
const INTI_LEVEL_ACTIVE_HIGH: u16 = 0b11 << 2 | 0b01;
/// ISA IRQ 0 (the PIT) is wired to I/O APIC input 2 on PCs.
const PIT_IRQ: u8 = 0;
const PIT_GSI: u32 = 2;

/// The MADT (5.2.12): one Processor Local x2APIC structure per vCPU
/// (5.2.12.12), the I/O APIC at GSI base 0 (5.2.12.3), and two Interrupt
/// Source Overrides (5.2.12.5): IRQ 0 -> GSI 2 and the SCI, level
/// triggered and active high, at its own GSI.
fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&cfg.lapic_address.to_le_bytes());
    b.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for id in 0..cfg.vcpus {
        b.extend_from_slice(&[MADT_X2APIC, MADT_X2APIC_LEN, 0, 0]);
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&X2APIC_ENABLED.to_le_bytes());
        b.extend_from_slice(&id.to_le_bytes()); // ACPI Processor UID
    }
    b.extend_from_slice(&[MADT_IOAPIC, MADT_IOAPIC_LEN, cfg.ioapic_id, 0]);
    b.extend_from_slice(&cfg.ioapic_address.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // Global System Interrupt Base
    let overrides = [
        (PIT_IRQ, PIT_GSI, INTI_CONFORMS),
        (cfg.sci_irq, u32::from(cfg.sci_irq), INTI_LEVEL_ACTIVE_HIGH),
    ];
    for (irq, gsi, flags) in overrides {
        b.extend_from_slice(&[MADT_ISO, MADT_ISO_LEN, 0, irq]);
        b.extend_from_slice(&gsi.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
    }
    table(b"APIC", MADT_REVISION, &b)
}

/// A table's 32-bit Length field (5.2.6). Every table lies below
/// [`ACPI_END`] ([`Layout::new`] checks), so its length fits; the
/// saturated value is unreachable.
fn length_field(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes()
}

/// A 32-bit table address field (FIRMWARE_CTRL, DSDT; 5.2.9): the
/// address, or 0 for one above 4 GiB, which 5.2.9 lets the X_ form carry
/// alone. Tables lie below [`ACPI_END`], so the address always fits.
fn address_32(gpa: u64) -> [u8; 4] {
    u32::try_from(gpa).unwrap_or(0).to_le_bytes()
}

/// A system description table: the header (5.2.6) and `body`, with the
/// checksum making all its bytes sum to 0.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&length_field(len));
    t.push(revision);
    t.push(0);
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
    t.extend_from_slice(body);
    set_checksum(&mut t, 9, 0..len);
    t
}

/// Sets the byte at `at` so that the bytes in `range` sum to 0 (mod 256).
fn set_checksum(t: &mut [u8], at: usize, range: core::ops::Range<usize>) {
    put(t, at, &[0]);
    let sum = t
        .get(range)
        .unwrap_or(&[])
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b));
    put(t, at, &[0u8.wrapping_sub(sum)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::VecMemory;
    use std::vec::Vec;

    /// A table read back from guest memory.
    struct Table {
        at: u64,
        bytes: Vec<u8>,
    }

    impl Table {
        /// Reads a table at `at` by its header's length field.
        fn read(mem: &VecMemory, at: u64) -> Table {
            let len = mem.read_u32(GuestPhysAddr(at + 4)).unwrap();
            let bytes = mem.bytes[at as usize..at as usize + len as usize].to_vec();
            Table { at, bytes }
        }
        fn signature(&self) -> &[u8] {
            &self.bytes[..4]
        }
        fn u8(&self, at: usize) -> u8 {
            self.bytes[at]
        }
        fn u16(&self, at: usize) -> u16 {
            u16::from_le_bytes(self.bytes[at..at + 2].try_into().unwrap())
        }
        fn u32(&self, at: usize) -> u32 {
            u32::from_le_bytes(self.bytes[at..at + 4].try_into().unwrap())
        }
        fn u64(&self, at: usize) -> u64 {
            u64::from_le_bytes(self.bytes[at..at + 8].try_into().unwrap())
        }
        fn end(&self) -> u64 {
            self.at + self.bytes.len() as u64
        }
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// The tables of a VM with `vcpus` vCPUs: RSDP bytes, then the tables
    /// by signature, checking every header on the way.
    fn tables(vcpus: u32) -> (Vec<u8>, Vec<Table>) {
        let mut mem = VecMemory::new(ACPI_END as usize);
        let rsdp_at = build(&mut mem, &AcpiConfig::new(vcpus)).unwrap();
        assert_eq!(rsdp_at, 0xe0000);
        let rsdp = mem.bytes[rsdp_at as usize..rsdp_at as usize + 36].to_vec();
        let xsdt = Table::read(&mem, u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
        let mut found = std::vec![];
        for i in 0..(xsdt.bytes.len() - 36) / 8 {
            found.push(Table::read(&mem, xsdt.u64(36 + 8 * i)));
        }
        let (dsdt_at, facs_at) = (found[0].u64(140), found[0].u64(132));
        found.push(Table::read(&mem, dsdt_at));
        let facs = Table {
            at: facs_at,
            bytes: mem.bytes[facs_at as usize..facs_at as usize + 64].to_vec(),
        };
        found.push(facs);
        found.insert(0, xsdt);
        (rsdp, found)
    }

    fn find<'a>(tables: &'a [Table], signature: &[u8]) -> &'a Table {
        tables.iter().find(|t| t.signature() == signature).unwrap()
    }

    #[test]
    fn the_rsdp_is_revision_2_with_both_checksums() {
        let (rsdp, tables) = tables(4);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(&rsdp[9..15], b"ATOLL ");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        assert_eq!(
            u32::from_le_bytes(rsdp[16..20].try_into().unwrap()),
            0,
            "no RSDT"
        );
        assert_eq!(u32::from_le_bytes(rsdp[20..24].try_into().unwrap()), 36);
        assert_eq!(&tables[0].signature(), b"XSDT");
    }

    #[test]
    fn every_table_has_a_good_header_and_sums_to_zero() {
        let (_, tables) = tables(8);
        let expected: [(&[u8], u32, u8); 5] = [
            (b"XSDT", 52, 1),
            (b"FACP", 276, 6),
            (b"APIC", 44 + 8 * 16 + 12 + 2 * 10, 5),
            (b"DSDT", 36 + 14, 2),
            (b"FACS", 64, 2),
        ];
        assert_eq!(tables.len(), expected.len());
        for (t, (signature, len, revision)) in tables.iter().zip(expected) {
            assert_eq!(t.signature(), signature);
            assert_eq!(t.u32(4), len);
            assert!(t.at >= RSDP_ADDRESS && t.end() <= ACPI_END);
            if signature == b"FACS" {
                // The FACS has no checksum and its version at offset 32.
                assert_eq!(t.u8(32), revision);
                assert_eq!(t.at % 64, 0, "64-byte aligned");
                continue;
            }
            assert_eq!(t.u8(8), revision, "{:?}", t.signature());
            assert_eq!(sum(&t.bytes), 0, "{:?}", t.signature());
            assert_eq!(&t.bytes[10..16], b"ATOLL ");
            assert_eq!(t.at % 8, 0);
        }
    }

    #[test]
    fn tables_do_not_overlap() {
        let (_, tables) = tables(255);
        let mut spans: Vec<(u64, u64)> = tables.iter().map(|t| (t.at, t.end())).collect();
        spans.push((RSDP_ADDRESS, RSDP_ADDRESS + 36));
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{pair:x?}");
        }
    }

    #[test]
    fn the_fadt_describes_the_pm1_blocks_reset_and_boot_flags() {
        let (_, tables) = tables(2);
        let fadt = find(&tables, b"FACP");
        let (facs, dsdt) = (find(&tables, b"FACS").at, find(&tables, b"DSDT").at);
        assert_eq!(u64::from(fadt.u32(36)), facs);
        assert_eq!(u64::from(fadt.u32(40)), dsdt);
        assert_eq!((fadt.u64(132), fadt.u64(140)), (facs, dsdt));
        assert_eq!(fadt.u16(46), 9, "SCI_INT");
        assert_eq!(fadt.u32(48), 0, "SMI_CMD: none");
        assert_eq!(fadt.u32(56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(fadt.u32(60), 0, "PM1b_EVT_BLK");
        assert_eq!(fadt.u32(64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(fadt.u32(76), 0, "PM_TMR_BLK");
        assert_eq!((fadt.u32(80), fadt.u32(84)), (0, 0), "no GPE blocks");
        assert_eq!((fadt.u8(88), fadt.u8(89)), (4, 2), "PM1 lengths");
        assert_eq!((fadt.u8(91), fadt.u8(92), fadt.u8(93)), (0, 0, 0));
        let boot_arch = fadt.u16(109);
        assert_eq!(boot_arch & 0b10, 0, "no 8042");
        assert_eq!(boot_arch, 0b101);
        let flags = fadt.u32(112);
        assert_ne!(flags & 1, 0, "WBINVD");
        assert_ne!(flags & 1 << 10, 0, "RESET_REG_SUP");
        assert_eq!(flags & 1 << 20, 0, "not hardware-reduced");
        assert_eq!(&fadt.bytes[116..128], &gas(1, 8, 1, 0xcf9));
        assert_eq!(fadt.u8(128), 6, "RESET_VALUE");
        assert_eq!(fadt.u8(131), 4, "FADT minor version");
        assert_eq!(&fadt.bytes[148..160], &gas(1, 32, 2, 0x600));
        assert_eq!(&fadt.bytes[160..172], &[0; 12], "no PM1b");
        assert_eq!(&fadt.bytes[172..184], &gas(1, 16, 2, 0x604));
        assert!(fadt.bytes[184..276].iter().all(|b| *b == 0));
    }

    fn gas(space: u8, bits: u8, access: u8, address: u64) -> Vec<u8> {
        let mut g = std::vec![space, bits, 0, access];
        g.extend_from_slice(&address.to_le_bytes());
        g
    }

    /// The MADT's interrupt controller structures: (type, bytes).
    fn madt_entries(madt: &Table) -> Vec<(u8, Vec<u8>)> {
        let mut at = 44;
        let mut out = std::vec![];
        while at < madt.bytes.len() {
            let len = madt.bytes[at + 1] as usize;
            assert!(len >= 2);
            out.push((madt.bytes[at], madt.bytes[at..at + len].to_vec()));
            at += len;
        }
        assert_eq!(at, madt.bytes.len(), "entries fill the table exactly");
        out
    }

    #[test]
    fn the_madt_lists_x2apics_the_ioapic_and_two_overrides() {
        let vcpus = 5;
        let (_, tables) = tables(vcpus);
        let madt = find(&tables, b"APIC");
        assert_eq!(madt.u32(36), 0xfee0_0000);
        assert_eq!(madt.u32(40), 1, "PCAT_COMPAT");
        let entries = madt_entries(madt);
        assert_eq!(entries.len(), vcpus as usize + 1 + 2);
        for (i, (kind, e)) in entries.iter().take(vcpus as usize).enumerate() {
            assert_eq!((*kind, e.len()), (9, 16));
            let word = |at: usize| u32::from_le_bytes(e[at..at + 4].try_into().unwrap());
            assert_eq!((word(4), word(8), word(12)), (i as u32, 1, i as u32));
        }
        let ioapic = &entries[vcpus as usize].1;
        assert_eq!(
            ioapic,
            &[1, 12, 0, 0, 0x00, 0x00, 0xc0, 0xfe, 0, 0, 0, 0].to_vec()
        );
        let iso: Vec<&Vec<u8>> = entries[vcpus as usize + 1..].iter().map(|e| &e.1).collect();
        assert_eq!(iso[0], &[2, 10, 0, 0, 2, 0, 0, 0, 0, 0].to_vec());
        assert_eq!(iso[1], &[2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0].to_vec());
    }

    #[test]
    fn the_dsdt_is_exactly_the_s5_package() {
        let (_, tables) = tables(1);
        let dsdt = find(&tables, b"DSDT");
        assert_eq!(
            &dsdt.bytes[36..],
            &[
                0x08, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00
            ]
        );
        // PkgLength counts from itself to the end of the AML.
        assert_eq!(usize::from(DSDT_AML[6]), DSDT_AML.len() - 6);
    }

    #[test]
    fn up_to_255_vcpus_fit_below_1mib_and_too_many_is_an_error() {
        for vcpus in [0, 1, 64, 255] {
            let (_, tables) = tables(vcpus);
            assert!(tables.iter().all(|t| t.end() <= ACPI_END));
        }
        let mut mem = VecMemory::new(ACPI_END as usize);
        for vcpus in [9000, u32::MAX] {
            assert!(build(&mut mem, &AcpiConfig::new(vcpus)).is_err());
        }
        assert!(mem.bytes.iter().all(|b| *b == 0), "nothing written");
        let mut small = VecMemory::new(ACPI_END as usize - 1);
        assert!(build(&mut small, &AcpiConfig::new(1)).is_err());
    }

    #[test]
    fn power_off_is_slp_en_with_slp_typ_5() {
        assert!(is_power_off(SLP_EN | SLP_TYP_S5 << 10));
        assert!(is_power_off(SLP_EN | SLP_TYP_S5 << 10 | 1));
        assert!(!is_power_off(SLP_TYP_S5 << 10), "SLP_EN clear");
        assert!(!is_power_off(SLP_EN | 1 << 10), "S1");
        assert!(!is_power_off(SLP_EN));
    }

    proptest::proptest! {
        #[test]
        fn any_config_builds_or_fails_cleanly(vcpus in 0u32..10_000, port in proptest::prelude::any::<u16>(), irq in proptest::prelude::any::<u8>()) {
            let mut mem = VecMemory::new(ACPI_END as usize);
            let cfg = AcpiConfig { vcpus, pm1a_control_port: port, sci_irq: irq, ..AcpiConfig::new(0) };
            if build(&mut mem, &cfg).is_ok() {
                let xsdt_at = mem.read_u64(GuestPhysAddr(RSDP_ADDRESS + 24)).unwrap();
                let madt_at = mem.read_u64(GuestPhysAddr(xsdt_at + 36 + 8)).unwrap();
                let madt_len = mem.read_u32(GuestPhysAddr(madt_at + 4)).unwrap();
                proptest::prop_assert!(madt_at + u64::from(madt_len) <= ACPI_END);
            }
        }
    }
}
