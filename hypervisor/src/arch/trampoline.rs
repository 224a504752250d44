//! Starting a CPU: the real-mode trampoline a start-up IPI points it at, and
//! the 64-bit entry into the image.
//!
//! A CPU woken by INIT-SIPI-SIPI begins in real mode at `page << 12` (SDM
//! Vol. 3A, 10.4.4.1). Each node owns one such page below 1 MiB (the plan's
//! `trampoline`), so nodes start their CPUs without sharing anything. The
//! starter copies the code below into the page, fills its data block and
//! sends the IPIs; the new CPU then:
//!
//! ```text
//!  16-bit real mode   lgdt (trampoline GDT), CR0.PE, far jump
//!  32-bit protected   CR4.PAE, CR3 = boot page tables, EFER.LME|NXE,
//!                     CR0.PG, far jump
//!  64-bit             RSP, RDI from the data block, `started = 1` (its last
//!                     access to the page), jump to `ap_entry` in the image
//!  ap_entry (image)   image GDT, segments, call `main(arg)`
//! ```
//!
//! The boot page tables identity-map all RAM, so the page, the stack and the
//! image are all reachable; `ap_main` switches to the node's own tables.
//!
//! Data block (offsets from the page start, see the labels below):
//! `tr_cr3` (u32), `tr_stack`, `tr_arg`, `tr_entry`, `tr_main` (u64),
//! `tr_started` (u32).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

