//! The MMIO instruction decoder and emulator on arbitrary instruction
//! bytes and register values, in every code mode. Neither may panic;
//! every decoded length must fit the bytes given and the 15-byte limit
//! (SDM Vol. 2A 2.3.11), and `emulate` must either move RIP past exactly
//! that instruction or leave every register as it was.
//!
//! Input: one flags byte, one byte giving the instruction length (0..=31),
//! the instruction bytes, then register values, 8 bytes each, RAX..R15
//! (what is missing is zero).
//!
//! Flags: bits 0-3 place the instruction 1 to 16 bytes before a page
//! boundary, so that it may straddle it; bits 4-5 pick the paging (off;
//! 4-level with both pages mapped; 4-level with the second page missing;
//! 4-level with the first page the last of the address space and the
//! second linear 0, which a 64-bit fetch must not wrap to); bits 6-7 the
//! device offset (start, middle, 4 and 1 bytes before the device's end).
#![no_main]

use atoll_vmm::GuestPhysAddr;
use atoll_vmm::dispatch::Outcome;
use atoll_vmm::exit::Registers;
use atoll_vmm::memory::{GuestMemory, VecMemory};
use atoll_vmm::mmio::{self, Access, CodeMode, DecodeError, MmioBus, Operation};
use atoll_vmm::walk::Paging;
use libfuzzer_sys::fuzz_target;

const MODES: [CodeMode; 3] = [CodeMode::Bits16, CodeMode::Bits32, CodeMode::Bits64];
const DEV: u64 = 0xd000_0000;
const DEV_LEN: u64 = 0x100;

/// A device that checks what the emulator asks of it.
struct Bus {
    accesses: u32,
}

impl Bus {
    fn inside(gpa: GuestPhysAddr, size: u8) -> bool {
        assert!(matches!(size, 1 | 2 | 4 | 8), "size {size}");
        gpa.0 >= DEV && gpa.0 + u64::from(size) <= DEV + DEV_LEN
    }
}

impl MmioBus for Bus {
    fn claims(&self, gpa: GuestPhysAddr) -> bool {
        Bus::inside(gpa, 1)
    }

    fn read(&mut self, gpa: GuestPhysAddr, size: u8) -> Option<u64> {
        self.accesses += 1;
        Bus::inside(gpa, size).then_some(0x8877_6655_4433_2211)
    }

    fn write(&mut self, gpa: GuestPhysAddr, size: u8, value: u64) -> bool {
        self.accesses += 1;
        if size < 8 {
            assert_eq!(value >> (8 * size), 0, "store value wider than {size}");
        }
        Bus::inside(gpa, size)
    }
}

fn check(access: &Access, bytes: &[u8]) {
    let len = usize::from(access.len);
    assert!(len >= 1 && len <= bytes.len() && len <= 15, "{access:?}");
    assert!(matches!(access.size, 1 | 2 | 4 | 8), "{access:?}");
    match access.operation {
        Operation::Load {
            reg,
            high_byte,
            dest_size,
        } => {
            assert!(reg < 16, "{access:?}");
            assert!(matches!(dest_size, 1 | 2 | 4 | 8) && dest_size >= access.size);
            assert!(!high_byte || (reg < 4 && access.size == 1 && dest_size == 1));
        }
        Operation::Store { value } => {
            if access.size < 8 {
                assert_eq!(value >> (8 * access.size), 0, "{access:?}");
            }
        }
    }
}

fn put(m: &mut VecMemory, at: u64, v: u64) {
    m.write(GuestPhysAddr(at), &v.to_le_bytes()).unwrap();
}

