//! The decoder, one case per accepted encoding and per refused one
//! (tests/docs/hostile-inputs.md, class 1), then `emulate` end to end against a fake bus.
//! Encodings follow SDM Vol. 2A chapter 2 and the MOV / MOVZX pages of
//! Vol. 2B; the set covers the forms of Jailhouse's x86 MMIO access tests
//! (64- and 32-bit) and the readb..writeq forms Linux emits.

use alloc::vec::Vec;

use super::*;
use crate::exit::gpr;
use crate::memory::VecMemory;

use CodeMode::{Bits16 as M16, Bits32 as M32, Bits64 as M64};

/// Register `i` holds bytes `(k + 1) << 4 | i` (byte k), so every byte
/// of every register is distinct: RAX = 0x8070_6050_4030_2010, AL = 0x10,
/// AH = 0x20, CH = 0x21, SPL = 0x14, R15B = 0x1f.
fn regs() -> Registers {
    let mut r = Registers::default();
    for (i, g) in r.gpr.iter_mut().enumerate() {
        *g = u64::from_le_bytes(core::array::from_fn(|k| ((k as u8 + 1) << 4) | i as u8));
    }
    r
}

fn g(i: usize) -> u64 {
    regs().gpr[i]
}

fn st(size: u8, value: u64, len: u8) -> Access {
    Access {
        size,
        operation: Operation::Store { value },
        len,
    }
}

fn ld(size: u8, reg: usize, dest_size: u8, len: u8) -> Access {
    Access {
        size,
        operation: Operation::Load {
            reg,
            high_byte: false,
            dest_size,
        },
        len,
    }
}