global_asm!(
    r#"
    .section .rodata.trampoline, "a"
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    movzwl %ax, %ebx
    shl $4, %ebx                        /* ebx = the page's physical address */
    movl $1, (tr_stage - ap_trampoline_start)
    lgdtl (tr_gdtr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax                         /* CR0.PE */
    mov %eax, %cr0
    ljmpl *(tr_far32 - ap_trampoline_start)

    .code32
tr_protected:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    movl $2, (tr_stage - ap_trampoline_start)(%ebx)
    mov %cr4, %eax
    or $(1 << 5), %eax                  /* CR4.PAE */
    mov %eax, %cr4
    mov (tr_cr3 - ap_trampoline_start)(%ebx), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx               /* IA32_EFER */
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax    /* LME | NXE */
    wrmsr
    mov %cr0, %eax
    or $((1 << 31) | (1 << 16)), %eax   /* PG | WP */
    mov %eax, %cr0
    ljmpl *(tr_far64 - ap_trampoline_start)(%ebx)

    .code64
tr_long:
    mov %ebx, %ebx                      /* upper half is undefined after the switch */
    mov (tr_stack - ap_trampoline_start)(%rbx), %rsp
    mov (tr_arg - ap_trampoline_start)(%rbx), %rdi
    mov (tr_main - ap_trampoline_start)(%rbx), %rsi
    mov (tr_entry - ap_trampoline_start)(%rbx), %rax
    movl $1, (tr_started - ap_trampoline_start)(%rbx)
    jmp *%rax

    .balign 8
tr_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff            /* 0x08: 32-bit code */
    .quad 0x00cf93000000ffff            /* 0x10: data */
    .quad 0x00af9b000000ffff            /* 0x18: 64-bit code */
tr_gdt_end:
    .global tr_gdtr, tr_far32, tr_far64, tr_cr3, tr_stack, tr_arg, tr_entry, tr_main, tr_started, tr_stage
    .global tr_gdt, tr_protected, tr_long
tr_gdtr:
    .short tr_gdt_end - tr_gdt - 1
    .long 0                             /* patched: page + tr_gdt */
tr_far32:
    .long 0                             /* patched: page + tr_protected */
    .short 0x08
tr_far64:
    .long 0                             /* patched: page + tr_long */
    .short 0x18
    .balign 8
tr_stack:
    .quad 0
tr_arg:
    .quad 0
tr_entry:
    .quad 0
tr_main:
    .quad 0
tr_cr3:
    .long 0
tr_started:
    .long 0
tr_stage:
    .long 0
    .global ap_trampoline_end
ap_trampoline_end:

    .section .text
    .code64
    .global ap_entry
ap_entry:
    lgdt boot_gdt_pointer
    call load_data_segments
    push $0x08
    lea 1f(%rip), %rax
    push %rax
    lretq
1:  xor %ebp, %ebp
    call *%rsi                          /* main(arg), never returns */
2:  cli
    hlt
    jmp 2b
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static tr_gdt: u8;
    static tr_protected: u8;
    static tr_long: u8;
    static tr_gdtr: u8;
    static tr_far32: u8;
    static tr_far64: u8;
    static tr_cr3: u8;
    static tr_stack: u8;
    static tr_arg: u8;
    static tr_entry: u8;
    static tr_main: u8;
    static tr_started: u8;
    static tr_stage: u8;
    static ap_entry: u8;
    static boot_pml4: u8;
}

/// Offset of a trampoline label from the start of the trampoline.
fn offset(label: *const u8) -> u64 {
    label as u64 - (&raw const ap_trampoline_start) as u64
}

/// `tr_started` after the starter's acknowledgement (the CPU writes 1).
const STARTED_AND_SEEN: u32 = 2;

/// A node's trampoline page, ready to start CPUs.
pub struct Trampoline {
    page: u64,
}

/// What a starting CPU gets: its stack, the Rust function it runs and that
/// function's argument.
pub struct StartArgs {
    pub stack_top: u64,
    pub main: extern "C" fn(u64) -> !,
    pub arg: u64,
}

impl Trampoline {
    /// The trampoline already in `page`, to watch the CPU it started.
    ///
    /// # Safety
    /// As for [`Trampoline::install`], and `install` must have been called
    /// for `page` before.
    pub unsafe fn existing(page: u64) -> Trampoline {
        Trampoline { page }
    }

    /// Copies the trampoline code into `page` and links it to that address.
    ///
    /// # Safety
    /// `page` must be a 4 KiB page below 1 MiB that the caller owns (its
    /// node's trampoline), mapped read-write at its physical address, with
    /// no CPU currently running in it.
    pub unsafe fn install(page: u64) -> Trampoline {
        let start = &raw const ap_trampoline_start;
        let len = offset(&raw const ap_trampoline_end);
        // SAFETY: the source is the trampoline in .rodata; the caller gives
        // us the whole destination page, and the code is far below 4 KiB.
        unsafe { core::ptr::copy_nonoverlapping(start, page as *mut u8, len as usize) };
        let tramp = Trampoline { page };
        // The linear addresses the real-mode code cannot compute itself.
        tramp.put_u32(&raw const tr_gdtr, 2, page + offset(&raw const tr_gdt));
        tramp.put_u32(
            &raw const tr_far32,
            0,
            page + offset(&raw const tr_protected),
        );
        tramp.put_u32(&raw const tr_far64, 0, page + offset(&raw const tr_long));
        tramp.put_u32(&raw const tr_cr3, 0, (&raw const boot_pml4) as u64);
        tramp.put_u64(&raw const tr_entry, (&raw const ap_entry) as u64);
        tramp
    }

    /// The start-up IPI vector: the page number.
    pub fn vector(&self) -> u8 {
        // Below 1 MiB by `install`'s contract, so it fits in 8 bits.
        (self.page >> 12) as u8
    }

    /// Fills in the data block for the next CPU and clears `started`.
    pub fn prepare(&self, args: &StartArgs) {
        self.put_u64(&raw const tr_stack, args.stack_top);
        self.put_u64(&raw const tr_arg, args.arg);
        self.put_u64(&raw const tr_main, args.main as usize as u64);
        self.word(&raw const tr_started).store(0, Ordering::SeqCst);
        self.word(&raw const tr_stage).store(0, Ordering::SeqCst);
    }

    /// Whether the CPU started last has left the trampoline.
    pub fn has_started(&self) -> bool {
        self.word(&raw const tr_started).load(Ordering::SeqCst) != 0
    }

    /// The starter has seen the CPU arrive: from now on the CPU (a node's
    /// first CPU) may reuse the page for its own CPUs. Without this
    /// hand-shake it could wipe `started` before the starter saw it, and the
    /// starter would take the CPU for lost and start it again.
    pub fn acknowledge(&self) {
        self.word(&raw const tr_started)
            .store(STARTED_AND_SEEN, Ordering::SeqCst);
    }

    /// Whether the starter has acknowledged this CPU's arrival.
    pub fn acknowledged(&self) -> bool {
        self.word(&raw const tr_started).load(Ordering::SeqCst) == STARTED_AND_SEEN
    }

    /// How far the CPU started last got: 0 = it never ran the trampoline,
    /// 1 = real mode, 2 = protected mode (then `has_started` once in long
    /// mode). For error messages.
    pub fn stage(&self) -> u32 {
        self.word(&raw const tr_stage).load(Ordering::SeqCst)
    }

    fn word(&self, label: *const u8) -> &AtomicU32 {
        let addr = self.page + offset(label);
        // SAFETY: `tr_started` and `tr_stage` are 4-byte aligned u32s inside
        // the page `install` was given (after `.balign 8` and whole u64s);
        // the page lives as long as the node and the new CPU writes them
        // only with single aligned `movl`s.
        unsafe { &*(addr as *const AtomicU32) }
    }

    fn put_u32(&self, label: *const u8, extra: u64, value: u64) {
        let addr = self.page + offset(label) + extra;
        // SAFETY: inside the owned page (see `install`); the fields are
        // unaligned in the 16-bit layout, hence write_unaligned. Trampoline
        // addresses are below 4 GiB, so the truncation is exact.
        unsafe { core::ptr::write_unaligned(addr as *mut u32, value as u32) }
    }

    fn put_u64(&self, label: *const u8, value: u64) {
        let addr = self.page + offset(label);
        // SAFETY: inside the owned page (see `install`), 8-byte aligned
        // after `.balign 8`; no CPU runs the trampoline while it is prepared.
        unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
    }
}
