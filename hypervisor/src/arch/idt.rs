//! The IDT: CPU exceptions (vectors 0-31, SDM Vol. 3A, 7.15) and the few
//! interrupt vectors Atoll uses (inter-node signals, node stop, spurious).
//!
//! An exception is a bug in Atoll, reported as a panic with its vector,
//! error code and the interrupted registers, with two exceptions: an NMI
//! while the machine is stopping halts the CPU quietly (the panic path's
//! stop signal), and a page fault on another node's memory is an isolation
//! fault that stops only the faulting node (node.rs).
//!
//! Each vector has a small stub that pushes a uniform frame (a zero error
//! code where the CPU pushes none, then the vector number and the general
//! registers) and calls [`exception_entry`]:
//!
//! ```text
//!  rsp ->  r15 r14 ... rax   (pushed by the common stub)
//!          vector
//!          error code        (CPU-pushed, or 0)
//!          rip cs rflags rsp ss   (CPU-pushed, SDM 7.14.1)
//! ```

use core::arch::global_asm;
use spin::Once;

/// The register frame the stubs build.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
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

const _: () = assert!(core::mem::offset_of!(ExceptionFrame, vector) == 15 * 8);
const _: () = assert!(core::mem::offset_of!(ExceptionFrame, rip) == 17 * 8);

// Vectors for which the CPU pushes an error code: 8, 10-14, 17, 21, 29, 30
// (SDM Vol. 3A, Table 7-1).
global_asm!(
    r#"
    .section .text
    .macro EXC_STUB vector
    .balign 16
exception_stub_\vector:
    .if (\vector == 8) || (\vector >= 10 && \vector <= 14) || (\vector == 17) || (\vector == 21) || (\vector == 29) || (\vector == 30)
    .else
    push $0
    .endif
    push $\vector
    jmp exception_common
    .endm

    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    EXC_STUB \v
    .endr

exception_common:
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
    cld
    call exception_entry
    ud2

    /* Interrupts: save the registers a C call may clobber, call
       interrupt_entry(vector), restore, return. The CPU aligns RSP to 16
       before pushing its 5-word frame, so 9 pushes leave it aligned. */
    .macro IRQ_STUB vector
    .balign 16
irq_stub_\vector:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    mov $\vector, %edi
    cld
    call interrupt_entry
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq
    .endm

    .irp v, 240,241,242,243,255
    IRQ_STUB \v
    .endr

    .section .rodata
    .balign 8
    .global exception_stubs
exception_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exception_stub_\v
    .endr
    .global irq_stubs
irq_stubs:
    .irp v, 240,241,242,243,255
    .quad irq_stub_\v
    .endr
"#,
    options(att_syntax)
);

unsafe extern "C" {
    /// The stub addresses, defined above.
    static exception_stubs: [u64; 32];
    /// The interrupt stubs for [`IRQ_VECTORS`], in that order.
    static irq_stubs: [u64; 5];
}

/// An inter-node signal arrived (a doorbell rang).
pub const SIGNAL_VECTOR: u8 = 240;
/// Stop this CPU: its node is stopping.
pub const STOP_VECTOR: u8 = 241;
/// The local APIC timer: a periodic tick that bounds every wait.
pub const TIMER_VECTOR: u8 = 242;
/// A kick: makes a CPU leave its guest (or its idle wait) and look at its
/// vCPUs' requests (thesis 6.4: the owning CPU applies changes).
pub const KICK_VECTOR: u8 = 243;
/// The interrupt vectors with a stub, matching `irq_stubs`.
const IRQ_VECTORS: [u8; 5] = [
    SIGNAL_VECTOR,
    STOP_VECTOR,
    TIMER_VECTOR,
    KICK_VECTOR,
    super::apic::SPURIOUS_VECTOR,
];

/// An IDT gate descriptor (SDM Vol. 3A, 7.14.1, Figure 7-8).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(core::mem::size_of::<Gate>() == 16);

/// The 64-bit code selector of the boot GDT (entry.rs).
const KERNEL_CODE_SELECTOR: u16 = 0x08;
/// Present, DPL 0, 64-bit interrupt gate (type 0xE): IF is cleared on entry.
const INTERRUPT_GATE: u8 = 0x8e;

impl Gate {
    fn interrupt(handler: u64) -> Self {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CODE_SELECTOR,
            ist: 0,
            type_attr: INTERRUPT_GATE,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

/// Built once on the boot CPU in part 1; read-only afterwards, and shared
/// by every CPU (the IDT holds code addresses only, no node state).
static IDT: Once<[Gate; 256]> = Once::new();

fn build() -> [Gate; 256] {
    // SAFETY: the stub tables are initialised, read-only data in .rodata
    // (global_asm above), so reading them is a plain load.
    let (exceptions, irqs) = unsafe { (exception_stubs, irq_stubs) };
    let mut idt = [Gate::default(); 256];
    for (gate, stub) in idt.iter_mut().zip(exceptions) {
        *gate = Gate::interrupt(stub);
    }
    // Known-good stacks for the two exceptions that must work on a broken
    // one (each CPU's TSS provides them, gdt.rs).
    idt[8].ist = super::gdt::IST_DOUBLE_FAULT;
    idt[2].ist = super::gdt::IST_NMI;
    for (vector, stub) in IRQ_VECTORS.into_iter().zip(irqs) {
        idt[usize::from(vector)] = Gate::interrupt(stub);
    }
    idt
}

/// Loads the IDT on this CPU (building it on first use).
pub fn init() {
    let idt = IDT.call_once(build);
    let pointer = x86::dtables::DescriptorTablePointer::new(idt);
    // SAFETY: the pointer names a 'static, fully initialised table whose
    // present gates point at the stubs above, in the code segment of the
    // image GDT; the other gates are not present (a stray vector raises #NP).
    unsafe { x86::dtables::lidt(&pointer) };
}

/// Called by the interrupt stubs with interrupts off.
#[unsafe(no_mangle)]
extern "C" fn interrupt_entry(vector: u64) {
    let vector = vector as u8;
    if vector == super::apic::SPURIOUS_VECTOR {
        return; // SDM 11.9: a spurious interrupt gets no EOI.
    }
    super::hooks::on_interrupt(vector);
    super::apic::eoi();
}

/// Called by the stubs with interrupts off; never returns.
#[unsafe(no_mangle)]
extern "C" fn exception_entry(frame: &ExceptionFrame) -> ! {
    const NMI: u64 = 2;
    const PAGE_FAULT: u64 = 14;
    if frame.vector == NMI && super::shared::STOPPING.load(core::sync::atomic::Ordering::SeqCst) {
        super::cpu::halt_forever();
    }
    // SAFETY: reading CR2 has no side effects; we run at CPL 0.
    let cr2 = unsafe { x86::controlregs::cr2() };
    if frame.vector == PAGE_FAULT {
        super::hooks::on_page_fault(cr2 as u64, frame.rip, frame.error_code);
    }
    panic!(
        "CPU exception {} (vector {}) error {:#x} at rip {:#x} rsp {:#x} cr2 {:#x} rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x}",
        exception_name(frame.vector),
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.rsp,
        cr2,
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
    );
}

/// The SDM's mnemonic for an exception vector.
fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "reserved", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "reserved", "reserved",
        "reserved", "reserved", "reserved", "reserved", "#HV", "#VC", "#SX", "reserved",
    ];
    usize::try_from(vector)
        .ok()
        .and_then(|v| NAMES.get(v))
        .copied()
        .unwrap_or("unknown")
}
