use super::*;
use crate::exit::gpr;

fn regs() -> Registers {
    let mut r = Registers::default();
    for (i, g) in r.gpr.iter_mut().enumerate() {
        *g = 0x1111_1111_1111_1100 + i as u64;
    }
    r
}

fn d64(bytes: &[u8]) -> Result<Access, DecodeError> {
    decode(bytes, CodeMode::Bits64, &regs())
}

fn store(size: u8, value: u64, len: u8) -> Result<Access, DecodeError> {
    Ok(Access {
        size,
        operation: Operation::Store { value },
        len,
    })
}

fn load(
    size: u8,
    reg: usize,
    high_byte: bool,
    zero_extend: bool,
    len: u8,
) -> Result<Access, DecodeError> {
    Ok(Access {
        size,
        operation: Operation::Load {
            reg,
            high_byte,
            zero_extend,
        },
        len,
    })
}

/// One row per accepted encoding (the Jailhouse-style table of
/// bad-inputs.md item 1).
#[test]
fn every_supported_encoding() {
    let r = regs();
    let cases: &[(&[u8], Result<Access, DecodeError>)] = &[
        // mov [rax], ecx / rcx / cx / cl / ch
        (&[0x89, 0x08], store(4, r.gpr[1], 2)),
        (&[0x48, 0x89, 0x08], store(8, r.gpr[1], 3)),
        (&[0x66, 0x89, 0x08], store(2, r.gpr[1], 3)),
        (&[0x88, 0x08], store(1, r.gpr[1], 2)),
        (&[0x88, 0x28], store(1, r.gpr[1] >> 8, 2)),
        // mov [rax], r9d (REX.R); mov [rax], sil (REX makes 6 = SIL)
        (&[0x44, 0x89, 0x08], store(4, r.gpr[9], 3)),
        (&[0x40, 0x88, 0x30], store(1, r.gpr[6], 3)),
        // mov eax, [rbx] / rax / ax / al / ah
        (&[0x8b, 0x03], load(4, 0, false, true, 2)),
        (&[0x48, 0x8b, 0x03], load(8, 0, false, false, 3)),
        (&[0x66, 0x8b, 0x03], load(2, 0, false, false, 3)),
        (&[0x8a, 0x03], load(1, 0, false, false, 2)),
        (&[0x8a, 0x23], load(1, 0, true, false, 2)),
        // disp8, disp32, SIB, SIB with no base + disp32, RIP-relative
        (&[0x8b, 0x43, 0x10], load(4, 0, false, true, 3)),
        (&[0x8b, 0x83, 0, 1, 0, 0], load(4, 0, false, true, 6)),
        (&[0x8b, 0x04, 0x8b], load(4, 0, false, true, 3)),
        (
            &[0x8b, 0x04, 0x25, 0, 0, 0xb0, 0xfe],
            load(4, 0, false, true, 7),
        ),
        (&[0x8b, 0x05, 0, 0, 0, 0], load(4, 0, false, true, 6)),
        (&[0x8b, 0x44, 0x24, 0x08], load(4, 0, false, true, 4)),
        // mov byte [rax], 0x5a; mov dword [rax+8], imm32; mov qword
        // [rax], -1 (sign-extended); mov word [rax], 0x1234
        (&[0xc6, 0x00, 0x5a], store(1, 0x5a, 3)),
        (
            &[0xc7, 0x40, 0x08, 0x78, 0x56, 0x34, 0x12],
            store(4, 0x1234_5678, 7),
        ),
        (
            &[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff],
            store(8, u64::MAX, 7),
        ),
        (&[0x66, 0xc7, 0x00, 0x34, 0x12], store(2, 0x1234, 5)),
        // movzx eax, byte [rbx]; movzx r10, word [rbx]
        (&[0x0f, 0xb6, 0x03], load(1, 0, false, true, 3)),
        (&[0x4c, 0x0f, 0xb7, 0x13], load(2, 10, false, true, 4)),
        // mov eax, [moffs64]; mov [moffs64], rax
        (
            &[0xa1, 0, 0, 0xb0, 0xfe, 0, 0, 0, 0],
            load(4, 0, false, true, 9),
        ),
        (
            &[0x48, 0xa3, 0, 0, 0xb0, 0xfe, 0, 0, 0, 0],
            store(8, r.gpr[0], 10),
        ),
        // segment override on a memory operand (XSA-123: ignored, the
        // exit gives the address)
        (&[0x64, 0x8b, 0x03], load(4, 0, false, true, 3)),
    ];
    for (bytes, expected) in cases {
        assert_eq!(&d64(bytes), expected, "{bytes:02x?}");
    }
}

#[test]
fn everything_else_is_refused() {
    for bytes in [
        &[0x89, 0xc8][..],         // mov eax, ecx: no memory operand
        &[0xc7, 0x08, 0, 0, 0, 0], // C7 /1 is not MOV
        &[0x0f, 0xc7, 0x08],       // cmpxchg8b (XSA-200)
        &[0xf3, 0xa5],             // rep movs
        &[0x01, 0x08],             // add
        &[0xff],
    ] {
        assert!(
            matches!(d64(bytes), Err(DecodeError::Unsupported(_))),
            "{bytes:02x?}"
        );
    }
    // Cut short: the fetch ended inside the instruction.
    assert_eq!(d64(&[0x8b, 0x83, 0, 1]), Err(DecodeError::Fetch));
    assert_eq!(d64(&[0x48]), Err(DecodeError::Fetch));
    assert_eq!(
        decode(&[0x8b, 0x03], CodeMode::Bits16, &regs()),
        Err(DecodeError::Mode)
    );
    // 32-bit code: 0x48 is DEC, not REX.
    assert!(decode(&[0x48, 0x8b, 0x03], CodeMode::Bits32, &regs()).is_err());
    assert_eq!(
        decode(&[0xa1, 0, 0, 0xb0, 0xfe], CodeMode::Bits32, &regs()),
        load(4, 0, false, true, 5)
    );
}

