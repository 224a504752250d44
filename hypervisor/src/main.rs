//! The Atoll hypervisor binary.
//!
//! GRUB loads it through multiboot2; `arch::entry` switches to 64-bit mode
//! and calls [`atoll_main`], which hands over to [`boot::run`]. See
//! `hypervisor/DESIGN.md` for the boot flow and the arch/logic split.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod boot;
mod console;
mod node;
mod selftest;

use atoll_platform::event::Event;
use core::fmt::Write;
use core::sync::atomic::Ordering;

/// The Rust entry point, called by the boot code in 64-bit mode with the
/// multiboot2 magic (EAX at entry) and the boot information address (EBX).
#[unsafe(no_mangle)]
extern "C" fn atoll_main(magic: u32, boot_info_addr: u64) -> ! {
    arch::percpu::clear();
    arch::heap::init();
    console::init();
    arch::gdt::load_boot_tables();
    arch::idt::init();
    arch::pic::disable();
    // SAFETY: the boot identity map is active (entry.rs), the address is the
    // one GRUB passed, and nothing in Atoll writes to the boot information,
    // the firmware tables or the boot modules.
    let (boot_info, memory) = unsafe {
        (
            arch::boot_info_bytes(boot_info_addr),
            arch::phys::BootMemory::new(),
        )
    };
    boot::run(magic, boot_info, &memory)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // The first panic anywhere stops every CPU (an NMI to all others, which
    // halt when they see STOPPING); a second panic just halts.
    if arch::shared::STOPPING.swap(true, Ordering::SeqCst) {
        arch::cpu::halt_forever();
    }
    arch::apic::nmi_all_but_self();
    let (file, line) = info
        .location()
        .map_or(("<unknown>", 0), |l| (l.file(), l.line()));
    let cpu = arch::cpu::features().apic_id;
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
    arch::cpu::halt_forever()
}