/// Paging for `variant`, with the page at `first` mapped to physical
/// 0x1000 and the next one (unless left out) to 0x2000.
fn paging(m: &mut VecMemory, variant: u8, first: u64) -> Paging {
    if variant == 0 {
        return Paging {
            cr0: 1,
            cr3: 0,
            cr4: 0,
            efer: 0,
        };
    }
    // Tables at 0x4000 (PML4) .. from 0x5000 on.
    let mut next = 0x5000;
    let mut map = |m: &mut VecMemory, linear: u64, phys: u64| {
        let mut table = 0x4000u64;
        for shift in [39, 30, 21] {
            let at = table + ((linear >> shift) & 0x1ff) * 8;
            let e = m.read_u64(GuestPhysAddr(at)).unwrap();
            table = if e & 1 != 0 {
                e & !0xfff
            } else {
                let t = next;
                next += 0x1000;
                put(m, at, t | 3);
                t
            };
        }
        put(m, table + ((linear >> 12) & 0x1ff) * 8, phys | 3);
    };
    map(m, first, 0x1000);
    if variant != 2 {
        map(m, first.wrapping_add(0x1000), 0x2000);
    }
    Paging {
        cr0: 1 << 31 | 1,
        cr3: 0x4000,
        cr4: 1 << 5,
        efer: 1 << 10 | 1 << 8,
    }
}

fuzz_target!(|data: &[u8]| {
    let (&flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (&n, rest) = rest.split_first().unwrap_or((&0, &[]));
    let (insn, rest) = rest.split_at(usize::from(n & 31).min(rest.len()));
    let mut regs = Registers::default();
    for (r, chunk) in regs.gpr.iter_mut().zip(rest.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *r = u64::from_le_bytes(b);
    }

    // Part 1: decode alone.
    for mode in MODES {
        match mmio::decode(insn, mode, &regs) {
            Ok(access) => {
                check(&access, insn);
                // Only the instruction's own bytes count.
                let own = &insn[..usize::from(access.len)];
                assert_eq!(mmio::decode(own, mode, &regs), Ok(access));
                assert_eq!(
                    mmio::decode(&own[..own.len() - 1], mode, &regs),
                    Err(DecodeError::Fetch)
                );
            }
            Err(DecodeError::Mode) => assert_eq!(mode, CodeMode::Bits16),
            Err(_) => {}
        }
    }

    // Part 2: emulate, with the bytes in guest memory ending up to 15
    // bytes before a page boundary.
    let variant = (flags >> 4) & 3;
    let before = u64::from(flags & 15) + 1;
    // The last page of the address space is followed by linear 0.
    let page = if variant == 3 {
        0xffff_ffff_ffff_f000
    } else {
        0x40_0000
    };
    let mut mem = VecMemory::new(0x10000);
    let paging = paging(&mut mem, variant, page);
    // The bytes end up at physical 0x2000 - before: under paging the
    // first page maps to 0x1000 and the second to 0x2000; without paging
    // RIP is that physical address.
    let phys = 0x2000 - before;
    let rip = if variant == 0 {
        phys
    } else {
        page + (0x1000 - before)
    };
    mem.write(GuestPhysAddr(phys), insn).unwrap();
    let offset = [0, DEV_LEN / 2, DEV_LEN - 4, DEV_LEN - 1][usize::from(flags >> 6)];
    let gpa = GuestPhysAddr(DEV + offset);
    for mode in MODES {
        let mut r = regs;
        r.rip = rip;
        let mut bus = Bus { accesses: 0 };
        let outcome = mmio::emulate(gpa, &mut r, mode, &paging, &mem, &mut bus);
        assert!(bus.accesses <= 1);
        match outcome {
            Some(Outcome::Resume) => {
                let moved = r.rip.wrapping_sub(rip);
                let moved = if mode == CodeMode::Bits64 {
                    moved
                } else {
                    moved & 0xffff_ffff
                };
                assert!((1..=15).contains(&moved), "RIP moved by {moved}");
                // By the length of the instruction fetched and decoded.
                let mut bytes = [0u8; 15];
                let got = mmio::fetch(&mem, &paging, mode, rip, &mut bytes).unwrap();
                let access = mmio::decode(&bytes[..got], mode, &regs).unwrap();
                assert_eq!(moved, u64::from(access.len));
                if mode != CodeMode::Bits64 {
                    assert_eq!(r.rip >> 32, 0);
                }
                // At most the one destination register changed.
                let changed = r
                    .gpr
                    .iter()
                    .zip(regs.gpr.iter())
                    .filter(|(a, b)| a != b)
                    .count();
                assert!(changed <= 1);
            }
            Some(Outcome::Stop(_)) => {
                let mut want = regs;
                want.rip = rip;
                assert_eq!(r, want, "a stopped VM's registers changed");
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
});
