//! The ACPI parsers on arbitrary tables: the RSDP, the RSDT or XSDT, the
//! MADT, the FADT and the `\_S5` package of the DSDT or an SSDT, the SRAT
//! and the SLIT (ACPI 6.5, chapter 5), read through a fake
//! [`PhysMemory`] built from the input, as the boot CPU reads firmware's.
//!
//! None may panic, loop or read outside the memory. Beyond that:
//! - a MADT or SRAT that parses rebuilds, from the parsed values alone,
//!   into a table that parses to the same values (round trip), and lists
//!   each APIC ID once;
//! - a SLIT that parses has a `localities` x `localities` matrix with 10
//!   on the diagonal and no reserved distance (0-9) anywhere, and
//!   `distance` answers from it;
//! - a soft-off answer names a PM1a control port;
//! - every error prints.
//!
//! Input: one flags byte, then tables, each a little-endian u16 length and
//! that many bytes (cut short if the input ends); at most 16 tables. The
//! tables lie 16-byte aligned from [`BASE`] on, after a 36-byte RSDP.
//! Flags:
//! - bit 0: the RSDP is ACPI 2.0 (XSDT, 8-byte entries), else 1.0 (RSDT);
//! - bit 1: fix each table's length field (bytes 4-7) to its size and its
//!   checksum (byte 9), so that the fuzzer gets past them;
//! - bit 2: link the tables: a root table listing all of them is added
//!   after them, and each FADT's DSDT pointers (offsets 40 and 140) point
//!   to the first table signed "DSDT"; else the first table is the root;
//! - bit 3: the first table, unchanged, is the boot loader's RSDP copy
//!   (and is not listed), else the harness writes a valid RSDP.
//!
//! Each table is also fed straight to the MADT, SRAT, SLIT and `\_S5`
//! parsers, whatever its signature.
#![no_main]

use atoll_platform::HostPhysAddr;
use atoll_platform::acpi::numa::{ProximityDomain, Slit, Srat};
use atoll_platform::acpi::{Madt, PhysMemory, Tables, find_s5_package};
use atoll_platform::multiboot2::RsdpCopy;
use libfuzzer_sys::fuzz_target;

/// Where the fake memory starts: the BIOS area firmware puts tables in.
const BASE: u64 = 0xe0000;
const HEADER_LEN: usize = 36;
const MAX_TABLES: usize = 16;

struct Memory(Vec<u8>);

impl PhysMemory for Memory {
    fn bytes(&self, addr: HostPhysAddr, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(addr.0.checked_sub(BASE)?).ok()?;
        self.0.get(start..start.checked_add(len)?)
    }
}

fn fix_checksum(bytes: &mut [u8], at: usize) {
    if let Some(&old) = bytes.get(at) {
        let sum = bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        bytes[at] = old.wrapping_sub(sum);
    }
}

/// A table with a valid header around `body`.
fn make_table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = signature.to_vec();
    t.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
    t.extend_from_slice(&[revision, 0]);
    t.resize(HEADER_LEN, b' ');
    t.extend_from_slice(body);
    fix_checksum(&mut t, 9);
    t
}

fn rsdp(xsdt: bool, root: u64) -> Vec<u8> {
    let mut r = b"RSD PTR \0FUZZ  ".to_vec();
    r.push(if xsdt { 2 } else { 0 });
    r.extend_from_slice(&(root as u32).to_le_bytes());
    fix_checksum(&mut r, 8);
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&root.to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    fix_checksum(&mut r, 32);
    r
}

