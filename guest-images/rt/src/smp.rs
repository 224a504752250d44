//! Starting application processors the way an operating system does
//! (SDM Vol. 3A, 10.4.4): INIT, then a start-up IPI whose vector names the
//! 4 KiB page where the AP starts in real mode. The trampoline copied there
//! switches to protected mode, then to long mode on the BSP's page tables,
//! takes a stack by index and calls [`ap_rust_entry`].
//!
//! ```text
//!  0x8000  trampoline code (16-bit, 32-bit, 64-bit parts)
//!          its GDT and parameters: CR3, next index, stack base, entry
//! ```

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::{rdtsc, x2apic};

/// Where the trampoline runs: SIPI vector 8.
const AP_BASE: u64 = 0x8000;
const AP_VECTOR: u8 = (AP_BASE >> 12) as u8;
const AP_STACK_BYTES: u64 = 16 * 1024;
/// At most this many APs (the stacks below).
pub const MAX_APS: usize = 15;

global_asm!(
    r#"
    .set AP_BASE, 0x8000
    .section .rodata
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl (AP_BASE + ap_gdt_ptr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $(AP_BASE + ap_pm32 - ap_trampoline_start)
    .code32
ap_pm32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov (AP_BASE + ap_cr3 - ap_trampoline_start), %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $(1 << 5), %eax
    mov %eax, %cr4
    mov $0xc0000080, %ecx
    xor %edx, %edx
    mov $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    ljmpl $0x18, $(AP_BASE + ap_lm64 - ap_trampoline_start)
    .code64
ap_lm64:
    mov $1, %eax
    lock xadd %eax, (AP_BASE + ap_next - ap_trampoline_start)
    mov %eax, %edi
    mov (AP_BASE + ap_stack_base - ap_trampoline_start), %rsp
    mov %rdi, %rax
    inc %rax
    imul $16384, %rax
    add %rax, %rsp
    mov (AP_BASE + ap_entry - ap_trampoline_start), %rax
    call *%rax
1:  cli
    hlt
    jmp 1b
    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff     /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff     /* 0x10: data */
    .quad 0x00af9a000000ffff     /* 0x18: 64-bit code */
ap_gdt_ptr:
    .short 31
    .long AP_BASE + ap_gdt - ap_trampoline_start
    .balign 8
    .global ap_params
ap_params:
ap_cr3:
    .quad 0
ap_next:
    .quad 0
ap_stack_base:
    .quad 0
ap_entry:
    .quad 0
    .global ap_trampoline_end
ap_trampoline_end:
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_params: u8;
    static guest_gdt_pointer: u8;
}

#[repr(C, align(16))]
struct Stacks([u8; AP_STACK_BYTES as usize * (MAX_APS + 1)]);
static mut AP_STACKS: Stacks = Stacks([0; AP_STACK_BYTES as usize * (MAX_APS + 1)]);

/// APs that reached Rust.
static UP: AtomicU32 = AtomicU32::new(0);
static mut AP_MAIN: Option<fn(u32)> = None;

/// The trampoline's parameter block (at its copy).
#[repr(C)]
struct Params {
    cr3: u64,
    next: u64,
    stack_base: u64,
    entry: u64,
}

/// Starts APs with x2APIC IDs 1..`cpus`, each running `main(apic_id)`
/// (then halting); returns how many came up within about `timeout` TSC
/// ticks.
pub fn start_aps(cpus: u32, main: fn(u32), timeout: u64) -> u32 {
    let aps = cpus.saturating_sub(1).min(MAX_APS as u32);
    // SAFETY: the guest owns its low memory (nothing is loaded below
    // 1 MiB); the trampoline is position-dependent code assembled for
    // AP_BASE; the parameter block lies inside the copy; AP_MAIN is written
    // before any AP starts and only read by APs.
    unsafe {
        let start = &raw const ap_trampoline_start;
        let len = (&raw const ap_trampoline_end as usize) - (start as usize);
        core::ptr::copy_nonoverlapping(start, AP_BASE as *mut u8, len);
        let offset = (&raw const ap_params as usize) - (start as usize);
        let params = (AP_BASE as usize + offset) as *mut Params;
        let cr3: u64;
        core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
        params.write_volatile(Params {
            cr3,
            next: 0,
            stack_base: (&raw mut AP_STACKS) as u64,
            entry: ap_rust_entry as *const () as u64,
        });
        AP_MAIN = Some(main);
    }
    for id in 1..=aps {
        x2apic::send_ipi(id, 5, 0);
        x2apic::send_ipi(id, 6, AP_VECTOR);
    }
    let deadline = rdtsc().saturating_add(timeout);
    while UP.load(Ordering::SeqCst) < aps && rdtsc() < deadline {
        core::hint::spin_loop();
    }
    UP.load(Ordering::SeqCst)
}

/// An AP's first Rust code (index = its order of arrival).
extern "C" fn ap_rust_entry(_index: u32) -> ! {
    // SAFETY: the BSP's GDT and IDT are read-only for APs; the data
    // selectors mean the same in both GDTs. CS is reloaded too: the
    // trampoline's 0x18 is the BSP GDT's ring-3 code segment, and the
    // IRETQ ending an interrupt handler would fault on it (#GP(0x18)).
    unsafe {
        core::arch::asm!(
            "lgdt [{gdtp}]",
            "mov ax, 0x10",
            "mov ds, ax",
            "mov es, ax",
            "mov ss, ax",
            "push 0x08",
            "lea {t}, [rip + 2f]",
            "push {t}",
            "retfq",
            "2:",
            gdtp = in(reg) &raw const guest_gdt_pointer,
            t = out(reg) _,
            out("ax") _,
        );
    }
    crate::idt::load();
    x2apic::enable();
    let id = x2apic::rdmsr(x2apic::ID) as u32;
    UP.fetch_add(1, Ordering::SeqCst);
    // SAFETY: written by the BSP before it started any AP.
    if let Some(main) = unsafe { AP_MAIN } {
        main(id);
    }
    loop {
        crate::idt::disable_interrupts();
        crate::idt::halt();
    }
}