#[test]
fn loads_follow_the_register_write_rules() {
    let mut r = regs();
    let a = d64(&[0x8b, 0x03]).unwrap();
    complete_load(&mut r, &a, 0xffff_ffff_aabb_ccdd);
    assert_eq!(r.gpr[gpr::RAX], 0xaabb_ccdd, "32-bit loads zero-extend");
    let a = d64(&[0x66, 0x8b, 0x0b]).unwrap();
    complete_load(&mut r, &a, 0x9999);
    assert_eq!(r.gpr[gpr::RCX], 0x1111_1111_1111_9999);
    let a = d64(&[0x8a, 0x23]).unwrap();
    complete_load(&mut r, &a, 0x7f);
    assert_eq!(r.gpr[gpr::RAX], 0xaabb_7fdd, "AH: bits 15:8 only");
    let a = d64(&[0x0f, 0xb7, 0x13]).unwrap();
    complete_load(&mut r, &a, 0xfffe);
    assert_eq!(r.gpr[gpr::RDX], 0xfffe);
}

#[test]
fn fetch_crosses_pages_through_the_guest_tables() {
    use crate::memory::VecMemory;
    let mut m = VecMemory::new(1 << 20);
    let put =
        |m: &mut VecMemory, at: u64, v: u64| m.write(GuestPhysAddr(at), &v.to_le_bytes()).unwrap();
    // Linear 0x400000 + 0xffe -> physical 0x8ffe; the next page maps to
    // 0x20000, not 0x9000.
    put(&mut m, 0x1000, 0x2000 | 3);
    put(&mut m, 0x2000, 0x3000 | 3);
    put(&mut m, 0x3000 + 2 * 8, 0x4000 | 3);
    put(&mut m, 0x4000, 0x8000 | 3);
    put(&mut m, 0x4000 + 8, 0x20000 | 3);
    m.write(GuestPhysAddr(0x8ffe), &[0x48, 0x8b]).unwrap();
    m.write(GuestPhysAddr(0x20000), &[0x03]).unwrap();
    let paging = Paging {
        cr0: 1 << 31 | 1,
        cr3: 0x1000,
        cr4: 1 << 5,
        efer: 1 << 10,
    };
    let mut bytes = [0u8; MAX_LEN];
    let n = fetch(&m, &paging, 0x40_0ffe, &mut bytes).unwrap();
    assert_eq!(&bytes[..3], &[0x48, 0x8b, 0x03]);
    assert_eq!(d64(&bytes[..n]), load(8, 0, false, false, 3));
    // The second page unmapped: only two bytes, too few.
    put(&mut m, 0x4000 + 8, 0);
    let n = fetch(&m, &paging, 0x40_0ffe, &mut bytes).unwrap();
    assert_eq!(n, 2);
    assert_eq!(d64(&bytes[..n]), Err(DecodeError::Fetch));
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

#[test]
fn emulate_moves_data_and_rip_or_stops() {
    use crate::memory::VecMemory;
    let mut m = VecMemory::new(1 << 20);
    // Paging off: RIP is physical. mov [rbx], eax; mov ecx, [rbx].
    m.write(GuestPhysAddr(0x1000), &[0x89, 0x03, 0x8b, 0x0b, 0x0f, 0x0b])
        .unwrap();
    let paging = Paging {
        cr0: 1,
        cr3: 0,
        cr4: 0,
        efer: 0,
    };
    let mut dev = TestDev::default();
    let mut r = regs();
    r.rip = 0x1000;
    r.gpr[0] = 0xdead_beef;
    let at = GuestPhysAddr(TESTDEV_BASE + 16);
    assert_eq!(
        emulate(at, &mut r, CodeMode::Bits32, &paging, &m, &mut dev),
        Some(Outcome::Resume)
    );
    assert_eq!(r.rip, 0x1002);
    assert_eq!(
        emulate(at, &mut r, CodeMode::Bits32, &paging, &m, &mut dev),
        Some(Outcome::Resume)
    );
    assert_eq!((r.rip, r.gpr[1]), (0x1004, 0xdead_beef));
    // UD2 at an MMIO address: not an access Atoll emulates.
    assert!(matches!(
        emulate(at, &mut r, CodeMode::Bits32, &paging, &m, &mut dev),
        Some(Outcome::Stop(StopReason::MmioUnsupported {
            opcode: 0x0f,
            ..
        }))
    ));
    assert_eq!(
        emulate(
            GuestPhysAddr(0x4000_0000),
            &mut r,
            CodeMode::Bits32,
            &paging,
            &m,
            &mut dev
        ),
        None
    );
    // A 4-byte access at the page's last byte leaves the device.
    r.rip = 0x1000;
    let end = GuestPhysAddr(TESTDEV_BASE + TESTDEV_LEN - 1);
    assert!(matches!(
        emulate(end, &mut r, CodeMode::Bits32, &paging, &m, &mut dev),
        Some(Outcome::Stop(_))
    ));
}

proptest::proptest! {
    #[test]
    fn any_bytes_any_mode_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16), mode in 0u8..3) {
        let mode = [CodeMode::Bits16, CodeMode::Bits32, CodeMode::Bits64][usize::from(mode)];
        if let Ok(a) = decode(&bytes, mode, &regs()) {
            proptest::prop_assert!(usize::from(a.len) <= bytes.len());
            proptest::prop_assert!(matches!(a.size, 1 | 2 | 4 | 8));
        }
    }
}