fn split_tables(mut rest: &[u8]) -> Vec<Vec<u8>> {
    let mut tables = Vec::new();
    while let [l0, l1, tail @ ..] = rest {
        if tables.len() == MAX_TABLES {
            break;
        }
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        tables.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    tables
}

/// Offsets of `tables` laid out 16-byte aligned after the RSDP.
fn offsets(tables: &[Vec<u8>]) -> Vec<usize> {
    let mut at = 48;
    tables
        .iter()
        .map(|t| {
            let here = at;
            at = (at + t.len()).next_multiple_of(16);
            here
        })
        .collect()
}

fn check_madt(table: &[u8]) {
    if let Ok(madt) = Madt::parse(table) {
        check_madt_values(&madt);
    }
}

/// Each APIC ID once, and a rebuilt table parses the same.
fn check_madt_values(madt: &Madt) {
    let mut ids: Vec<u32> = madt.cpus.iter().map(|c| c.apic_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), madt.cpus.len(), "an APIC ID twice");
    let mut body = (madt.local_apic_address.0 as u32).to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 4]);
    for cpu in &madt.cpus {
        if cpu.x2apic {
            body.extend_from_slice(&[9, 16, 0, 0]);
            body.extend_from_slice(&cpu.apic_id.to_le_bytes());
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(&cpu.uid.to_le_bytes());
        } else {
            body.extend_from_slice(&[0, 8, cpu.uid as u8, cpu.apic_id as u8, 1, 0, 0, 0]);
        }
    }
    for io in &madt.ioapics {
        body.extend_from_slice(&[1, 12, io.id, 0]);
        body.extend_from_slice(&(io.address.0 as u32).to_le_bytes());
        body.extend_from_slice(&io.gsi_base.to_le_bytes());
    }
    assert_eq!(
        Madt::parse(&make_table(b"APIC", 1, &body)).as_ref(),
        Ok(madt)
    );
}

fn check_srat(table: &[u8]) {
    let Ok(srat) = Srat::parse(table) else { return };
    let mut body = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for cpu in &srat.cpus {
        assert_eq!(srat.domain_of_apic(cpu.apic_id), Some(cpu.domain));
        let d = cpu.domain.0.to_le_bytes();
        if cpu.x2apic {
            body.extend_from_slice(&[2, 24, 0, 0]);
            body.extend_from_slice(&d);
            body.extend_from_slice(&cpu.apic_id.to_le_bytes());
            body.extend_from_slice(&[1, 0, 0, 0]);
            body.extend_from_slice(&[0; 8]);
        } else {
            body.extend_from_slice(&[0, 16, d[0], cpu.apic_id as u8, 1, 0, 0, 0]);
            body.extend_from_slice(&[0, d[1], d[2], d[3], 0, 0, 0, 0]);
        }
    }
    for m in &srat.memory {
        assert!(m.len > 0 && m.base.0.checked_add(m.len).is_some(), "{m:?}");
        assert!(m.contains(m.base) && !m.contains(HostPhysAddr(m.end())));
        let flags = 1 | u32::from(m.hot_pluggable) << 1 | u32::from(m.non_volatile) << 2;
        body.extend_from_slice(&[1, 40]);
        body.extend_from_slice(&m.domain.0.to_le_bytes());
        body.extend_from_slice(&[0; 2]);
        body.extend_from_slice(&m.base.0.to_le_bytes());
        body.extend_from_slice(&m.len.to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&flags.to_le_bytes());
        body.extend_from_slice(&[0; 8]);
    }
    // Revision 3: 32-bit domains in every structure.
    assert_eq!(Srat::parse(&make_table(b"SRAT", 3, &body)), Ok(srat));
}

fn check_slit(slit: &Slit<'_>) {
    let n = slit.localities();
    assert_eq!(Some(slit.matrix().len()), n.checked_mul(n));
    for (i, &d) in slit.matrix().iter().enumerate() {
        let (from, to) = (i / n, i % n);
        assert!(
            if from == to { d == 10 } else { d >= 10 },
            "{from}->{to}: {d}"
        );
        let domain = |x: usize| ProximityDomain(x as u32);
        assert_eq!(slit.distance(domain(from), domain(to)), Some(d));
    }
    let past = ProximityDomain(u32::try_from(n).unwrap_or(u32::MAX));
    assert_eq!(slit.distance(past, ProximityDomain(0)), None);
}

