//! The runtime of Atoll's test guests: the only guest code with `unsafe`
//! and assembly. A guest is a multiboot (v1) ELF kernel: GRUB or Atoll
//! loads it at 1 MiB and enters `_start` in 32-bit protected mode with
//! paging off (Multiboot Specification 3.2). The stub below switches to
//! 64-bit mode and calls the guest's `main` (named with [`entry!`]); the
//! value `main` returns becomes the exit status written to isa-debug-exit.
//!
//! ```text
//!  _start (32-bit): zero .bss, identity-map 4 GiB with 2 MiB pages
//!    pml4[0] -> pdpt; pdpt[0..4] -> pd[0..4]; pd[i] = i * 2 MiB | PS|RW|P
//!  CR4.PAE, EFER.LME (WRMSR), CR0.PG, far jump to 64-bit code
//!  guest_rt_start(magic, info) -> main(&BootInfo) -> exit(status)
//! ```
#![no_std]

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};

pub mod hypercall;
pub mod idt;
pub mod smp;
pub mod x2apic;

// The multiboot header and the 32-bit entry stub.
global_asm!(
    r#"
    .set MB_MAGIC, 0x1badb002
    .set MB_FLAGS, 0x3           /* page-align modules, memory info */
    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .text.boot, "ax"
    .code32
    .global _start
_start:
    cli
    cld
    mov %eax, %ebp               /* boot loader magic */
    mov %ebx, %esi               /* multiboot information */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov $guest_pdpt, %eax
    or $0x7, %eax                /* present, writable, user */
    mov %eax, guest_pml4
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $guest_pd, %eax
    or $0x7, %eax
    mov %eax, guest_pdpt(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jne 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x87, %eax               /* 2 MiB, present, writable, user */
    mov %eax, guest_pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b
    mov $guest_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $(1 << 5), %eax           /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx        /* IA32_EFER: LME */
    xor %edx, %edx
    mov $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    or $((1 << 31) | 1), %eax    /* PG | PE */
    mov %eax, %cr0
    lgdt guest_gdt_pointer
    ljmp $0x08, $guest_long_mode

    .code64
guest_long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $guest_stack_top, %rsp
    mov %ebp, %edi
    mov %esi, %esi
    xor %ebp, %ebp
    call guest_rt_start
3:  cli
    hlt
    jmp 3b

    .section .data
    .balign 8
    .global guest_gdt
guest_gdt:
    .quad 0
    .quad 0x00af9b000000ffff     /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff     /* 0x10: data */
    .quad 0x00affb000000ffff     /* 0x18: 64-bit code, DPL 3 */
    .quad 0x00cff3000000ffff     /* 0x20: data, DPL 3 */
    .quad 0                      /* 0x28: TSS, filled in by idt::init */
    .quad 0
guest_gdt_end:
    .global guest_gdt_pointer
guest_gdt_pointer:
    .short guest_gdt_end - guest_gdt - 1
    .quad guest_gdt

    .section .bss
    .balign 4096
guest_pml4:
    .skip 4096
guest_pdpt:
    .skip 4096
guest_pd:
    .skip 4 * 4096
    .balign 16
    .skip 64 * 1024
guest_stack_top:
    .code64
"#,
    options(att_syntax)
);

/// What the boot loader told the guest.
pub struct BootInfo {
    /// The boot loader's magic (0x2BADB002 from a multiboot loader).
    pub magic: u32,
    cmdline: [u8; 256],
    cmdline_len: usize,
    /// Bytes of memory above 1 MiB (multiboot mem_upper), if given.
    pub mem_upper_bytes: u64,
}

impl BootInfo {
    /// The command line (up to 256 bytes; empty when there is none or it is
    /// not UTF-8).
    pub fn cmdline(&self) -> &str {
        let bytes = self.cmdline.get(..self.cmdline_len).unwrap_or(&[]);
        core::str::from_utf8(bytes).unwrap_or("")
    }
}

/// The multiboot information's flags, mem_upper and cmdline fields
/// (Multiboot Specification 3.3).
fn read_boot_info(magic: u32, info: u32) -> BootInfo {
    let mut boot = BootInfo {
        magic,
        cmdline: [0; 256],
        cmdline_len: 0,
        mem_upper_bytes: 0,
    };
    if magic != 0x2bad_b002 || info == 0 {
        return boot;
    }
    let word = |offset: u32| {
        // SAFETY: a multiboot loader passed `info`, the address of its
        // information structure, which lies in the identity-mapped first
        // 4 GiB; the fields read are inside its fixed 88-byte part.
        unsafe { core::ptr::read_volatile((info + offset) as usize as *const u32) }
    };
    let flags = word(0);
    if flags & 1 != 0 {
        boot.mem_upper_bytes = u64::from(word(8)) * 1024;
    }
    if flags & (1 << 2) != 0 && word(16) != 0 {
        let at = word(16) as usize;
        while boot.cmdline_len < boot.cmdline.len() {
            // SAFETY: the loader's command line is a NUL-terminated string
            // in mapped memory; reading stops at NUL or 256 bytes.
            let byte = unsafe { core::ptr::read_volatile((at + boot.cmdline_len) as *const u8) };
            if byte == 0 {
                break;
            }
            boot.cmdline[boot.cmdline_len] = byte;
            boot.cmdline_len += 1;
        }
    }
    boot
}

#[unsafe(no_mangle)]
extern "C" fn guest_rt_start(magic: u32, info: u32) -> ! {
    idt::init();
    let boot = read_boot_info(magic, info);
    unsafe extern "Rust" {
        fn atoll_guest_main(info: &BootInfo) -> u32;
    }
    // SAFETY: every guest binary defines `atoll_guest_main` through
    // `entry!`, with exactly this signature.
    let status = unsafe { atoll_guest_main(&boot) };
    exit(status)
}

/// The number after `key=` among the command line's words (decimal, or
/// hexadecimal with `0x`).
pub fn arg(cmdline: &str, key: &str) -> Option<u64> {
    cmdline.split_whitespace().find_map(|word| {
        let value = word.strip_prefix(key)?.strip_prefix('=')?;
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => value.parse().ok(),
        }
    })
}

