//! The Atoll hypervisor binary.
//!
//! GRUB loads it through multiboot2; `arch::entry` switches to 64-bit mode
//! and calls [`atoll_main`], which hands over to [`boot::run`]. See
//! `hypervisor/DESIGN.md` for the boot flow and the arch/logic split.
#![no_std]
#![no_main]

mod arch;
mod boot;
mod console;

use atoll_platform::event::Event;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

/// The Rust entry point, called by the boot code in 64-bit mode with the
/// multiboot2 magic (EAX at entry) and the boot information address (EBX).
#[unsafe(no_mangle)]
extern "C" fn atoll_main(magic: u32, boot_info_addr: u64) -> ! {
    console::init();
    arch::idt::init();
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

/// Set by the first panic; a panic inside the panic report just halts.
static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::SeqCst) {
        arch::cpu::halt_forever();
    }
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
    // Only the boot CPU runs at this stage; once other CPUs are started they
    // are stopped here too, by an NMI to all others.
    arch::cpu::halt_forever()
}