/// An error must print (its message names the table and what is wrong).
fn print(e: atoll_platform::acpi::Error) {
    assert!(!e.to_string().is_empty());
}

/// The whole walk, as the boot CPU does it.
fn walk(mem: &Memory, copy: RsdpCopy<'_>) {
    let tables = match Tables::new(mem, Some(copy)) {
        Ok(t) => t,
        Err(e) => return print(e),
    };
    for signature in [*b"APIC", *b"FACP", *b"SRAT", *b"SLIT", *b"SSDT"] {
        tables
            .all(signature)
            .filter_map(Result::err)
            .for_each(print);
    }
    match tables.madt() {
        Ok(madt) => check_madt_values(&madt),
        Err(e) => print(e),
    }
    match tables.soft_off() {
        Ok(Some(off)) => assert_ne!(off.pm1a_control_port, 0),
        Ok(None) => {}
        Err(e) => print(e),
    }
    if let Err(e) = tables.srat() {
        print(e);
    }
    match tables.slit() {
        Ok(Some(slit)) => check_slit(&slit),
        Ok(None) => {}
        Err(e) => print(e),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (xsdt, fix, link, raw_rsdp) = (
        flags & 1 != 0,
        flags & 2 != 0,
        flags & 4 != 0,
        flags & 8 != 0,
    );
    let mut tables = split_tables(rest);
    for t in &tables {
        check_madt(t);
        check_srat(t);
        if let Ok(slit) = Slit::parse(t) {
            check_slit(&slit);
        }
        let _ = find_s5_package(t);
    }
    let raw = if raw_rsdp && !tables.is_empty() {
        Some(tables.remove(0))
    } else {
        None
    };
    if link {
        let at = offsets(&tables);
        let dsdt = tables
            .iter()
            .position(|t| t.starts_with(b"DSDT"))
            .map_or(0, |i| BASE + at[i] as u64);
        for t in tables.iter_mut().filter(|t| t.starts_with(b"FACP")) {
            if let Some(field) = t.get_mut(40..44) {
                field.copy_from_slice(&(dsdt as u32).to_le_bytes());
            }
            if let Some(field) = t.get_mut(140..148) {
                field.copy_from_slice(&dsdt.to_le_bytes());
            }
        }
        let entries: Vec<u8> = at
            .iter()
            .flat_map(|&o| {
                let addr = BASE + o as u64;
                if xsdt {
                    addr.to_le_bytes().to_vec()
                } else {
                    (addr as u32).to_le_bytes().to_vec()
                }
            })
            .collect();
        let signature = if xsdt { b"XSDT" } else { b"RSDT" };
        tables.push(make_table(signature, 1, &entries));
    }
    if fix {
        for t in tables.iter_mut().filter(|t| t.len() >= 10) {
            let len = t.len() as u32;
            t[4..8].copy_from_slice(&len.to_le_bytes());
            fix_checksum(t, 9);
        }
    }
    let at = offsets(&tables);
    let root = match (link, at.last(), at.first()) {
        (true, Some(&last), _) => BASE + last as u64,
        (false, _, Some(&first)) => BASE + first as u64,
        _ => BASE + 48,
    };
    let mut memory = rsdp(xsdt, root);
    for (t, &o) in tables.iter().zip(&at) {
        memory.resize(o, 0);
        memory.extend_from_slice(t);
    }
    let mem = Memory(memory);
    match raw {
        Some(copy) if xsdt => walk(&mem, RsdpCopy::V2(&copy)),
        Some(copy) => walk(&mem, RsdpCopy::V1(&copy)),
        None => {
            let copy = mem.0[..36].to_vec();
            walk(
                &mem,
                if xsdt {
                    RsdpCopy::V2(&copy)
                } else {
                    RsdpCopy::V1(&copy)
                },
            );
        }
    }
});