/// A byte load into AH, CH, DH or BH (`reg` 0..3).
fn ld_high(reg: usize, len: u8) -> Access {
    Access {
        size: 1,
        operation: Operation::Load {
            reg,
            high_byte: true,
            dest_size: 1,
        },
        len,
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A 32-bit displacement or address (0xfeb0_0000) and a 64-bit one.
const D32: [u8; 4] = [0x00, 0x00, 0xb0, 0xfe];
const A64: [u8; 8] = [0x00, 0x00, 0xb0, 0xfe, 0, 0, 0, 0];
/// imm32 0xccdd_eeff: negative, so REX.W sign-extends it.
const IMM: [u8; 4] = [0xff, 0xee, 0xdd, 0xcc];

/// Every accepted form: (what, mode, bytes, decoded). The bytes are
/// exactly the instruction.
fn accepted() -> Vec<(&'static str, CodeMode, Vec<u8>, Access)> {
    let eax = g(0) & 0xffff_ffff;
    let b = |x: &[u8]| x.to_vec();
    let mut v = Vec::new();
    let mut add = |what, mode, bytes: Vec<u8>, access| v.push((what, mode, bytes, access));

    // 88 /r: MOV r/m8, r8. Without REX, reg 4-7 are AH, CH, DH, BH; with
    // any REX they are SPL, BPL, SIL, DIL; REX.R reaches R8B-R15B.
    add("mov [rax], cl", M64, b(&[0x88, 0x08]), st(1, 0x11, 2));
    add("mov [rax], ah", M64, b(&[0x88, 0x20]), st(1, 0x20, 2));
    add("mov [rax], ch", M64, b(&[0x88, 0x28]), st(1, 0x21, 2));
    add("mov [rax], dh", M64, b(&[0x88, 0x30]), st(1, 0x22, 2));
    add("mov [rax], bh", M64, b(&[0x88, 0x38]), st(1, 0x23, 2));
    add(
        "mov [rax], spl",
        M64,
        b(&[0x40, 0x88, 0x20]),
        st(1, 0x14, 3),
    );
    add(
        "mov [rax], bpl",
        M64,
        b(&[0x40, 0x88, 0x28]),
        st(1, 0x15, 3),
    );
    add(
        "mov [rax], sil",
        M64,
        b(&[0x40, 0x88, 0x30]),
        st(1, 0x16, 3),
    );
    add(
        "mov [rax], dil",
        M64,
        b(&[0x40, 0x88, 0x38]),
        st(1, 0x17, 3),
    );
    add(
        "mov [rax], r8b",
        M64,
        b(&[0x44, 0x88, 0x00]),
        st(1, 0x18, 3),
    );
    add(
        "mov [rax], r12b",
        M64,
        b(&[0x44, 0x88, 0x20]),
        st(1, 0x1c, 3),
    );
    add(
        "mov [rax], r15b",
        M64,
        b(&[0x44, 0x88, 0x38]),
        st(1, 0x1f, 3),
    );
    add("mov [r11], al", M64, b(&[0x41, 0x88, 0x03]), st(1, 0x10, 3));
    add(
        "REX.W 88: a byte",
        M64,
        b(&[0x48, 0x88, 0x08]),
        st(1, 0x11, 3),
    );
    // 89 /r: MOV r/m16/32/64, r.
    add(
        "mov [rax], ecx",
        M64,
        b(&[0x89, 0x08]),
        st(4, 0x4131_2111, 2),
    );
    add(
        "mov [rax], cx",
        M64,
        b(&[0x66, 0x89, 0x08]),
        st(2, 0x2111, 3),
    );
    add(
        "mov [rax], rcx",
        M64,
        b(&[0x48, 0x89, 0x08]),
        st(8, g(1), 3),
    );
    add(
        "66 48: REX.W wins",
        M64,
        b(&[0x66, 0x48, 0x89, 0x08]),
        st(8, g(1), 4),
    );
    add(
        "mov [rax], esp",
        M64,
        b(&[0x89, 0x20]),
        st(4, 0x4434_2414, 2),
    );
    add(
        "mov [rax], r9d",
        M64,
        b(&[0x44, 0x89, 0x08]),
        st(4, 0x4939_2919, 3),
    );
    add(
        "mov [rax], r15",
        M64,
        b(&[0x4c, 0x89, 0x38]),
        st(8, g(15), 3),
    );
    add(
        "mov [r11], r8w",
        M64,
        b(&[0x66, 0x45, 0x89, 0x03]),
        st(2, 0x2818, 4),
    );
    // 8A /r, 8B /r: MOV r, r/m.
    add("mov al, [rbx]", M64, b(&[0x8a, 0x03]), ld(1, 0, 1, 2));
    add("mov ah, [rbx]", M64, b(&[0x8a, 0x23]), ld_high(0, 2));
    add("mov ch, [rbx]", M64, b(&[0x8a, 0x2b]), ld_high(1, 2));
    add("mov dh, [rbx]", M64, b(&[0x8a, 0x33]), ld_high(2, 2));
    add("mov bh, [rbx]", M64, b(&[0x8a, 0x3b]), ld_high(3, 2));
    add(
        "mov spl, [rbx]",
        M64,
        b(&[0x40, 0x8a, 0x23]),
        ld(1, 4, 1, 3),
    );
    add(
        "mov dil, [rbx]",
        M64,
        b(&[0x40, 0x8a, 0x3b]),
        ld(1, 7, 1, 3),
    );
    add(
        "mov r8b, [rbx]",
        M64,
        b(&[0x44, 0x8a, 0x03]),
        ld(1, 8, 1, 3),
    );
    add(
        "mov r12b, [rbx]",
        M64,
        b(&[0x44, 0x8a, 0x23]),
        ld(1, 12, 1, 3),
    );
    add("mov eax, [rbx]", M64, b(&[0x8b, 0x03]), ld(4, 0, 4, 2));
    add("mov ax, [rbx]", M64, b(&[0x66, 0x8b, 0x03]), ld(2, 0, 2, 3));
    add(
        "mov rax, [rbx]",
        M64,
        b(&[0x48, 0x8b, 0x03]),
        ld(8, 0, 8, 3),
    );
    add("mov esp, [rbx]", M64, b(&[0x8b, 0x23]), ld(4, 4, 4, 2));
    add(
        "mov r15, [rbx]",
        M64,
        b(&[0x4c, 0x8b, 0x3b]),
        ld(8, 15, 8, 3),
    );
    add("mov r8d, [r8]", M64, b(&[0x45, 0x8b, 0x00]), ld(4, 8, 4, 3));
    add(
        "mov r10w, [rbx]",
        M64,
        b(&[0x66, 0x44, 0x8b, 0x13]),
        ld(2, 10, 2, 4),
    );
    // C6 /0 ib, C7 /0 iw / id: MOV r/m, imm; imm32 sign-extended to 64.
    add(
        "mov byte [rax], 0x5a",
        M64,
        b(&[0xc6, 0x00, 0x5a]),
        st(1, 0x5a, 3),
    );
    add(
        "mov byte [rax+16], 0xff",
        M64,
        b(&[0xc6, 0x40, 0x10, 0xff]),
        st(1, 0xff, 4),
    );
    add(
        "mov byte [r8], 0x80",
        M64,
        b(&[0x41, 0xc6, 0x00, 0x80]),
        st(1, 0x80, 4),
    );
    add(
        "mov word [rax], 0x1234",
        M64,
        b(&[0x66, 0xc7, 0x00, 0x34, 0x12]),
        st(2, 0x1234, 5),
    );
    add(
        "mov word [rax], -2",
        M64,
        b(&[0x66, 0xc7, 0x00, 0xfe, 0xff]),
        st(2, 0xfffe, 5),
    );
    add(
        "mov dword [rbx], imm32",
        M64,
        b(&[0xc7, 0x03, 0x78, 0x56, 0x34, 0x12]),
        st(4, 0x1234_5678, 6),
    );
    add(
        "mov dword [rbx], neg",
        M64,
        cat(&[&[0xc7, 0x03], &IMM]),
        st(4, 0xccdd_eeff, 6),
    );
    add(
        "mov qword [rbx], imm32",
        M64,
        b(&[0x48, 0xc7, 0x03, 0x78, 0x56, 0x34, 0x12]),
        st(8, 0x1234_5678, 7),
    );
    add(
        "mov qword [rbx], neg",
        M64,
        cat(&[&[0x48, 0xc7, 0x03], &IMM]),
        st(8, 0xffff_ffff_ccdd_eeff, 7),
    );
    add(
        "66 48 c7: imm32",
        M64,
        b(&[0x66, 0x48, 0xc7, 0x00, 0, 0, 0, 0x80]),
        st(8, 0xffff_ffff_8000_0000, 8),
    );
    add(
        "mov qword [r8+disp32], 1",
        M64,
        cat(&[&[0x49, 0xc7, 0x80], &D32, &[1, 0, 0, 0]]),
        st(8, 1, 11),
    );
    add(
        "mov dword [rbx+16], imm",
        M64,
        cat(&[&[0xc7, 0x43, 0x10], &IMM]),
        st(4, 0xccdd_eeff, 7),
    );
    add(
        "mov dword [rbx+disp32], imm",
        M64,
        cat(&[&[0xc7, 0x83], &D32, &IMM]),
        st(4, 0xccdd_eeff, 10),
    );
    // 0F B6 / 0F B7: MOVZX into 16-, 32- and 64-bit registers. The
    // destination is never a high-byte register.
    add(
        "movzx eax, byte [rbx]",
        M64,
        b(&[0x0f, 0xb6, 0x03]),
        ld(1, 0, 4, 3),
    );
    add(
        "movzx esp, byte [rbx]",
        M64,
        b(&[0x0f, 0xb6, 0x23]),
        ld(1, 4, 4, 3),
    );
    add(
        "movzx ax, byte [rbx]",
        M64,
        b(&[0x66, 0x0f, 0xb6, 0x03]),
        ld(1, 0, 2, 4),
    );
    add(
        "movzx rax, byte [rbx]",
        M64,
        b(&[0x48, 0x0f, 0xb6, 0x03]),
        ld(1, 0, 8, 4),
    );
    add(
        "movzx r8d, byte [rbx]",
        M64,
        b(&[0x44, 0x0f, 0xb6, 0x03]),
        ld(1, 8, 4, 4),
    );
    add(
        "movzx eax, word [rbx]",
        M64,
        b(&[0x0f, 0xb7, 0x03]),
        ld(2, 0, 4, 3),
    );
    add(
        "movzx ax, word [rbx]",
        M64,
        b(&[0x66, 0x0f, 0xb7, 0x03]),
        ld(2, 0, 2, 4),
    );
    add(
        "movzx rax, word [rbx]",
        M64,
        b(&[0x48, 0x0f, 0xb7, 0x03]),
        ld(2, 0, 8, 4),
    );
    add(
        "movzx r10, word [rbx]",
        M64,
        b(&[0x4c, 0x0f, 0xb7, 0x13]),
        ld(2, 10, 8, 4),
    );
    // A0-A3: moffs, 8 bytes in 64-bit mode, 4 with 67.
    add(
        "mov al, [moffs64]",
        M64,
        cat(&[&[0xa0], &A64]),
        ld(1, 0, 1, 9),
    );
    add(
        "mov eax, [moffs64]",
        M64,
        cat(&[&[0xa1], &A64]),
        ld(4, 0, 4, 9),
    );
    add(
        "mov ax, [moffs64]",
        M64,
        cat(&[&[0x66, 0xa1], &A64]),
        ld(2, 0, 2, 10),
    );
    add(
        "mov rax, [moffs64]",
        M64,
        cat(&[&[0x48, 0xa1], &A64]),
        ld(8, 0, 8, 10),
    );
    add(
        "mov [moffs64], al",
        M64,
        cat(&[&[0xa2], &A64]),
        st(1, 0x10, 9),
    );
    add(
        "mov [moffs64], eax",
        M64,
        cat(&[&[0xa3], &A64]),
        st(4, eax, 9),
    );
    add(
        "mov [moffs64], ax",
        M64,
        cat(&[&[0x66, 0xa3], &A64]),
        st(2, 0x2010, 10),
    );
    add(
        "mov [moffs64], rax",
        M64,
        cat(&[&[0x48, 0xa3], &A64]),
        st(8, g(0), 10),
    );
    add(
        "mov eax, [moffs32]",
        M64,
        cat(&[&[0x67, 0xa1], &D32]),
        ld(4, 0, 4, 6),
    );
    add(
        "mov rax, [moffs32]",
        M64,
        b(&[0x67, 0x48, 0xa1, 0xf8, 0x1f, 0x10, 0x00]),
        ld(8, 0, 8, 7),
    );
    add(
        "mov [moffs32], rax",
        M64,
        b(&[0x67, 0x48, 0xa3, 0xf8, 0x1f, 0x10, 0x00]),
        st(8, g(0), 7),
    );
    add(
        "mov [moffs32], al",
        M64,
        cat(&[&[0x67, 0xa2], &D32]),
        st(1, 0x10, 6),
    );
    // ModRM and SIB addressing (SDM Vol. 2A Tables 2-2, 2-3, 2-5).
    add("[rbx+disp8]", M64, b(&[0x8b, 0x43, 0x10]), ld(4, 0, 4, 3));
    add(
        "[rbx+disp32]",
        M64,
        cat(&[&[0x8b, 0x83], &D32]),
        ld(4, 0, 4, 6),
    );
    add("[rbx+rcx*4]", M64, b(&[0x8b, 0x04, 0x8b]), ld(4, 0, 4, 3));
    add(
        "[rbx+rcx*4+disp8]",
        M64,
        b(&[0x8b, 0x44, 0x8b, 0x10]),
        ld(4, 0, 4, 4),
    );
    add(
        "[rbx+rcx*4+disp32]",
        M64,
        cat(&[&[0x8b, 0x84, 0x8b], &D32]),
        ld(4, 0, 4, 7),
    );
    add(
        "[disp32] (SIB, no base, no index)",
        M64,
        cat(&[&[0x8b, 0x04, 0x25], &D32]),
        ld(4, 0, 4, 7),
    );
    add(
        "[rcx*8+disp32] (SIB, no base)",
        M64,
        cat(&[&[0x8b, 0x04, 0xcd], &D32]),
        ld(4, 0, 4, 7),
    );
    add(
        "[rbp+disp8] (SIB base 5, mod 1)",
        M64,
        b(&[0x8b, 0x44, 0x25, 0x08]),
        ld(4, 0, 4, 4),
    );
    add(
        "[rbp+disp32] (SIB base 5, mod 2)",
        M64,
        cat(&[&[0x8b, 0x84, 0x25], &D32]),
        ld(4, 0, 4, 7),
    );
    add("[rbp+0]", M64, b(&[0x8b, 0x45, 0x00]), ld(4, 0, 4, 3));
    add("[r13+0]", M64, b(&[0x41, 0x8b, 0x45, 0x00]), ld(4, 0, 4, 4));
    add(
        "REX.B, SIB base 5, mod 0: still disp32",
        M64,
        cat(&[&[0x41, 0x8b, 0x04, 0x25], &D32]),
        ld(4, 0, 4, 8),
    );
    add(
        "[r12] (needs SIB)",
        M64,
        b(&[0x41, 0x8b, 0x04, 0x24]),
        ld(4, 0, 4, 4),
    );
    add("[rsp+8]", M64, b(&[0x8b, 0x44, 0x24, 0x08]), ld(4, 0, 4, 4));
    add(
        "[rbx+r12] (REX.X)",
        M64,
        b(&[0x42, 0x8b, 0x04, 0x23]),
        ld(4, 0, 4, 4),
    );
    add(
        "[rip+disp32]",
        M64,
        cat(&[&[0x8b, 0x05], &D32]),
        ld(4, 0, 4, 6),
    );
    add(
        "mov r8d, [rip+disp32]",
        M64,
        cat(&[&[0x44, 0x8b, 0x05], &D32]),
        ld(4, 8, 4, 7),
    );
    add(
        "mov [rip+disp32], rax",
        M64,
        cat(&[&[0x48, 0x89, 0x05], &D32]),
        st(8, g(0), 7),
    );
    add(
        "mov [disp32], rax",
        M64,
        cat(&[&[0x48, 0x89, 0x04, 0x25], &D32]),
        st(8, g(0), 8),
    );
    add(
        "mov [rbx+rcx], rax",
        M64,
        b(&[0x48, 0x89, 0x04, 0x0b]),
        st(8, g(0), 4),
    );
    add(
        "mov [rbx+rcx+disp32], rax",
        M64,
        cat(&[&[0x48, 0x89, 0x84, 0x0b], &D32]),
        st(8, g(0), 8),
    );
    add(
        "mov [rbx+disp8], rax",
        M64,
        b(&[0x48, 0x89, 0x43, 0x10]),
        st(8, g(0), 4),
    );
    add(
        "mov [rbx+disp32], rax",
        M64,
        cat(&[&[0x48, 0x89, 0x83], &D32]),
        st(8, g(0), 7),
    );
    // 67 in 64-bit code: 32-bit addresses, same ModRM layout.
    add(
        "mov eax, [ebx]",
        M64,
        b(&[0x67, 0x8b, 0x03]),
        ld(4, 0, 4, 3),
    );
    add(
        "mov rax, [ebx]",
        M64,
        b(&[0x67, 0x48, 0x8b, 0x03]),
        ld(8, 0, 8, 4),
    );
    add(
        "mov eax, [ebx+disp8]",
        M64,
        b(&[0x67, 0x8b, 0x43, 0x10]),
        ld(4, 0, 4, 4),
    );
    add(
        "mov eax, [ebx+ecx*4]",
        M64,
        b(&[0x67, 0x8b, 0x04, 0x8b]),
        ld(4, 0, 4, 4),
    );
    add(
        "mov dword [ebx+disp8], imm",
        M64,
        cat(&[&[0x67, 0xc7, 0x43, 0x10], &IMM]),
        st(4, 0xccdd_eeff, 8),
    );
    add(
        "mov dword [ebx+disp32], imm",
        M64,
        cat(&[&[0x67, 0xc7, 0x83], &D32, &IMM]),
        st(4, 0xccdd_eeff, 11),
    );
    add(
        "mov [ebx+disp32], rax",
        M64,
        cat(&[&[0x67, 0x48, 0x89, 0x83], &D32]),
        st(8, g(0), 8),
    );
    add(
        "mov eax, [eip+disp32]",
        M64,
        cat(&[&[0x67, 0x8b, 0x05], &D32]),
        ld(4, 0, 4, 7),
    );
    add(
        "movzx eax, byte [ebx]",
        M64,
        b(&[0x67, 0x0f, 0xb6, 0x03]),
        ld(1, 0, 4, 4),
    );
    // Segment overrides on memory operands, in any order with 66.
    add(
        "mov eax, fs:[rbx]",
        M64,
        b(&[0x64, 0x8b, 0x03]),
        ld(4, 0, 4, 3),
    );
    add(
        "mov rax, gs:[disp32]",
        M64,
        cat(&[&[0x65, 0x48, 0x8b, 0x04, 0x25], &D32]),
        ld(8, 0, 8, 9),
    );
    add(
        "es cs ss ds",
        M64,
        b(&[0x26, 0x2e, 0x36, 0x3e, 0x89, 0x08]),
        st(4, 0x4131_2111, 6),
    );
    add("gs 66", M64, b(&[0x65, 0x66, 0x89, 0x08]), st(2, 0x2111, 4));
    add("66 gs", M64, b(&[0x66, 0x65, 0x89, 0x08]), st(2, 0x2111, 4));
    add(
        "67 66 gs REX.W",
        M64,
        b(&[0x67, 0x66, 0x65, 0x48, 0x89, 0x08]),
        st(8, g(1), 6),
    );
    // Exactly 15 bytes: the longest instruction there is.
    add(
        "15 bytes",
        M64,
        cat(&[&[0x2e; 8], &[0x48, 0xc7, 0x00], &IMM]),
        st(8, 0xffff_ffff_ccdd_eeff, 15),
    );
    add(
        "15 bytes of moffs",
        M64,
        cat(&[&[0x2e; 5], &[0x48, 0xa1], &A64]),
        ld(8, 0, 8, 15),
    );
    // 32-bit code: no REX, mod 0 rm 5 is an absolute disp32, moffs is 4
    // bytes.
    add("32: mov eax, [ebx]", M32, b(&[0x8b, 0x03]), ld(4, 0, 4, 2));
    add(
        "32: mov eax, [disp32]",
        M32,
        cat(&[&[0x8b, 0x05], &D32]),
        ld(4, 0, 4, 6),
    );
    add(
        "32: mov [disp32] (SIB), eax",
        M32,
        cat(&[&[0x89, 0x04, 0x25], &D32]),
        st(4, eax, 7),
    );
    add("32: mov [ebx], al", M32, b(&[0x88, 0x03]), st(1, 0x10, 2));
    add("32: mov [ebx], ah", M32, b(&[0x88, 0x23]), st(1, 0x20, 2));
    add("32: mov al, [ebx]", M32, b(&[0x8a, 0x03]), ld(1, 0, 1, 2));
    add("32: mov ah, [ebx]", M32, b(&[0x8a, 0x23]), ld_high(0, 2));
    add(
        "32: mov ax, [ebx]",
        M32,
        b(&[0x66, 0x8b, 0x03]),
        ld(2, 0, 2, 3),
    );
    add(
        "32: movzx eax, byte",
        M32,
        b(&[0x0f, 0xb6, 0x03]),
        ld(1, 0, 4, 3),
    );
    add(
        "32: movzx eax, word",
        M32,
        b(&[0x0f, 0xb7, 0x03]),
        ld(2, 0, 4, 3),
    );
    add(
        "32: mov al, [moffs32]",
        M32,
        cat(&[&[0xa0], &D32]),
        ld(1, 0, 1, 5),
    );
    add(
        "32: mov eax, [moffs32]",
        M32,
        cat(&[&[0xa1], &D32]),
        ld(4, 0, 4, 5),
    );
    add(
        "32: mov [moffs32], eax",
        M32,
        cat(&[&[0xa3], &D32]),
        st(4, eax, 5),
    );
    add(
        "32: mov [moffs32], al",
        M32,
        cat(&[&[0xa2], &D32]),
        st(1, 0x10, 5),
    );
    add(
        "32: mov dword [ebx], imm",
        M32,
        b(&[0xc7, 0x03, 0x78, 0x56, 0x34, 0x12]),
        st(4, 0x1234_5678, 6),
    );
    add(
        "32: mov dword [ebx+disp8], imm",
        M32,
        cat(&[&[0xc7, 0x43, 0x10], &IMM]),
        st(4, 0xccdd_eeff, 7),
    );
    add(
        "32: mov dword [ebx+disp32], imm",
        M32,
        cat(&[&[0xc7, 0x83], &D32, &IMM]),
        st(4, 0xccdd_eeff, 10),
    );
    add(
        "32: mov byte [ebx], imm",
        M32,
        b(&[0xc6, 0x03, 0x99]),
        st(1, 0x99, 3),
    );
    add(
        "32: mov [ebx+disp8], eax",
        M32,
        b(&[0x89, 0x43, 0x10]),
        st(4, eax, 3),
    );
    add(
        "32: mov [ebx+ecx], eax",
        M32,
        b(&[0x89, 0x04, 0x0b]),
        st(4, eax, 3),
    );
    add(
        "32: mov [ebx+ecx+disp32], eax",
        M32,
        cat(&[&[0x89, 0x84, 0x0b], &D32]),
        st(4, eax, 7),
    );
    add(
        "32: mov eax, fs:[ebx]",
        M32,
        b(&[0x64, 0x8b, 0x03]),
        ld(4, 0, 4, 3),
    );
    v
}

#[test]
fn every_accepted_encoding() {
    for (what, mode, bytes, access) in accepted() {
        assert_eq!(usize::from(access.len), bytes.len(), "{what}: table");
        assert_eq!(
            decode(&bytes, mode, &regs()),
            Ok(access),
            "{what}: {bytes:02x?}"
        );
        // Bytes after the instruction (the fetch takes 15) change nothing.
        let more = cat(&[&bytes, &[0x90; 15]]);
        assert_eq!(decode(&more, mode, &regs()), Ok(access), "{what}: followed");
    }
}

#[test]
fn every_accepted_encoding_cut_short_is_a_fetch_error() {
    for (what, mode, bytes, _) in accepted() {
        for k in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..k], mode, &regs()),
                Err(DecodeError::Fetch),
                "{what}: {k} of {} bytes",
                bytes.len()
            );
        }
    }
}

