//! Memory-mapped device accesses: an EPT violation at a device's
//! guest-physical address is emulated by decoding the instruction that
//! caused it (the exit gives the address, not the operands) and carrying
//! out its data move against the device.
//!
//! Only the MOV forms compilers and drivers use on device registers are
//! decoded (tests/docs/hostile-inputs.md, class 1: decode only what you
//! support; everything else stops the VM):
//!
//! | opcode | form |
//! |---|---|
//! | 88 /r, 89 /r | MOV r/m, r (8 / 16, 32, 64 bits) |
//! | 8A /r, 8B /r | MOV r, r/m |
//! | C6 /0 ib, C7 /0 iz | MOV r/m, imm (imm32 sign-extended for 64 bits) |
//! | 0F B6 /r, 0F B7 /r | MOVZX r, r/m8 / r/m16 |
//! | A0, A1 | MOV AL / eAX, moffs |
//! | A2, A3 | MOV moffs, AL / eAX |
//!
//! Prefixes: 66 (16-bit operands), segment overrides (ignored: the exit
//! gives the address), 67 in 64-bit code (32-bit addresses), REX in 64-bit
//! code. ModRM with SIB, disp8, disp32 and RIP-relative addressing; the
//! register operand (mod = 11) is never the memory one, whatever the
//! prefixes (XSA-123). LOCK, REP/REPNE, 67 in 32-bit code (16-bit
//! addressing) and 16-bit code are refused, as is anything longer than 15
//! bytes. The instruction bytes are fetched through the guest's own page
//! tables, page by page (an instruction may straddle two pages), at most
//! 15 bytes; outside 64-bit mode the offset wraps at 4 GiB, in 64-bit mode
//! the fetch stops at the top of the address space (XSA-186).

use crate::addr::GuestPhysAddr;
use crate::bits::usize_from;
use crate::dispatch::{Outcome, StopReason};
use crate::exit::Registers;
use crate::memory::GuestMemory;
use crate::walk::{self, Paging};

/// The longest x86 instruction.
const MAX_LEN: usize = 15;

/// What the decoded instruction does with memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Read `size` bytes, zero-extended, into the low `dest_size` bytes of
    /// register `reg` (`high_byte`: into bits 15:8 of RAX..RBX, i.e. AH..BH).
    /// `dest_size` is `size` for MOV and the operand size for MOVZX.
    Load {
        /// The destination register ([`crate::exit::gpr`] number).
        reg: usize,
        /// Into bits 15:8 (AH..BH) rather than the low bytes.
        high_byte: bool,
        /// Bytes of the register written.
        dest_size: u8,
    },
    /// Write `size` bytes of this value (bits above `size` bytes are zero).
    Store {
        /// The value to write.
        value: u64,
    },
}

/// A decoded MMIO instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Bytes accessed: 1, 2, 4 or 8.
    pub size: u8,
    /// What it does with them.
    pub operation: Operation,
    /// Instruction length: RIP moves by this much.
    pub len: u8,
}

/// Why an instruction cannot be emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes at RIP could not be fetched (not mapped, outside RAM), or
    /// the fetch ended inside the instruction.
    Fetch,
    /// Not one of the supported forms: the byte where decoding stopped
    /// (an unsupported opcode, or a prefix such as LOCK or REP; 0x0F for
    /// every two-byte opcode).
    Unsupported(u8),
    /// 16-bit code, which Atoll does not emulate MMIO for.
    Mode,
    /// Longer than 15 bytes, which the processor refuses with #GP
    /// (SDM Vol. 2A 2.3.11).
    TooLong,
}

/// The code segment's mode: 64-bit (CS.L with EFER.LMA) or 32-bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeMode {
    /// 16-bit code (CS.D clear, not 64-bit).
    Bits16,
    /// 32-bit code (CS.D set).
    Bits32,
    /// 64-bit code (CS.L with EFER.LMA).
    Bits64,
}

