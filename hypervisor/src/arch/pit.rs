//! Busy-wait delays from the 8254 PIT's channel 2 (the one whose gate and
//! output the PC wires to port 0x61), used where the SDM asks for real time
//! between INIT and SIPI (SDM Vol. 3A, 10.4.4.1: 10 ms, then 200 us).
//!
//! Channel 2 in mode 0 counts down at 1.193182 MHz once its gate is high and
//! raises OUT2 (port 0x61 bit 5) at zero, independent of CPU speed.

use super::port::Port;

// SAFETY: 0x42/0x43 are the PIT's channel 2 data and mode ports and 0x61 the
// PC's system control port B (gate 2 / speaker / OUT2); only this module
// touches them and they cannot change memory.
const CHANNEL2: Port = unsafe { Port::new(0x42) };
// SAFETY: see CHANNEL2.
const MODE: Port = unsafe { Port::new(0x43) };
// SAFETY: see CHANNEL2.
const CONTROL_B: Port = unsafe { Port::new(0x61) };

const PIT_HZ: u64 = 1_193_182;
/// Channel 2, low then high byte, mode 0 (interrupt on terminal count), binary.
const MODE_CH2_ONESHOT: u8 = 0b1011_0000;
const GATE2: u8 = 1 << 0;
const SPEAKER: u8 = 1 << 1;
const OUT2: u8 = 1 << 5;
/// Upper bound on status polls per countdown, so a missing PIT cannot hang
/// the boot (a 54 ms countdown takes far fewer polls on any real or
/// emulated machine).
const MAX_POLLS: u32 = 50_000_000;

/// Waits at least `us` microseconds (longer if the PIT is slow to answer).
pub fn wait_us(us: u64) {
    let mut ticks = us.saturating_mul(PIT_HZ).div_ceil(1_000_000).max(1);
    while ticks > 0 {
        let chunk = ticks.min(0xffff);
        countdown(chunk as u16);
        ticks -= chunk;
    }
}

fn countdown(ticks: u16) {
    let control = CONTROL_B.read_u8() & !(GATE2 | SPEAKER);
    CONTROL_B.write_u8(control);
    MODE.write_u8(MODE_CH2_ONESHOT);
    let [low, high] = ticks.to_le_bytes();
    CHANNEL2.write_u8(low);
    CHANNEL2.write_u8(high);
    CONTROL_B.write_u8(control | GATE2);
    for _ in 0..MAX_POLLS {
        if CONTROL_B.read_u8() & OUT2 != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    CONTROL_B.write_u8(control);
}