/// The word after `key=` on the command line.
pub fn word<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Names the guest's `main(&BootInfo) -> u32`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[allow(unsafe_code)]
        #[unsafe(export_name = "atoll_guest_main")]
        fn __atoll_guest_main(info: &$crate::BootInfo) -> u32 {
            $main(info)
        }
    };
}

/// Port I/O (SDM Vol. 2A, IN/OUT).
pub mod port {
    use super::asm;

    pub fn outb(port: u16, value: u8) {
        // SAFETY: port output has no memory effects on the guest; the
        // devices addressed are the VM's (or, natively, the emulator's).
        unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) }
    }

    pub fn outw(port: u16, value: u16) {
        // SAFETY: as for `outb`.
        unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack)) }
    }

    pub fn outl(port: u16, value: u32) {
        // SAFETY: as for `outb`.
        unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) }
    }

    /// REP OUTSB: `bytes` to `port`.
    pub fn outsb(port: u16, bytes: &[u8]) {
        // SAFETY: OUTS reads `bytes` (valid for its length) and writes
        // the port; DF is clear (the ABI).
        unsafe {
            asm!("rep outsb", in("dx") port, inout("rsi") bytes.as_ptr() => _, inout("rcx") bytes.len() => _, options(nostack))
        }
    }

    pub fn inb(port: u16) -> u8 {
        let value: u8;
        // SAFETY: as for `outb`: port input only reads a device register.
        unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack)) }
        value
    }

    pub fn inw(port: u16) -> u16 {
        let value: u16;
        // SAFETY: as for `inb`.
        unsafe { asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack)) }
        value
    }

    pub fn inl(port: u16) -> u32 {
        let value: u32;
        // SAFETY: as for `inb`.
        unsafe { asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack)) }
        value
    }
}