/// The low `size` bytes.
fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Fetches up to 15 bytes at `rip`, translating each page on its own.
///
/// Outside 64-bit mode the instruction pointer is EIP, 32 bits wide
/// (SDM Vol. 1 3.5), so the bytes after 0xFFFF_FFFF are those at 0. In 64-bit mode the fetch ends at the top of the address
/// space rather than wrap to 0: an instruction that crosses it is cut
/// short and the VM stopped (XSA-186 was an emulator that got this
/// truncation wrong).
pub fn fetch(
    mem: &impl GuestMemory,
    paging: &Paging,
    mode: CodeMode,
    rip: u64,
    out: &mut [u8; MAX_LEN],
) -> Result<usize, DecodeError> {
    let mut got = 0;
    while got < MAX_LEN {
        let linear = match mode {
            CodeMode::Bits64 => match rip.checked_add(got as u64) {
                Some(linear) => linear,
                None => break,
            },
            CodeMode::Bits32 | CodeMode::Bits16 => rip.wrapping_add(got as u64) & 0xffff_ffff,
        };
        let Ok(phys) = walk::translate(mem, paging, linear) else {
            break;
        };
        let in_page = usize_from(4096 - (linear & 0xfff));
        let n = in_page.min(MAX_LEN - got);
        let Some(dst) = out.get_mut(got..got + n) else {
            break;
        };
        if mem.read(phys, dst).is_err() {
            break;
        }
        got += n;
    }
    if got == 0 {
        Err(DecodeError::Fetch)
    } else {
        Ok(got)
    }
}