#[test]
fn no_encoding_is_accepted_in_16_bit_code() {
    for (what, _, bytes, _) in accepted() {
        assert_eq!(
            decode(&bytes, M16, &regs()),
            Err(DecodeError::Mode),
            "{what}"
        );
    }
}

#[test]
fn every_refused_form() {
    use DecodeError::Unsupported as U;
    let cases: &[(&str, CodeMode, Vec<u8>, DecodeError)] = &[
        // mod = 11: a register operand, never an MMIO access.
        ("mov eax, ecx (88)", M64, cat(&[&[0x88, 0xc8]]), U(0x88)),
        ("89 mod 11", M64, cat(&[&[0x89, 0xc8]]), U(0x89)),
        ("8a mod 11", M64, cat(&[&[0x8a, 0xc1]]), U(0x8a)),
        ("8b mod 11", M64, cat(&[&[0x8b, 0xc1]]), U(0x8b)),
        ("REX.W 8b mod 11", M64, cat(&[&[0x48, 0x8b, 0xc1]]), U(0x8b)),
        (
            "REX.RB 89 mod 11",
            M64,
            cat(&[&[0x4d, 0x89, 0xc8]]),
            U(0x89),
        ),
        ("c6 mod 11", M64, cat(&[&[0xc6, 0xc0, 0x12]]), U(0xc6)),
        ("c7 mod 11", M64, cat(&[&[0xc7, 0xc0], &IMM]), U(0xc7)),
        ("0f b6 mod 11", M64, cat(&[&[0x0f, 0xb6, 0xc1]]), U(0x0f)),
        ("0f b7 mod 11", M64, cat(&[&[0x0f, 0xb7, 0xc1]]), U(0x0f)),
        ("32: 8b mod 11", M32, cat(&[&[0x8b, 0xc1]]), U(0x8b)),
        // XSA-123: a segment override does not make a register operand a
        // memory one.
        ("fs: 89 mod 11", M64, cat(&[&[0x64, 0x89, 0xc8]]), U(0x89)),
        ("es: 8b mod 11", M64, cat(&[&[0x26, 0x8b, 0xc1]]), U(0x8b)),
        (
            "gs: REX.W 8b mod 11",
            M64,
            cat(&[&[0x65, 0x48, 0x8b, 0xc1]]),
            U(0x8b),
        ),
        ("cs: 88 ah, al", M64, cat(&[&[0x2e, 0x88, 0xe0]]), U(0x88)),
        (
            "ds: movzx mod 11",
            M64,
            cat(&[&[0x3e, 0x0f, 0xb6, 0xc0]]),
            U(0x0f),
        ),
        (
            "ss: c7 mod 11",
            M64,
            cat(&[&[0x36, 0xc7, 0xc0], &IMM]),
            U(0xc7),
        ),
        (
            "32: fs: 8b mod 11",
            M32,
            cat(&[&[0x64, 0x8b, 0xc1]]),
            U(0x8b),
        ),
        // LOCK: #UD on MOV (SDM Vol. 2A LOCK), never emulated.
        ("lock mov", M64, cat(&[&[0xf0, 0x89, 0x08]]), U(0xf0)),
        (
            "66 lock mov",
            M64,
            cat(&[&[0x66, 0xf0, 0x89, 0x08]]),
            U(0xf0),
        ),
        (
            "lock REX.W mov",
            M64,
            cat(&[&[0xf0, 0x48, 0x89, 0x08]]),
            U(0xf0),
        ),
        (
            "lock mov imm",
            M64,
            cat(&[&[0xf0, 0xc7, 0x00], &IMM]),
            U(0xf0),
        ),
        // REP / REPNE and the string moves they go with.
        ("rep mov", M64, cat(&[&[0xf3, 0x89, 0x08]]), U(0xf3)),
        ("repne mov", M64, cat(&[&[0xf2, 0x8b, 0x03]]), U(0xf2)),
        ("rep movsd", M64, cat(&[&[0xf3, 0xa5]]), U(0xf3)),
        ("rep movsq", M64, cat(&[&[0xf3, 0x48, 0xa5]]), U(0xf3)),
        ("rep moffs", M64, cat(&[&[0xf3, 0xa1], &A64]), U(0xf3)),
        ("movsb", M64, cat(&[&[0xa4]]), U(0xa4)),
        ("movsd", M64, cat(&[&[0xa5]]), U(0xa5)),
        ("stosb", M64, cat(&[&[0xaa]]), U(0xaa)),
        ("stosd", M64, cat(&[&[0xab]]), U(0xab)),
        ("lodsd", M64, cat(&[&[0xad]]), U(0xad)),
        // XSA-200: CMPXCHG8B, with 66 or not; CMPXCHG16B.
        (
            "66 cmpxchg8b",
            M64,
            cat(&[&[0x66, 0x0f, 0xc7, 0x08]]),
            U(0x0f),
        ),
        ("cmpxchg8b", M64, cat(&[&[0x0f, 0xc7, 0x08]]), U(0x0f)),
        (
            "cmpxchg16b",
            M64,
            cat(&[&[0x48, 0x0f, 0xc7, 0x08]]),
            U(0x0f),
        ),
        (
            "lock cmpxchg8b",
            M64,
            cat(&[&[0xf0, 0x0f, 0xc7, 0x0e]]),
            U(0xf0),
        ),
        (
            "32: 66 cmpxchg8b",
            M32,
            cat(&[&[0x66, 0x0f, 0xc7, 0x08]]),
            U(0x0f),
        ),
        // Other opcodes that touch memory but are not the MOVs.
        ("add", M64, cat(&[&[0x01, 0x08]]), U(0x01)),
        ("add r, m", M64, cat(&[&[0x03, 0x03]]), U(0x03)),
        ("or", M64, cat(&[&[0x09, 0x08]]), U(0x09)),
        ("and", M64, cat(&[&[0x21, 0x08]]), U(0x21)),
        ("movsxd", M64, cat(&[&[0x48, 0x63, 0x03]]), U(0x63)),
        ("xchg byte", M64, cat(&[&[0x86, 0x08]]), U(0x86)),
        ("xchg", M64, cat(&[&[0x87, 0x08]]), U(0x87)),
        ("mov r/m, sreg", M64, cat(&[&[0x8c, 0x18]]), U(0x8c)),
        ("lea", M64, cat(&[&[0x8d, 0x03]]), U(0x8d)),
        ("mov sreg, r/m", M64, cat(&[&[0x8e, 0x18]]), U(0x8e)),
        ("test byte imm", M64, cat(&[&[0xf6, 0x00, 0x01]]), U(0xf6)),
        ("inc", M64, cat(&[&[0xff, 0x00]]), U(0xff)),
        ("push m", M64, cat(&[&[0xff, 0x30]]), U(0xff)),
        ("movsx byte", M64, cat(&[&[0x0f, 0xbe, 0x03]]), U(0x0f)),
        ("movsx word", M64, cat(&[&[0x0f, 0xbf, 0x03]]), U(0x0f)),
        ("movbe", M64, cat(&[&[0x0f, 0x38, 0xf0, 0x03]]), U(0x0f)),
        ("movnti", M64, cat(&[&[0x0f, 0xc3, 0x08]]), U(0x0f)),
        ("cmpxchg", M64, cat(&[&[0x0f, 0xb1, 0x08]]), U(0x0f)),
        ("xadd", M64, cat(&[&[0x0f, 0xc1, 0x08]]), U(0x0f)),
        ("bt m, r", M64, cat(&[&[0x0f, 0xa3, 0x08]]), U(0x0f)),
        ("movups", M64, cat(&[&[0x0f, 0x11, 0x03]]), U(0x0f)),
        ("movdqa", M64, cat(&[&[0x66, 0x0f, 0x6f, 0x03]]), U(0x0f)),
        (
            "vmovdqa (VEX)",
            M64,
            cat(&[&[0xc5, 0xf9, 0x6f, 0x03]]),
            U(0xc5),
        ),
        ("ud2", M64, cat(&[&[0x0f, 0x0b]]), U(0x0f)),
        ("nop", M64, cat(&[&[0x90]]), U(0x90)),
        ("hlt", M64, cat(&[&[0xf4]]), U(0xf4)),
        // C6 and C7 with reg != 0 are not MOV (C7 /1.. /7, C6 /7 XABORT's
        // group).
        ("c6 /1", M64, cat(&[&[0xc6, 0x08, 0x00]]), U(0xc6)),
        ("c6 /7", M64, cat(&[&[0xc6, 0x38, 0x00]]), U(0xc6)),
        ("c7 /1", M64, cat(&[&[0xc7, 0x08], &IMM]), U(0xc7)),
        ("c7 /7", M64, cat(&[&[0xc7, 0x38], &IMM]), U(0xc7)),
        // REX that is not immediately before the opcode, two REX.
        (
            "REX then 66",
            M64,
            cat(&[&[0x48, 0x66, 0x8b, 0x03]]),
            U(0x66),
        ),
        (
            "REX then segment",
            M64,
            cat(&[&[0x40, 0x2e, 0x8b, 0x03]]),
            U(0x2e),
        ),
        ("two REX", M64, cat(&[&[0x48, 0x48, 0x8b, 0x03]]), U(0x48)),
        // 32-bit code: 40-4F are INC/DEC; 67 means 16-bit addressing.
        ("32: dec eax", M32, cat(&[&[0x48, 0x8b, 0x03]]), U(0x48)),
        ("32: inc ecx", M32, cat(&[&[0x41, 0x8b, 0x03]]), U(0x41)),
        ("32: 67 mov", M32, cat(&[&[0x67, 0x8b, 0x03]]), U(0x67)),
        (
            "32: 67 moffs16",
            M32,
            cat(&[&[0x67, 0xa1, 0x00, 0x10]]),
            U(0x67),
        ),
        // Nothing or only prefixes: the fetch ended inside the instruction.
        ("empty", M64, Vec::new(), DecodeError::Fetch),
        ("66", M64, cat(&[&[0x66]]), DecodeError::Fetch),
        ("REX", M64, cat(&[&[0x48]]), DecodeError::Fetch),
        ("0f", M64, cat(&[&[0x0f]]), DecodeError::Fetch),
        ("32: empty", M32, Vec::new(), DecodeError::Fetch),
        // More than 15 bytes (SDM Vol. 2A 2.3.11): #GP, never emulated.
        (
            "16 bytes",
            M64,
            cat(&[&[0x2e; 14], &[0x89, 0x08]]),
            DecodeError::TooLong,
        ),
        (
            "15 prefixes",
            M64,
            cat(&[&[0x2e; 15]]),
            DecodeError::TooLong,
        ),
        (
            "16 bytes, imm",
            M64,
            cat(&[&[0x2e; 9], &[0x48, 0xc7, 0x00], &IMM]),
            DecodeError::TooLong,
        ),
        (
            "16 bytes, moffs",
            M64,
            cat(&[&[0x2e; 6], &[0x48, 0xa1], &A64]),
            DecodeError::TooLong,
        ),
        (
            "16 bytes, disp32",
            M64,
            cat(&[&[0x66; 9], &[0x8b, 0x84, 0x8b], &D32]),
            DecodeError::TooLong,
        ),
        (
            "32: 16 bytes",
            M32,
            cat(&[&[0x3e; 10], &[0xc7, 0x03], &IMM]),
            DecodeError::TooLong,
        ),
        (
            "300 prefixes",
            M64,
            cat(&[&[0x66; 300], &[0x89, 0x08]]),
            DecodeError::TooLong,
        ),
        (
            "300 prefixes, moffs",
            M64,
            cat(&[&[0x66; 300], &[0xa1], &A64]),
            DecodeError::TooLong,
        ),
    ];
    for (what, mode, bytes, error) in cases {
        assert_eq!(
            decode(bytes, *mode, &regs()),
            Err(*error),
            "{what}: {bytes:02x?}"
        );
    }
    // Too long even when only the 15 bytes a fetch returns are there.
    let long = cat(&[&[0x2e; 9], &[0x48, 0xc7, 0x00], &IMM]);
    assert_eq!(decode(&long[..15], M64, &regs()), Err(DecodeError::TooLong));
}

