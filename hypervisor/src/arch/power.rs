//! Powering the machine off.
//!
//! In order of preference (each is tried only if the one before did not stop
//! the machine):
//! 1. ACPI S5 through the FADT's PM1 control blocks (ACPI 6.5, 7.4.2), which
//!    real machines, Bochs and QEMU all honour;
//! 2. Bochs' shutdown port 0x8900 (writing the string "Shutdown");
//! 3. QEMU's isa-debug-exit device at port 0xf4, if the emulator has one.
//!
//! The console is drained first so that the last line is not cut short.

use super::port::Port;
use super::serial::Serial;
use atoll_platform::acpi::SoftOff;

/// Polls to wait for the firmware to hand ACPI to the OS (SCI_EN).
const ACPI_ENABLE_POLLS: u32 = 100_000;
/// Polls to wait for the machine to go away after a power-off write.
const SETTLE_POLLS: u32 = 1_000_000;

/// Powers off: ACPI S5 when `soft_off` is known, else the emulator ports.
/// Returns only if nothing worked; the caller then halts.
pub fn power_off(soft_off: Option<SoftOff>, status: u8) {
    Serial.drain();
    if let Some(off) = soft_off {
        acpi_soft_off(off);
        settle();
    }
    bochs_shutdown();
    settle();
    qemu_debug_exit(status);
    settle();
}

fn acpi_soft_off(off: SoftOff) {
    // SAFETY: the FADT names these ports as the PM1 control blocks and SMI
    // command port; the hypervisor owns ACPI power management, and these
    // registers cannot change memory.
    let (pm1a, pm1b, smi) = unsafe {
        (
            Port::new(off.pm1a_control_port),
            off.pm1b_control_port.map(|p| Port::new(p)),
            off.smi_command_port.map(|p| Port::new(p)),
        )
    };
    // Firmware still in legacy mode ignores SLP_EN until ACPI is enabled
    // (ACPI 6.5, 4.8.2.1.1 and 16.3.1).
    if pm1a.read_u16() & SoftOff::SCI_EN == 0
        && let Some(smi) = smi
        && off.acpi_enable != 0
    {
        smi.write_u8(off.acpi_enable);
        for _ in 0..ACPI_ENABLE_POLLS {
            if pm1a.read_u16() & SoftOff::SCI_EN != 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }
    pm1a.write_u16(SoftOff::control_value(pm1a.read_u16(), off.slp_typ_a));
    if let Some(pm1b) = pm1b {
        pm1b.write_u16(SoftOff::control_value(pm1b.read_u16(), off.slp_typ_b));
    }
}

fn bochs_shutdown() {
    // SAFETY: 0x8900 is Bochs' shutdown port; on other machines it is
    // unassigned, and writes there cannot change memory.
    let port = unsafe { Port::new(0x8900) };
    b"Shutdown".iter().for_each(|&b| port.write_u8(b));
}

fn qemu_debug_exit(status: u8) {
    // SAFETY: 0xf4 is QEMU's isa-debug-exit device when configured (as the
    // Atoll harness does); elsewhere it is unassigned. Writes cannot change
    // memory. QEMU exits with (value << 1) | 1.
    let port = unsafe { Port::new(0xf4) };
    port.write_u32(u32::from(status));
}

fn settle() {
    for _ in 0..SETTLE_POLLS {
        core::hint::spin_loop();
    }
}