/// Decodes the instruction in `bytes` (as fetched; a short fetch that ends
/// inside the instruction is a fetch error).
///
/// The layout is SDM Vol. 2A 2.1: legacy prefixes (2.1.1), REX in 64-bit
/// mode (2.2.1, immediately before the opcode), the opcode, ModRM and SIB
/// (2.1.5, Tables 2-2 and 2-3), displacement, immediate. Only the length
/// of the addressing bytes matters: the exit gives the guest-physical
/// address, so the effective address is never computed.
pub fn decode(bytes: &[u8], mode: CodeMode, regs: &Registers) -> Result<Access, DecodeError> {
    if mode == CodeMode::Bits16 {
        return Err(DecodeError::Mode);
    }
    let long = mode == CodeMode::Bits64;
    let byte = |i: usize| {
        if i >= MAX_LEN {
            Err(DecodeError::TooLong)
        } else {
            bytes.get(i).copied().ok_or(DecodeError::Fetch)
        }
    };
    let mut i = 0;
    let mut opsize16 = false;
    let mut addr_override = false;
    let mut rex = 0u8;
    loop {
        match byte(i)? {
            0x66 => opsize16 = true,
            0x67 => addr_override = true,
            // Segment overrides: the exit gives the address. They never
            // make a register operand a memory one (XSA-123): mod = 11 is
            // refused below whatever the prefixes.
            0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => {}
            b @ 0x40..=0x4f if long => {
                rex = b;
                i += 1;
                break;
            }
            // LOCK (F0), REP/REPNE (F2, F3) and everything else: an
            // opcode, and none of the supported ones.
            _ => break,
        }
        i += 1;
    }
    // 67 in 32-bit code selects 16-bit addressing (SDM Vol. 2A Table 2-1),
    // with another ModRM layout; it is not decoded.
    if addr_override && !long {
        return Err(DecodeError::Unsupported(0x67));
    }
    // REX.W wins over 66 (SDM Vol. 2A 2.2.1.2).
    let width = if rex & 8 != 0 {
        8
    } else if opsize16 {
        2
    } else {
        4
    };
    let rex_r = if rex & 4 != 0 { 8 } else { 0 };
    let opcode = byte(i)?;
    i += 1;
    let (size, movzx) = match opcode {
        // MOV AL/eAX, moffs and back (SDM Vol. 2B MOV): the offset is as
        // wide as the address size, 8 bytes in 64-bit mode, 4 with 67 or
        // in 32-bit code.
        0xa0..=0xa3 => {
            let size = if opcode & 1 == 0 { 1 } else { width };
            let moffs = if long && !addr_override { 8 } else { 4 };
            let operation = if opcode & 2 == 0 {
                Operation::Load {
                    reg: 0,
                    high_byte: false,
                    dest_size: size,
                }
            } else {
                Operation::Store {
                    value: regs.get(0) & mask(size),
                }
            };
            return finish(i + moffs, bytes, size, operation);
        }
        0x88..=0x8b | 0xc6 | 0xc7 => (if opcode & 1 == 0 { 1 } else { width }, false),
        // MOVZX r16/32/64, r/m8 and r/m16 (SDM Vol. 2B MOVZX).
        0x0f => match byte(i)? {
            0xb6 => {
                i += 1;
                (1, true)
            }
            0xb7 => {
                i += 1;
                (2, true)
            }
            _ => return Err(DecodeError::Unsupported(0x0f)),
        },
        other => return Err(DecodeError::Unsupported(other)),
    };
    let modrm = byte(i)?;
    i += 1;
    let (md, reg_field, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    // mod = 11: a register operand, not a memory access.
    if md == 3 {
        return Err(DecodeError::Unsupported(opcode));
    }
    // SIB and displacement only move the length. The layout is the same
    // with 67 in 64-bit mode (32-bit addresses, SDM Vol. 2A 2.2.1.3).
    if rm == 4 {
        let sib = byte(i)?;
        i += 1;
        if md == 0 && sib & 7 == 5 {
            i += 4; // no base, disp32
        }
    } else if md == 0 && rm == 5 {
        i += 4; // disp32; RIP-relative in 64-bit mode (SDM Vol. 2A 2.2.1.6)
    }
    i += match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    let reg = usize::from(reg_field) | rex_r;
    if movzx {
        return finish(
            i,
            bytes,
            size,
            Operation::Load {
                reg,
                high_byte: false,
                dest_size: width,
            },
        );
    }
    // Byte registers 4-7 are AH, CH, DH, BH without REX and SPL, BPL, SIL,
    // DIL with any REX (SDM Vol. 2A 2.2.1.2).
    let high_byte = size == 1 && rex == 0 && reg_field >= 4;
    let byte_reg = if high_byte { reg - 4 } else { reg };
    let operation = match opcode {
        0x88 | 0x89 => {
            let value = regs.get(byte_reg) >> if high_byte { 8 } else { 0 };
            Operation::Store {
                value: value & mask(size),
            }
        }
        0x8a | 0x8b => Operation::Load {
            reg: byte_reg,
            high_byte,
            dest_size: size,
        },
        _ => {
            // C6 /0 ib, C7 /0 iw or id; the other reg values are not MOV.
            if reg_field != 0 {
                return Err(DecodeError::Unsupported(opcode));
            }
            let imm_len = usize::from(size.min(4));
            let mut imm = [0u8; 4];
            for (k, b) in imm.iter_mut().enumerate().take(imm_len) {
                *b = byte(i + k)?;
            }
            i += imm_len;
            let raw = u32::from_le_bytes(imm);
            // With REX.W the 32-bit immediate is sign-extended (SDM Vol.
            // 2B MOV: "MOV r/m64, imm32").
            let value = match size {
                8 => raw as i32 as i64 as u64,
                _ => u64::from(raw),
            };
            Operation::Store { value }
        }
    };
    finish(i, bytes, size, operation)
}

fn finish(len: usize, bytes: &[u8], size: u8, operation: Operation) -> Result<Access, DecodeError> {
    if len > MAX_LEN {
        return Err(DecodeError::TooLong);
    }
    if len > bytes.len() {
        return Err(DecodeError::Fetch);
    }
    Ok(Access {
        size,
        operation,
        len: u8::try_from(len).map_err(|_| DecodeError::TooLong)?,
    })
}

/// A VM's memory-mapped devices.
pub trait MmioBus {
    /// Whether a device owns the byte at `gpa`.
    fn claims(&self, gpa: GuestPhysAddr) -> bool;
    /// A read of `size` bytes; `None` if it leaves the device.
    fn read(&mut self, gpa: GuestPhysAddr, size: u8) -> Option<u64>;
    /// A write; `false` if it leaves the device.
    fn write(&mut self, gpa: GuestPhysAddr, size: u8, value: u64) -> bool;
}

/// Emulates the access at `gpa` that exited: `None` if no device claims
/// the address (the caller stops the VM); otherwise the instruction is
/// fetched, decoded and carried out, and RIP moves past it, or the VM is
/// stopped because it cannot be.
pub fn emulate(
    gpa: GuestPhysAddr,
    regs: &mut Registers,
    mode: CodeMode,
    paging: &Paging,
    mem: &impl GuestMemory,
    bus: &mut impl MmioBus,
) -> Option<Outcome> {
    if !bus.claims(gpa) {
        return None;
    }
    let stop = |opcode| Some(Outcome::Stop(StopReason::MmioUnsupported { gpa, opcode }));
    let mut bytes = [0u8; MAX_LEN];
    let Ok(n) = fetch(mem, paging, mode, regs.rip, &mut bytes) else {
        return stop(0);
    };
    let access = match decode(bytes.get(..n).unwrap_or(&[]), mode, regs) {
        Ok(a) => a,
        Err(DecodeError::Unsupported(op)) => return stop(op),
        Err(_) => return stop(0),
    };
    let done = match access.operation {
        Operation::Store { value } => bus.write(gpa, access.size, value),
        Operation::Load { .. } => match bus.read(gpa, access.size) {
            Some(value) => {
                complete_load(regs, &access, value);
                true
            }
            None => false,
        },
    };
    if !done {
        return stop(bytes[0]);
    }
    // Outside 64-bit mode RIP is EIP: it wraps at 4 GiB, and VM entry
    // refuses a RIP with bits 63:32 set (SDM Vol. 3C 27.3.1.4).
    let rip = regs.rip.wrapping_add(u64::from(access.len));
    regs.rip = match mode {
        CodeMode::Bits64 => rip,
        CodeMode::Bits32 | CodeMode::Bits16 => rip & 0xffff_ffff,
    };
    Some(Outcome::Resume)
}

/// Writes a loaded value into its register with the architectural rules
/// (SDM Vol. 1 3.4.1.1): the value is zero-extended from `size` bytes to
/// the destination's; a 32-bit destination clears bits 63:32, an 8- or
/// 16-bit one keeps the rest; AH..BH are bits 15:8.
pub fn complete_load(regs: &mut Registers, access: &Access, value: u64) {
    let Operation::Load {
        reg,
        high_byte,
        dest_size,
    } = access.operation
    else {
        return;
    };
    let value = value & mask(access.size) & mask(dest_size);
    let old = regs.get(reg);
    let new = if high_byte {
        (old & !0xff00) | ((value & 0xff) << 8)
    } else if dest_size >= 4 {
        value
    } else {
        (old & !mask(dest_size)) | value
    };
    regs.set(reg, new);
}

/// QEMU's pc-testdev has a scratch MMIO page for exactly this kind of
/// test; Atoll's `testdev` device is one 4 KiB page at this address:
/// reads return what was written there (little-endian).
pub const TESTDEV_BASE: u64 = 0xfeb0_0000;
/// The testdev page's size in bytes.
pub const TESTDEV_LEN: u64 = 4096;

/// The testdev scratch page.
#[derive(Clone, Debug)]
pub struct TestDev {
    bytes: [u8; usize_from(TESTDEV_LEN)],
    /// MMIO accesses it served.
    pub accesses: u64,
}

impl Default for TestDev {
    fn default() -> Self {
        TestDev {
            bytes: [0; usize_from(TESTDEV_LEN)],
            accesses: 0,
        }
    }
}

impl MmioBus for TestDev {
    fn claims(&self, gpa: GuestPhysAddr) -> bool {
        TestDev::claims(gpa, 1)
    }

    fn read(&mut self, gpa: GuestPhysAddr, size: u8) -> Option<u64> {
        TestDev::claims(gpa, size).then(|| TestDev::read(self, gpa, size))
    }

    fn write(&mut self, gpa: GuestPhysAddr, size: u8, value: u64) -> bool {
        let inside = TestDev::claims(gpa, size);
        if inside {
            TestDev::write(self, gpa, size, value);
        }
        inside
    }
}

impl TestDev {
    /// Whether `[gpa, gpa + size)` is wholly inside the page.
    pub fn claims(gpa: GuestPhysAddr, size: u8) -> bool {
        gpa.0 >= TESTDEV_BASE
            && gpa
                .0
                .checked_add(u64::from(size))
                .is_some_and(|end| end <= TESTDEV_BASE + TESTDEV_LEN)
    }

    fn span(gpa: GuestPhysAddr, size: u8) -> Option<core::ops::Range<usize>> {
        let start = usize_from(gpa.0.checked_sub(TESTDEV_BASE)?);
        Some(start..start.checked_add(usize::from(size))?)
    }

    /// A read of `size` bytes at `gpa` (little-endian; outside the page reads 0).
    pub fn read(&mut self, gpa: GuestPhysAddr, size: u8) -> u64 {
        self.accesses += 1;
        let mut v = [0u8; 8];
        if let Some(src) = Self::span(gpa, size).and_then(|r| self.bytes.get(r))
            && let Some(dst) = v.get_mut(..src.len())
        {
            dst.copy_from_slice(src);
        }
        u64::from_le_bytes(v)
    }

    /// A write of `size` bytes at `gpa` (outside the page is ignored).
    pub fn write(&mut self, gpa: GuestPhysAddr, size: u8, value: u64) {
        self.accesses += 1;
        let bytes = value.to_le_bytes();
        if let Some(dst) = Self::span(gpa, size).and_then(|r| self.bytes.get_mut(r))
            && let Some(src) = bytes.get(..dst.len())
        {
            dst.copy_from_slice(src);
        }
    }
}

#[cfg(test)]
mod tests;
