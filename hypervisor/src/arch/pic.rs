//! The legacy 8259A interrupt controllers, switched off.
//!
//! The BIOS leaves the master PIC delivering IRQ 0-7 on vectors 8-15, which
//! collide with CPU exceptions (IRQ 0, the PIT tick, would arrive as vector
//! 8, "#DF"). Atoll uses only local APIC interrupts, so the PICs are
//! re-based to vectors 0x20-0x2f (in case one still raises a spurious IRQ 7
//! or 15) and every line is masked (8259A data sheet, ICW1-ICW4, OCW1).

use super::port::Port;

// SAFETY: 0x20/0x21 and 0xa0/0xa1 are the master and slave 8259A command
// and data ports on every PC; only this module touches them, at boot, and
// they cannot change memory.
const MASTER_COMMAND: Port = unsafe { Port::new(0x20) };
// SAFETY: see MASTER_COMMAND.
const MASTER_DATA: Port = unsafe { Port::new(0x21) };
// SAFETY: see MASTER_COMMAND.
const SLAVE_COMMAND: Port = unsafe { Port::new(0xa0) };
// SAFETY: see MASTER_COMMAND.
const SLAVE_DATA: Port = unsafe { Port::new(0xa1) };

/// ICW1: initialise, ICW4 follows.
const ICW1_INIT_WITH_ICW4: u8 = 0x11;
/// ICW4: 8086 mode.
const ICW4_8086: u8 = 0x01;

/// Re-bases both PICs away from the exception vectors and masks all lines.
pub fn disable() {
    MASTER_COMMAND.write_u8(ICW1_INIT_WITH_ICW4);
    SLAVE_COMMAND.write_u8(ICW1_INIT_WITH_ICW4);
    MASTER_DATA.write_u8(0x20); // ICW2: vector base
    SLAVE_DATA.write_u8(0x28);
    MASTER_DATA.write_u8(1 << 2); // ICW3: slave on IRQ 2
    SLAVE_DATA.write_u8(2); // ICW3: slave identity
    MASTER_DATA.write_u8(ICW4_8086);
    SLAVE_DATA.write_u8(ICW4_8086);
    MASTER_DATA.write_u8(0xff); // OCW1: mask everything
    SLAVE_DATA.write_u8(0xff);
}
