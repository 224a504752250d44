//! The Atoll hypervisor binary.
//!
//! GRUB loads it through multiboot2; `arch::entry` switches to 64-bit mode
//! and calls [`start`], which hands over to [`boot::run`]. See
//! `hypervisor/DESIGN.md` for the boot flow and the arch/logic split.
//!
//! `unsafe` is a compile error everywhere in this crate but `arch`: the
//! allowance below is the only one. The panic handler and [`start`] are
//! safe code; the entry points that need `unsafe` (the multiboot2 entry,
//! the AP trampoline, the interrupt and exception stubs) live in `arch`.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code)]
mod arch;
mod boot;
mod console;
mod devwork;
mod exit_env;
mod hypercalls;
mod node;
mod sched;
mod selftest;
mod signals;
mod vcpu;
mod vm;

use atoll_platform::event::Event;
use core::fmt::Write;
use core::sync::atomic::Ordering;

/// The boot CPU's first Rust code (from `arch::entry`, with the boot
/// information GRUB passed): set up the CPU and console, then boot part 1.
fn start(magic: u32, boot_info: &'static [u8], memory: &arch::phys::BootMemory) -> ! {
    arch::percpu::clear();
    arch::heap::init();
    console::init();
    arch::gdt::load_boot_tables();
    arch::idt::init();
    arch::pic::disable();
    boot::run(magic, boot_info, memory)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // The first panic anywhere stops every CPU (an NMI to all others, which
    // halt when they see STOPPING); a second panic just halts.
    if arch::shared::STOPPING.swap(true, Ordering::SeqCst) {
        arch::cpu::halt_forever();
    }
    let cpu = arch::cpu::features().apic_id;
    arch::apic::nmi_other_running_cpus(cpu);
    let (file, line) = info
        .location()
        .map_or(("<unknown>", 0), |l| (l.file(), l.line()));
    let mut out = console::panic_writer();
    let serial = out.serial();
    // Start on a fresh line in case the panic interrupted one.
    let _ = writeln!(
        serial,
        "\n[PANIC] {} at {file}:{line} on cpu {cpu}",
        info.message()
    );
    let _ = Event::new(&mut *serial, "panic")
        .field("msg", format_args!("{}", info.message()))
        .field("file", file)
        .field("line", line)
        .field("cpu", cpu)
        .finish();
    serial.drain();
    // Let go of the console: every other CPU is stopped by now, and were one
    // not, its next line would show it (rather than block it unseen).
    drop(out);
    arch::cpu::halt_forever()
}