#[test]
fn loads_follow_the_register_write_rules() {
    // SDM Vol. 1 3.4.1.1: 32-bit results zero-extend to 64 bits; 8- and
    // 16-bit results leave the rest alone.
    let value = 0xf1e2_d3c4_b5a6_9788;
    let cases: &[(&[u8], usize, u64)] = &[
        (&[0x8b, 0x03], gpr::RAX, 0xb5a6_9788),
        (&[0x48, 0x8b, 0x03], gpr::RAX, value),
        (&[0x66, 0x8b, 0x03], gpr::RAX, (g(0) & !0xffff) | 0x9788),
        (&[0x8a, 0x03], gpr::RAX, (g(0) & !0xff) | 0x88),
        (&[0x8a, 0x23], gpr::RAX, (g(0) & !0xff00) | 0x8800),
        (&[0x8a, 0x3b], gpr::RBX, (g(3) & !0xff00) | 0x8800),
        (&[0x40, 0x8a, 0x23], gpr::RSP, (g(4) & !0xff) | 0x88),
        (&[0x44, 0x8a, 0x23], 12, (g(12) & !0xff) | 0x88),
        (&[0x4c, 0x8b, 0x3b], 15, value),
        (&[0x44, 0x8b, 0x3b], 15, 0xb5a6_9788),
        // MOVZX: zero-extended, never sign-extended, to 16, 32 or 64 bits.
        (&[0x0f, 0xb6, 0x03], gpr::RAX, 0x88),
        (&[0x48, 0x0f, 0xb6, 0x03], gpr::RAX, 0x88),
        (&[0x66, 0x0f, 0xb6, 0x03], gpr::RAX, (g(0) & !0xffff) | 0x88),
        (&[0x0f, 0xb7, 0x03], gpr::RAX, 0x9788),
        (&[0x48, 0x0f, 0xb7, 0x03], gpr::RAX, 0x9788),
        (
            &[0x66, 0x0f, 0xb7, 0x03],
            gpr::RAX,
            (g(0) & !0xffff) | 0x9788,
        ),
        (&[0x4c, 0x0f, 0xb7, 0x13], 10, 0x9788),
    ];
    for (bytes, reg, expected) in cases {
        let mut r = regs();
        let access = decode(bytes, M64, &r).unwrap();
        complete_load(&mut r, &access, value);
        let mut want = regs();
        want.gpr[*reg] = *expected;
        assert_eq!(r, want, "{bytes:02x?}");
    }
    // A store is not a load.
    let mut r = regs();
    complete_load(&mut r, &st(4, 0, 2), value);
    assert_eq!(r, regs());
}

