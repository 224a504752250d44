//! The guest's IDT and TSS (SDM Vol. 3A, 7.14 and 8.7): every vector has a
//! stub that pushes a uniform frame and calls [`trap`]. Exceptions go to a
//! hook the guest may set ([`set_exception_hook`]); by default the guest
//! reports a `guest_exception` event and exits with status 0x100 + vector.
//! Interrupts (vectors 32-255) are counted and acknowledged (x2APIC EOI).
//! The TSS gives ring 3 code a kernel stack to trap onto.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

// Stubs: 256 of them, 16 bytes apart. Vectors 8, 10-14, 17, 21, 29 and 30
// come with an error code from the CPU (SDM Table 7-1); the others push 0.
global_asm!(
    r#"
    .section .text
    .balign 16
    .global guest_trap_stubs
guest_trap_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    .if (vector == 8) || (vector >= 10 && vector <= 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
    push $0
    .endif
    push $vector
    jmp guest_trap_common
    .set vector, vector + 1
    .endr

guest_trap_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    mov %rsp, %rbp
    and $-16, %rsp
    cld
    call guest_trap
    mov %rbp, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static guest_trap_stubs: u8;
    static mut guest_gdt: [u64; 7];
}

/// The frame a stub builds (general registers, then vector, error code and
/// the CPU's interrupt frame).
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Kernel and user selectors (lib.rs GDT).
pub const USER_CODE: u64 = 0x18 | 3;
pub const USER_DATA: u64 = 0x20 | 3;
const TSS_SELECTOR: u16 = 0x28;

/// The 64-bit TSS (SDM Figure 8-11): only RSP0 matters here.
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp0: u64,
    rest: [u64; 11],
    reserved: u16,
    io_map_base: u16,
}

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp0: 0,
    rest: [0; 11],
    reserved: 0,
    io_map_base: 104,
};

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut KERNEL_STACK: Stack = Stack([0; 16384]);
static mut USER_STACK: Stack = Stack([0; 16384]);

static mut IDT: [u64; 512] = [0; 512];

/// An exception handler: gets the frame, returns to resume (after fixing
/// the frame) or never returns.
pub type ExceptionHook = fn(&mut TrapFrame);

static HOOK: AtomicUsize = AtomicUsize::new(0);
static INTERRUPTS: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];

/// Installs the IDT and the TSS on this CPU.
pub fn init() {
    // SAFETY: runs on the boot CPU before anything uses the IDT, GDT or
    // TSS; the statics are only written here; the stub table is code
    // emitted above (256 stubs, 16 bytes apart).
    unsafe {
        let stubs = &raw const guest_trap_stubs as u64;
        let idt = &raw mut IDT;
        for vector in 0..256u64 {
            let handler = stubs + 16 * vector;
            // 64-bit interrupt gate, present; DPL 3 so INT n works from
            // user mode too (SDM Figure 7-8).
            let low = (handler & 0xffff)
                | (0x08 << 16)
                | (0xee00 << 32)
                | ((handler >> 16) & 0xffff) << 48;
            (*idt)[2 * vector as usize] = low;
            (*idt)[2 * vector as usize + 1] = handler >> 32;
        }
        let kernel_top = (&raw const KERNEL_STACK) as u64 + 16384;
        let tss = &raw mut TSS;
        (*tss).rsp0 = kernel_top;
        let base = tss as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        let gdt = &raw mut guest_gdt;
        (*gdt)[5] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((base >> 24) & 0xff) << 56);
        (*gdt)[6] = base >> 32;
        asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack));
    }
    load();
}

/// Loads the IDT on this CPU (APs share the BSP's; they get no TSS, so
/// they never run user code).
pub fn load() {
    let idt = (&raw const IDT) as u64;
    let pointer: [u64; 2] = [4095 | (idt << 16), idt >> 48];
    // SAFETY: the pointer names the static IDT `init` filled in.
    unsafe { asm!("lidt [{}]", in(reg) &raw const pointer, options(nostack)) };
}

/// Sets the exception hook (`None`: the default report-and-exit).
pub fn set_exception_hook(hook: Option<ExceptionHook>) {
    HOOK.store(hook.map_or(0, |h| h as usize), Ordering::SeqCst);
}

/// How many times interrupt `vector` arrived.
pub fn interrupts(vector: u8) -> u32 {
    INTERRUPTS[usize::from(vector)].load(Ordering::SeqCst)
}

#[unsafe(no_mangle)]
extern "C" fn guest_trap(frame: &mut TrapFrame) {
    if frame.vector >= 32 {
        INTERRUPTS[(frame.vector & 0xff) as usize].fetch_add(1, Ordering::SeqCst);
        crate::x2apic::eoi();
        return;
    }
    let hook = HOOK.load(Ordering::SeqCst);
    if hook != 0 {
        // SAFETY: HOOK only ever holds 0 or an `ExceptionHook` stored by
        // `set_exception_hook`.
        let hook: ExceptionHook = unsafe { core::mem::transmute::<usize, ExceptionHook>(hook) };
        hook(frame);
        return;
    }
    crate::println!(
        "@ev {{\"ev\":\"guest_exception\",\"vector\":{},\"error_code\":{},\"rip\":\"{:#x}\"}}",
        frame.vector,
        frame.error_code,
        frame.rip
    );
    crate::exit(0x100 | frame.vector as u32);
}

/// Runs `code` in ring 3 on a user stack; it comes back to ring 0 only
/// through an exception or interrupt (use the exception hook).
pub fn run_user(code: extern "C" fn() -> !) -> ! {
    let stack_top = (&raw const USER_STACK) as u64 + 16384;
    // SAFETY: IRETQ to a DPL-3 code segment of the GDT with a DPL-3 stack
    // segment; every page is user-accessible (lib.rs page tables); `code`
    // never returns.
    unsafe {
        asm!(
            "push {ss}",
            "push {rsp}",
            "push 0x2",
            "push {cs}",
            "push {rip}",
            "iretq",
            ss = in(reg) USER_DATA,
            rsp = in(reg) stack_top,
            cs = in(reg) USER_CODE,
            rip = in(reg) code as *const () as u64,
            options(noreturn)
        )
    }
}

/// Enables interrupts.
pub fn enable_interrupts() {
    // SAFETY: every vector has a handler (init).
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Disables interrupts.
pub fn disable_interrupts() {
    // SAFETY: CLI only clears RFLAGS.IF.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// STI; HLT: waits for an interrupt with no window for it to slip in
/// before the HLT (the STI shadow, SDM Vol. 2B, STI).
pub fn wait_for_interrupt() {
    // SAFETY: as for `enable_interrupts`.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
}

/// HLT with interrupts as they are.
pub fn halt() {
    // SAFETY: HLT only stops the CPU until an interrupt (or forever).
    unsafe { asm!("hlt", options(nomem, nostack)) }
}