const COM1: u16 = 0x3f8;

/// COM1, polled: waits for the transmitter before each byte.
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            while port::inb(COM1 + 5) & 0x20 == 0 {}
            port::outb(COM1, byte);
        }
        Ok(())
    }
}

/// Serialises lines from several vCPUs (the UART is one device).
static PRINT_LOCK: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

#[doc(hidden)]
pub fn print_args(args: fmt::Arguments<'_>) {
    use core::sync::atomic::Ordering;
    while PRINT_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let _ = Serial.write_fmt(args);
    PRINT_LOCK.store(false, Ordering::Release);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::print_args(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Ends the guest: writes `status` to isa-debug-exit (port 0xF4), after
/// letting the UART drain (LSR bit 6) so the last line is not lost. If
/// nothing ends the machine, halts for good.
pub fn exit(status: u32) -> ! {
    while port::inb(COM1 + 5) & 0x40 == 0 {}
    port::outl(0xf4, status);
    loop {
        // SAFETY: CLI; HLT only stops this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// QEMU's fw_cfg, legacy I/O interface.
pub mod fw_cfg {
    use super::port;

    pub const SIGNATURE: u16 = 0x00;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NB_CPUS: u16 = 0x05;

    /// Reads the first `out.len()` bytes of item `item`.
    pub fn read(item: u16, out: &mut [u8]) {
        port::outw(0x510, item);
        for byte in out {
            *byte = port::inb(0x511);
        }
    }

    /// Whether fw_cfg is there (its signature reads "QEMU").
    pub fn present() -> bool {
        let mut sig = [0; 4];
        read(SIGNATURE, &mut sig);
        &sig == b"QEMU"
    }

    pub fn cpus() -> u16 {
        let mut b = [0; 2];
        read(NB_CPUS, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn ram_bytes() -> u64 {
        let mut b = [0; 8];
        read(RAM_SIZE, &mut b);
        u64::from_le_bytes(b)
    }
}

/// Raw memory accesses by physical address (the guest identity-maps its
/// first 4 GiB), for tests that touch memory on purpose.
pub mod mem {
    pub fn write_u64(addr: u64, value: u64) {
        // SAFETY: a deliberate access to a guest-physical address below
        // 4 GiB (identity-mapped); outside the VM's RAM it ends the VM.
        unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
    }

    pub fn read_u64(addr: u64) -> u64 {
        // SAFETY: as for `write_u64`.
        unsafe { core::ptr::read_volatile(addr as *const u64) }
    }

    // The narrower accessors are for device registers: each is one MOV
    // (as Linux's readl/writel are), never folded into another
    // instruction, since Atoll emulates only the MOV forms drivers use.

    pub fn write_u32(addr: u64, value: u32) {
        // SAFETY: as for `write_u64`.
        unsafe {
            core::arch::asm!("mov dword ptr [{}], {:e}", in(reg) addr, in(reg) value, options(nostack))
        }
    }

    pub fn read_u32(addr: u64) -> u32 {
        let value: u32;
        // SAFETY: as for `write_u64`.
        unsafe {
            core::arch::asm!("mov {:e}, dword ptr [{}]", out(reg) value, in(reg) addr, options(nostack))
        };
        value
    }

    pub fn write_u16(addr: u64, value: u16) {
        // SAFETY: as for `write_u64`.
        unsafe {
            core::arch::asm!("mov word ptr [{}], {:x}", in(reg) addr, in(reg) value, options(nostack))
        }
    }

    pub fn read_u16(addr: u64) -> u16 {
        let value: u16;
        // SAFETY: as for `write_u64`.
        unsafe {
            core::arch::asm!("mov {:x}, word ptr [{}]", out(reg) value, in(reg) addr, options(nostack))
        };
        value
    }

    pub fn read_u8(addr: u64) -> u8 {
        let value: u8;
        // SAFETY: as for `write_u64`.
        unsafe {
            core::arch::asm!("mov {}, byte ptr [{}]", out(reg_byte) value, in(reg) addr, options(nostack))
        };
        value
    }

    /// `add dword [addr], 1`: a read-modify-write instruction.
    pub fn add_one(addr: u64) -> u32 {
        // SAFETY: a deliberate access at a guest-physical address.
        unsafe { core::arch::asm!("add dword ptr [{}], 1", in(reg) addr, options(nostack)) };
        0
    }

    /// Jumps to `addr`.
    pub fn jump(addr: u64) -> ! {
        // SAFETY: a deliberate jump; whatever is (not) there decides.
        unsafe { core::arch::asm!("jmp {}", in(reg) addr, options(noreturn)) }
    }
}

/// Control registers and privileged instructions.
pub mod cr {
    use core::arch::asm;

    pub fn read_cr4() -> u64 {
        let v: u64;
        // SAFETY: reading CR4 at CPL 0 has no side effects.
        unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) }
        v
    }

    pub fn write_cr4(value: u64) {
        // SAFETY: a deliberate CR4 write; a refused one faults.
        unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack)) }
    }

    pub fn xsetbv(xcr: u32, value: u64) {
        // SAFETY: a deliberate XSETBV; a refused one faults.
        unsafe {
            asm!("xsetbv", in("ecx") xcr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
        }
    }

    pub fn vmxon(region: u64) {
        // SAFETY: a deliberate VMXON, which a guest without VMX sees #UD.
        unsafe { asm!("vmxon [{}]", in(reg) &region, options(nostack)) }
    }

    /// UD2.
    pub fn ud2() -> ! {
        // SAFETY: raises #UD, handled by the IDT.
        unsafe { asm!("ud2", options(noreturn)) }
    }

    /// Loads an empty IDT and raises an exception: #NP on delivery, then
    /// a double fault that cannot be delivered either: a triple fault.
    pub fn triple_fault() -> ! {
        let empty: [u64; 2] = [0, 0];
        // SAFETY: deliberately breaks this CPU; nothing runs after.
        unsafe { asm!("lidt [{}]", "int3", "ud2", in(reg) &empty, options(noreturn)) }
    }
}

/// SSE registers, for tests of extended-state switching.
pub mod sse {
    use core::arch::asm;

    /// CR0.MP set, EM clear; CR4.OSFXSR and OSXMMEXCPT (SDM Vol. 3A, 13.1.3).
    pub fn enable() {
        // SAFETY: enabling SSE only changes how SSE instructions behave;
        // this guest uses them only through `fill` and `check`.
        unsafe {
            asm!(
                "mov {t}, cr0",
                "and {t}, ~4",
                "or {t}, 2",
                "mov cr0, {t}",
                "mov {t}, cr4",
                "or {t}, 0x600",
                "mov cr4, {t}",
                t = out(reg) _,
                options(nostack)
            );
        }
    }

    /// Loads `seed + n` into both halves of XMM n, for n = 0..16.
    pub fn fill(seed: u64) {
        let values: [u64; 16] = core::array::from_fn(|n| seed.wrapping_add(n as u64));
        // SAFETY: SSE is enabled (`enable`); the loads read the local array.
        unsafe {
            asm!(
                "movddup xmm0, [{v}]", "movddup xmm1, [{v} + 8]", "movddup xmm2, [{v} + 16]",
                "movddup xmm3, [{v} + 24]", "movddup xmm4, [{v} + 32]", "movddup xmm5, [{v} + 40]",
                "movddup xmm6, [{v} + 48]", "movddup xmm7, [{v} + 56]", "movddup xmm8, [{v} + 64]",
                "movddup xmm9, [{v} + 72]", "movddup xmm10, [{v} + 80]", "movddup xmm11, [{v} + 88]",
                "movddup xmm12, [{v} + 96]", "movddup xmm13, [{v} + 104]", "movddup xmm14, [{v} + 112]",
                "movddup xmm15, [{v} + 120]",
                v = in(reg) values.as_ptr(),
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _,
                out("xmm5") _, out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _,
                out("xmm10") _, out("xmm11") _, out("xmm12") _, out("xmm13") _, out("xmm14") _,
                out("xmm15") _,
                options(nostack)
            );
        }
    }

    /// Whether every XMM register still holds what `fill(seed)` put there.
    pub fn check(seed: u64) -> bool {
        let mut seen = [0u64; 16];
        // SAFETY: SSE is enabled; the stores write the local array. The
        // registers are read as they are: nothing in between touches them
        // (the target's Rust code does not use SSE).
        unsafe {
            asm!(
                "movq [{s}], xmm0", "movq [{s} + 8], xmm1", "movq [{s} + 16], xmm2",
                "movq [{s} + 24], xmm3", "movq [{s} + 32], xmm4", "movq [{s} + 40], xmm5",
                "movq [{s} + 48], xmm6", "movq [{s} + 56], xmm7", "movq [{s} + 64], xmm8",
                "movq [{s} + 72], xmm9", "movq [{s} + 80], xmm10", "movq [{s} + 88], xmm11",
                "movq [{s} + 96], xmm12", "movq [{s} + 104], xmm13", "movq [{s} + 112], xmm14",
                "movq [{s} + 120], xmm15",
                s = in(reg) seen.as_mut_ptr(),
                options(nostack)
            );
        }
        seen.iter()
            .enumerate()
            .all(|(n, v)| *v == seed.wrapping_add(n as u64))
    }
}

/// Instructions that exit right after an interrupt shadow (SDM Vol. 3A,
/// 7.8.3 and Vol. 2B, STI / MOV SS): what a hypervisor must handle
/// without injecting into the shadow.
pub mod shadow {
    use core::arch::asm;

    /// MOV SS; CPUID, MOV SS; OUT 0x80, MOV SS; VMCALL (version), then
    /// MOV SS; WRMSR of a missing MSR (#GP: the caller's exception hook
    /// must skip its 2 bytes).
    pub fn mov_ss_exits() {
        // SAFETY: SS is reloaded with its own selector (no change); CPUID,
        // OUT to the POST port and the version hypercall change only the
        // registers named; the WRMSR faults and the hook resumes after it.
        unsafe {
            asm!(
                "push rbx",
                "mov {s:x}, ss",
                "xor eax, eax",
                "mov ss, {s:x}",
                "cpuid",
                "mov ss, {s:x}",
                "out 0x80, al",
                "xor eax, eax",
                "mov ss, {s:x}",
                "vmcall",
                "mov ecx, 0x12345678",
                "mov ss, {s:x}",
                "wrmsr",
                "pop rbx",
                s = out(reg) _,
                out("eax") _, out("ecx") _, out("edx") _,
                out("rdi") _, out("rsi") _,
            );
        }
    }

    /// The same exits, each in the shadow of an STI that turns interrupts
    /// on (CLI before it). Interrupts are on afterwards.
    pub fn sti_exits() {
        // SAFETY: as for `mov_ss_exits`; every IDT vector has a handler.
        unsafe {
            asm!(
                "push rbx",
                "xor eax, eax",
                "cli",
                "sti",
                "cpuid",
                "cli",
                "sti",
                "out 0x80, al",
                "xor eax, eax",
                "cli",
                "sti",
                "vmcall",
                "mov ecx, 0x12345678",
                "cli",
                "sti",
                "wrmsr",
                "pop rbx",
                out("eax") _, out("ecx") _, out("edx") _,
                out("rdi") _, out("rsi") _,
            );
        }
    }
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// CPUID leaf `leaf`, subleaf `subleaf`: [EAX, EBX, ECX, EDX].
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Serial, "guest panic: {}", info.message());
    exit(1)
}