/// A device of `len` bytes at `base` that logs every access and answers
/// reads with `value` (unmasked: the load rules must cut it to size).
struct FakeBus {
    base: u64,
    len: u64,
    value: u64,
    log: Vec<(u64, u8, Option<u64>)>,
}

const DEV: u64 = 0xd000_0000;

impl FakeBus {
    fn new() -> Self {
        FakeBus {
            base: DEV,
            len: 0x200,
            value: 0xf1e2_d3c4_b5a6_9788,
            log: Vec::new(),
        }
    }

    fn inside(&self, gpa: GuestPhysAddr, size: u8) -> bool {
        gpa.0 >= self.base && gpa.0 + u64::from(size) <= self.base + self.len
    }
}

impl MmioBus for FakeBus {
    fn claims(&self, gpa: GuestPhysAddr) -> bool {
        self.inside(gpa, 1)
    }

    fn read(&mut self, gpa: GuestPhysAddr, size: u8) -> Option<u64> {
        self.inside(gpa, size).then(|| {
            self.log.push((gpa.0, size, None));
            self.value
        })
    }

    fn write(&mut self, gpa: GuestPhysAddr, size: u8, value: u64) -> bool {
        let inside = self.inside(gpa, size);
        if inside {
            self.log.push((gpa.0, size, Some(value)));
        }
        inside
    }
}

