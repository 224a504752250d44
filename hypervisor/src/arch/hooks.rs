//! Every call the arch layer makes up into the node code, declared once,
//! with its contract. Nothing else in `arch/` names `crate::node`,
//! `crate::selftest` or the other logic modules: entry stubs, the
//! trampoline and the interrupt stubs reach the logic only through here,
//! and the types they pass are re-exported here.
//!
//! Common to all hooks: they run at CPL 0 with interrupts disabled
//! (RFLAGS.IF = 0; the host takes interrupts only inside
//! `cpu::wait_for_interrupt` and `vmx::take_pending_interrupts`), and they
//! are ordinary safe Rust.

pub use crate::console::ConsoleInput;
pub use crate::node::{BootState, Node, NodeStart};

use super::heap::NodeHeap;
use super::kmem::KernelLayout;
use super::status::StatusPage;

/// The boot CPU's first Rust code (from `entry::atoll_main`), with the
/// multiboot2 magic, the boot information block and the memory GRUB
/// reported: on the boot stack in `.bss`, the boot identity map active,
/// GS not yet set. Never returns.
pub fn start(magic: u32, boot_info: &'static [u8], memory: &super::phys::BootMemory) -> ! {
    crate::start(magic, boot_info, memory)
}

/// A failure arch met and cannot report itself: an `error` event with
/// `kind` and the error's text (EVENTS.md). Called on a node's first CPU
/// in part 2, with interrupts off.
pub fn report_error(kind: &'static str, error: &dyn core::fmt::Display) {
    crate::console::event("error", |ev| {
        ev.field("kind", kind).field("msg", format_args!("{error}"))
    });
}

/// Part 2 on a node's first CPU (from `nodeboot::node_entry`). Called once
/// per node, on the node's arrival stack (the top of its kernel memory),
/// with the boot page tables still active and GS pointing at no per-CPU
/// block. Never returns.
pub fn node_main(start: &'static NodeStart) -> ! {
    crate::node::node_main(start)
}

/// Every other CPU of a node (from `nodeboot::ap_entry`, after the
/// trampoline). Called once per CPU, on that CPU's own stack in node
/// kernel memory, with the node's page tables active and its [`PerCpu`]
/// block installed (`slot` is its position in the node). Never returns.
///
/// [`PerCpu`]: super::percpu::PerCpu
pub fn ap_main(node: &'static Node, slot: usize) -> ! {
    crate::node::ap_main(node, slot)
}

/// The node record `nodeboot::build_node` places in the node's kernel
/// memory, from the parts arch built (heap, page tables, status page,
/// kernel layout). Called once per node on its first CPU, before its
/// tables are active; allocates nothing.
pub fn new_node(
    boot: &'static BootState,
    index: usize,
    heap: NodeHeap,
    page_root: u64,
    status: &'static StatusPage,
    layout: KernelLayout,
) -> Node {
    Node::new(boot, index, heap, page_root, status, layout)
}

/// A hardware interrupt with a stub (`idt::IRQ_VECTORS`, not the spurious
/// vector), from `idt::interrupt_entry`: on the interrupted stack (no
/// IST), interrupts off, before the local APIC's EOI, which follows when
/// it returns. May not return (the stop vector halts the CPU).
pub fn on_interrupt(vector: u8) {
    crate::node::on_interrupt(vector)
}

/// A page fault in the hypervisor, from `idt::exception_entry`: on the
/// faulting stack, interrupts off, with the faulting address (CR2), RIP
/// and error code. It stops the node if the address is another node's
/// (an isolation fault) and does not return; if it returns, the fault is a
/// bug and the caller panics.
pub fn on_page_fault(addr: u64, rip: u64, error_code: u64) {
    crate::node::on_page_fault(addr, rip, error_code)
}