const PAGING_OFF: Paging = Paging {
    cr0: 1,
    cr3: 0,
    cr4: 0,
    efer: 0,
};

/// Runs `bytes` at physical 0x1000 with paging off against a `FakeBus`
/// access at `gpa`.
fn run(bytes: &[u8], mode: CodeMode, gpa: u64) -> (Option<Outcome>, Registers, FakeBus) {
    let mut m = VecMemory::new(0x4000);
    m.write(GuestPhysAddr(0x1000), bytes).unwrap();
    let mut r = regs();
    r.rip = 0x1000;
    let mut bus = FakeBus::new();
    let outcome = emulate(GuestPhysAddr(gpa), &mut r, mode, &PAGING_OFF, &m, &mut bus);
    (outcome, r, bus)
}

#[test]
fn emulate_loads_into_the_register() {
    let at = DEV + 0x10;
    let value = FakeBus::new().value;
    let cases: &[(CodeMode, &[u8], usize, u64, u8)] = &[
        (M64, &[0x8b, 0x03], gpr::RAX, 0xb5a6_9788, 4),
        (M64, &[0x48, 0x8b, 0x03], gpr::RAX, value, 8),
        (
            M64,
            &[0x66, 0x8b, 0x03],
            gpr::RAX,
            (g(0) & !0xffff) | 0x9788,
            2,
        ),
        (M64, &[0x8a, 0x03], gpr::RAX, (g(0) & !0xff) | 0x88, 1),
        (M64, &[0x8a, 0x23], gpr::RAX, (g(0) & !0xff00) | 0x8800, 1),
        (M64, &[0x40, 0x8a, 0x23], gpr::RSP, (g(4) & !0xff) | 0x88, 1),
        (M64, &[0x0f, 0xb6, 0x03], gpr::RAX, 0x88, 1),
        (
            M64,
            &[0x66, 0x0f, 0xb6, 0x03],
            gpr::RAX,
            (g(0) & !0xffff) | 0x88,
            1,
        ),
        (M64, &[0x48, 0x0f, 0xb7, 0x03], gpr::RAX, 0x9788, 2),
        (M64, &[0x4c, 0x8b, 0x3b], 15, value, 8),
        (
            M64,
            &[0xa0, 0, 0, 0, 0xd0, 0, 0, 0, 0],
            gpr::RAX,
            (g(0) & !0xff) | 0x88,
            1,
        ),
        (M32, &[0x8b, 0x03], gpr::RAX, 0xb5a6_9788, 4),
        (M32, &[0x8a, 0x3b], gpr::RBX, (g(3) & !0xff00) | 0x8800, 1),
    ];
    for (mode, bytes, reg, expected, size) in cases {
        let (outcome, r, bus) = run(bytes, *mode, at);
        assert_eq!(outcome, Some(Outcome::Resume), "{bytes:02x?}");
        let mut want = regs();
        want.gpr[*reg] = *expected;
        want.rip = 0x1000 + bytes.len() as u64;
        assert_eq!(r, want, "{bytes:02x?}");
        assert_eq!(bus.log, [(at, *size, None)], "{bytes:02x?}");
    }
}

#[test]
fn emulate_stores() {
    let at = DEV + 0x20;
    let cases: &[(CodeMode, &[u8], u8, u64)] = &[
        (M64, &[0xc6, 0x03, 0x5a], 1, 0x5a),
        (M64, &[0x66, 0xc7, 0x03, 0x34, 0x12], 2, 0x1234),
        (M64, &[0xc7, 0x03, 0xff, 0xee, 0xdd, 0xcc], 4, 0xccdd_eeff),
        (
            M64,
            &[0x48, 0xc7, 0x03, 0xff, 0xee, 0xdd, 0xcc],
            8,
            0xffff_ffff_ccdd_eeff,
        ),
        (M64, &[0x88, 0x23], 1, 0x20),
        (M64, &[0x66, 0x89, 0x03], 2, 0x2010),
        (M64, &[0x89, 0x03], 4, 0x4030_2010),
        (M64, &[0x48, 0x89, 0x03], 8, g(0)),
        (M64, &[0x4c, 0x89, 0x3b], 8, g(15)),
        (M64, &[0xa3, 0x20, 0, 0, 0xd0, 0, 0, 0, 0], 4, 0x4030_2010),
        (M32, &[0x89, 0x03], 4, 0x4030_2010),
        (M32, &[0xc7, 0x03, 0xff, 0xee, 0xdd, 0xcc], 4, 0xccdd_eeff),
    ];
    for (mode, bytes, size, value) in cases {
        let (outcome, r, bus) = run(bytes, *mode, at);
        assert_eq!(outcome, Some(Outcome::Resume), "{bytes:02x?}");
        let mut want = regs();
        want.rip = 0x1000 + bytes.len() as u64;
        assert_eq!(r, want, "{bytes:02x?}: only RIP changes");
        assert_eq!(bus.log, [(at, *size, Some(*value))], "{bytes:02x?}");
    }
}

#[test]
fn emulate_stops_the_vm_when_the_device_refuses() {
    // 8 bytes at 4 before the end leave the device: the bus refuses, the
    // VM stops, nothing changes (RIP included).
    let end = DEV + 0x200 - 4;
    for bytes in [
        &[0x48, 0x8b, 0x03][..],
        &[0x48, 0x89, 0x03],
        &[0x48, 0xc7, 0x03, 1, 0, 0, 0],
    ] {
        let (outcome, r, bus) = run(bytes, M64, end);
        assert_eq!(
            outcome,
            Some(Outcome::Stop(StopReason::MmioUnsupported {
                gpa: GuestPhysAddr(end),
                opcode: 0x48
            })),
            "{bytes:02x?}"
        );
        let mut want = regs();
        want.rip = 0x1000;
        assert_eq!(r, want, "{bytes:02x?}");
        assert!(bus.log.is_empty());
    }
    // Four bytes there fit.
    let (outcome, _, bus) = run(&[0x8b, 0x03], M64, end);
    assert_eq!(outcome, Some(Outcome::Resume));
    assert_eq!(bus.log.len(), 1);
    // Not the device's address at all: the caller decides.
    let (outcome, r, _) = run(&[0x8b, 0x03], M64, DEV + 0x200);
    assert_eq!((outcome, r.rip), (None, 0x1000));
    // Refused encodings, 16-bit code and a fetch outside RAM stop the VM
    // with RIP where it was.
    for (bytes, mode, opcode) in [
        (&[0x0f, 0x0b][..], M64, 0x0f),
        (&[0x89, 0xc8], M64, 0x89),
        (&[0xf0, 0x89, 0x03], M64, 0xf0),
        (&[0x89, 0x03], M16, 0),
    ] {
        let (outcome, r, bus) = run(bytes, mode, DEV);
        assert_eq!(
            outcome,
            Some(Outcome::Stop(StopReason::MmioUnsupported {
                gpa: GuestPhysAddr(DEV),
                opcode
            })),
            "{bytes:02x?}"
        );
        assert_eq!(r.rip, 0x1000);
        assert!(bus.log.is_empty());
    }
    // The fetch ends inside the instruction (RAM ends), or gets nothing.
    let mut m = VecMemory::new(0x4000);
    m.write(GuestPhysAddr(0x3ffb), &[0x48, 0x8b, 0x83, 0, 0])
        .unwrap();
    for rip in [0x3ffb, 0x10_0000] {
        let mut r = regs();
        r.rip = rip;
        let mut bus = FakeBus::new();
        assert_eq!(
            emulate(GuestPhysAddr(DEV), &mut r, M64, &PAGING_OFF, &m, &mut bus),
            Some(Outcome::Stop(StopReason::MmioUnsupported {
                gpa: GuestPhysAddr(DEV),
                opcode: 0
            }))
        );
        assert_eq!(r.rip, rip);
        assert!(bus.log.is_empty());
    }
}

#[test]
fn misaligned_accesses_of_every_size_round_trip_through_testdev() {
    // Store then load back each size at every offset in the first 16
    // bytes, and at the very end of the page.
    let mut offsets: Vec<u64> = (0..16).collect();
    offsets.extend([
        TESTDEV_LEN - 8,
        TESTDEV_LEN - 4,
        TESTDEV_LEN - 2,
        TESTDEV_LEN - 1,
    ]);
    let forms: [(u8, &[u8], &[u8]); 4] = [
        (1, &[0x88, 0x0b], &[0x8a, 0x13]),
        (2, &[0x66, 0x89, 0x0b], &[0x66, 0x8b, 0x13]),
        (4, &[0x89, 0x0b], &[0x8b, 0x13]),
        (8, &[0x48, 0x89, 0x0b], &[0x48, 0x8b, 0x13]),
    ];
    for (size, store, load) in forms {
        for &offset in &offsets {
            if offset + u64::from(size) > TESTDEV_LEN {
                continue;
            }
            let mut m = VecMemory::new(0x4000);
            m.write(GuestPhysAddr(0x1000), store).unwrap();
            m.write(GuestPhysAddr(0x2000), load).unwrap();
            let mut dev = TestDev::default();
            let at = GuestPhysAddr(TESTDEV_BASE + offset);
            let mut r = regs();
            r.rip = 0x1000;
            r.gpr[gpr::RDX] = 0;
            assert_eq!(
                emulate(at, &mut r, M64, &PAGING_OFF, &m, &mut dev),
                Some(Outcome::Resume)
            );
            r.rip = 0x2000;
            assert_eq!(
                emulate(at, &mut r, M64, &PAGING_OFF, &m, &mut dev),
                Some(Outcome::Resume)
            );
            // RDX was 0, so every size reads back as the low bytes of RCX.
            assert_eq!(
                r.gpr[gpr::RDX],
                g(1) & mask(size),
                "size {size} at {offset:#x}"
            );
            assert_eq!(dev.accesses, 2);
        }
    }
}

/// 4-level page tables built in `m` from 0x10000 up.
struct Tables {
    root: u64,
    next: u64,
}

const ADDR_BITS: u64 = 0x000f_ffff_ffff_f000;

impl Tables {
    fn new() -> Self {
        Tables {
            root: 0x10000,
            next: 0x11000,
        }
    }

    fn pte(&mut self, m: &mut VecMemory, linear: u64) -> u64 {
        let mut table = self.root;
        for shift in [39, 30, 21] {
            let at = table + ((linear >> shift) & 0x1ff) * 8;
            let e = m.read_u64(GuestPhysAddr(at)).unwrap();
            table = if e & 1 != 0 {
                e & ADDR_BITS
            } else {
                let t = self.next;
                self.next += 0x1000;
                m.write(GuestPhysAddr(at), &(t | 3).to_le_bytes()).unwrap();
                t
            };
        }
        table + ((linear >> 12) & 0x1ff) * 8
    }

    fn map(&mut self, m: &mut VecMemory, linear: u64, phys: u64) {
        let at = self.pte(m, linear);
        m.write(GuestPhysAddr(at), &(phys | 3).to_le_bytes())
            .unwrap();
    }

    fn unmap(&mut self, m: &mut VecMemory, linear: u64) {
        let at = self.pte(m, linear);
        m.write(GuestPhysAddr(at), &[0; 8]).unwrap();
    }

    fn paging(&self) -> Paging {
        Paging {
            cr0: 1 << 31 | 1,
            cr3: self.root,
            cr4: 1 << 5,
            efer: 1 << 10 | 1 << 8,
        }
    }
}

#[test]
fn fetch_straddles_pages_through_the_guest_tables() {
    // mov rax, [rbx+disp32] at linear 0x40_0ffd: three bytes on one page
    // (physical 0x8000), four on the next, which maps to 0x20000.
    let mut m = VecMemory::new(0x40000);
    let mut t = Tables::new();
    t.map(&mut m, 0x40_0000, 0x8000);
    t.map(&mut m, 0x40_1000, 0x20000);
    t.map(&mut m, 0x40_2000, 0x9000);
    m.write(GuestPhysAddr(0x8ffd), &[0x48, 0x8b, 0x83]).unwrap();
    m.write(GuestPhysAddr(0x20000), &D32).unwrap();
    // What is physically next to the first page must not be used.
    m.write(GuestPhysAddr(0x9000), &[0x90; 16]).unwrap();
    let mut bytes = [0u8; MAX_LEN];
    assert_eq!(fetch(&m, &t.paging(), M64, 0x40_0ffd, &mut bytes), Ok(15));
    assert_eq!(&bytes[..7], &[0x48, 0x8b, 0x83, 0, 0, 0xb0, 0xfe]);
    let mut r = regs();
    r.rip = 0x40_0ffd;
    let mut bus = FakeBus::new();
    let at = GuestPhysAddr(DEV);
    assert_eq!(
        emulate(at, &mut r, M64, &t.paging(), &m, &mut bus),
        Some(Outcome::Resume)
    );
    assert_eq!((r.rip, r.gpr[gpr::RAX]), (0x40_1004, bus.value));
    // The second page unmapped: three bytes fetched, too few; the VM
    // stops with RIP where it was.
    t.unmap(&mut m, 0x40_1000);
    assert_eq!(fetch(&m, &t.paging(), M64, 0x40_0ffd, &mut bytes), Ok(3));
    r.rip = 0x40_0ffd;
    assert!(matches!(
        emulate(at, &mut r, M64, &t.paging(), &m, &mut bus),
        Some(Outcome::Stop(_))
    ));
    assert_eq!(r.rip, 0x40_0ffd);
    // Mapped outside RAM: the same.
    t.map(&mut m, 0x40_1000, 0x8000_0000);
    assert_eq!(fetch(&m, &t.paging(), M64, 0x40_0ffd, &mut bytes), Ok(3));
    assert!(matches!(
        emulate(at, &mut r, M64, &t.paging(), &m, &mut bus),
        Some(Outcome::Stop(_))
    ));
    assert_eq!(bus.log.len(), 1);
    // Nothing at RIP at all.
    assert_eq!(
        fetch(&m, &t.paging(), M64, 0x50_0000, &mut bytes),
        Err(DecodeError::Fetch)
    );
}

#[test]
fn fetch_at_the_top_of_the_address_space() {
    // XSA-186. 32-bit code in long mode (compatibility mode): the bytes
    // after linear 0xFFFF_FFFF are at linear 0, not 0x1_0000_0000.
    let mut m = VecMemory::new(0x40000);
    let mut t = Tables::new();
    t.map(&mut m, 0xffff_f000, 0x8000);
    t.map(&mut m, 0, 0x9000);
    t.map(&mut m, 0x1_0000_0000, 0xa000);
    m.write(GuestPhysAddr(0x8ffe), &[0x66, 0x89]).unwrap();
    m.write(GuestPhysAddr(0x9000), &[0x03]).unwrap();
    m.write(GuestPhysAddr(0xa000), &[0x83, 0, 0, 0, 0]).unwrap();
    let mut r = regs();
    r.rip = 0xffff_fffe;
    let mut bus = FakeBus::new();
    let at = GuestPhysAddr(DEV);
    assert_eq!(
        emulate(at, &mut r, M32, &t.paging(), &m, &mut bus),
        Some(Outcome::Resume)
    );
    // EIP wraps too: no bits above 31 (VM entry would refuse them).
    assert_eq!(r.rip, 1);
    assert_eq!(bus.log, [(DEV, 2, Some(0x2010))]);

    // The same with 32-bit paging.
    let mut m = VecMemory::new(0x40000);
    let put32 =
        |m: &mut VecMemory, at: u64, v: u32| m.write(GuestPhysAddr(at), &v.to_le_bytes()).unwrap();
    put32(&mut m, 0x1000 + 1023 * 4, 0x2000 | 3);
    put32(&mut m, 0x2000 + 1023 * 4, 0x8000 | 3);
    put32(&mut m, 0x1000, 0x3000 | 3);
    put32(&mut m, 0x3000, 0x9000 | 3);
    m.write(GuestPhysAddr(0x8fff), &[0x8b]).unwrap();
    m.write(GuestPhysAddr(0x9000), &[0x03]).unwrap();
    let paging32 = Paging {
        cr0: 1 << 31 | 1,
        cr3: 0x1000,
        cr4: 0,
        efer: 0,
    };
    let mut r = regs();
    r.rip = 0xffff_ffff;
    assert_eq!(
        emulate(at, &mut r, M32, &paging32, &m, &mut FakeBus::new()),
        Some(Outcome::Resume)
    );
    assert_eq!((r.rip, r.gpr[gpr::RAX]), (1, 0xb5a6_9788));

    // 64-bit code: the fetch stops at 2^64 - 1 instead of wrapping to 0,
    // even with linear 0 mapped; an instruction crossing it stops the VM.
    let mut m = VecMemory::new(0x40000);
    let mut t = Tables::new();
    t.map(&mut m, 0xffff_ffff_ffff_f000, 0x8000);
    t.map(&mut m, 0, 0x9000);
    m.write(GuestPhysAddr(0x8ffe), &[0x48, 0x8b]).unwrap();
    m.write(GuestPhysAddr(0x9000), &[0x03]).unwrap();
    let mut bytes = [0u8; MAX_LEN];
    assert_eq!(
        fetch(&m, &t.paging(), M64, 0xffff_ffff_ffff_fffe, &mut bytes),
        Ok(2)
    );
    assert_eq!(fetch(&m, &t.paging(), M64, u64::MAX, &mut bytes), Ok(1));
    let mut r = regs();
    r.rip = 0xffff_ffff_ffff_fffe;
    let mut bus = FakeBus::new();
    assert_eq!(
        emulate(at, &mut r, M64, &t.paging(), &m, &mut bus),
        Some(Outcome::Stop(StopReason::MmioUnsupported {
            gpa: at,
            opcode: 0
        }))
    );
    assert_eq!(r.rip, 0xffff_ffff_ffff_fffe);
    assert!(bus.log.is_empty());
}

#[test]
fn testdev_bounds() {
    let mut t = TestDev::default();
    assert!(TestDev::claims(GuestPhysAddr(TESTDEV_BASE + 4088), 8));
    assert!(
        !TestDev::claims(GuestPhysAddr(TESTDEV_BASE + 4089), 8),
        "straddles the end"
    );
    assert!(!TestDev::claims(GuestPhysAddr(TESTDEV_BASE - 1), 1));
    assert!(!TestDev::claims(GuestPhysAddr(u64::MAX - 2), 8));
    t.write(GuestPhysAddr(TESTDEV_BASE + 8), 4, 0x1234_5678);
    assert_eq!(t.read(GuestPhysAddr(TESTDEV_BASE + 8), 2), 0x5678);
    assert_eq!(t.read(GuestPhysAddr(TESTDEV_BASE + 9), 1), 0x56);
}

proptest::proptest! {
    #[test]
    fn any_bytes_any_mode_never_panic(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
        mode in 0u8..3,
    ) {
        let mode = [M16, M32, M64][usize::from(mode)];
        if let Ok(a) = decode(&bytes, mode, &regs()) {
            proptest::prop_assert!(usize::from(a.len) <= bytes.len());
            proptest::prop_assert!(usize::from(a.len) <= MAX_LEN);
            proptest::prop_assert!(matches!(a.size, 1 | 2 | 4 | 8));
            proptest::prop_assert_eq!(decode(&bytes[..usize::from(a.len)], mode, &regs()), Ok(a));
        }
    }
}
