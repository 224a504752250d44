//! The only statics every node may write, in the image's `.shared` section
//! (linker.ld), which each node maps read-write; the rest of the image is
//! read-only to nodes.
//!
//! They exist because the console UART and the machine's stop path are one
//! per machine, not per node: a line must not interleave with another
//! node's, and a panic anywhere must stop every CPU. Nothing else may go
//! here; node state lives in node memory.

use super::hooks::ConsoleInput;
use super::serial::Serial;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use spin::Mutex;

/// Serialises whole console lines across all CPUs of all nodes.
// SAFETY: `.shared` is a writable, loadable section of the image (linker.ld),
// mapped read-write in every node's page tables; a static placed there is
// an ordinary static in every other respect.
#[unsafe(link_section = ".shared")]
pub static CONSOLE: Mutex<Serial> = Mutex::new(Serial);

/// What the console keyboard typed for each VM, and which VM has it.
// SAFETY: as for CONSOLE.
#[unsafe(link_section = ".shared")]
pub static CONSOLE_INPUT: Mutex<ConsoleInput> = Mutex::new(ConsoleInput::new());

/// The VM (plan index) that has the console keyboard; written under the
/// CONSOLE_INPUT lock, read without it.
// SAFETY: as for CONSOLE.
#[unsafe(link_section = ".shared")]
pub static FOCUS: AtomicU32 = AtomicU32::new(0);

/// One bit per VM (plan index) with console input waiting.
// SAFETY: as for CONSOLE.
#[unsafe(link_section = ".shared")]
pub static INPUT_READY: AtomicU32 = AtomicU32::new(0);

/// The VM (plan index) whose console line was left open without a newline
/// (its prompt), or `u32::MAX`; changed only under the CONSOLE lock.
// SAFETY: as for CONSOLE.
#[unsafe(link_section = ".shared")]
pub static OPEN_LINE: AtomicU32 = AtomicU32::new(u32::MAX);

/// Set by the first panic; other CPUs that then take the stop NMI halt.
// SAFETY: as for CONSOLE.
#[unsafe(link_section = ".shared")]
pub static STOPPING: AtomicBool = AtomicBool::new(false);

/// Counts isolation faults machine-wide, so the isolation self-test on the
/// victim node can tell that the attacker's write has faulted.
// SAFETY: as for CONSOLE.
#[unsafe(link_section = ".shared")]
pub static ISOLATION_FAULTS: AtomicU32 = AtomicU32::new(0);

/// APIC IDs (0-255) of the CPUs that run Atoll, one bit each: the panic
/// path stops exactly these. A CPU that was never started sits in
/// wait-for-SIPI, where an NMI may wake it into firmware code (QEMU does).
// SAFETY: as for CONSOLE.
#[unsafe(link_section = ".shared")]
static RUNNING: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Records that the CPU with `apic_id` runs Atoll.
pub fn mark_running(apic_id: u32) {
    if let Some(word) = RUNNING.get((apic_id / 64) as usize) {
        word.fetch_or(1 << (apic_id % 64), Ordering::SeqCst);
    }
}

/// The APIC IDs of the running CPUs.
pub fn running() -> impl Iterator<Item = u32> {
    RUNNING.iter().enumerate().flat_map(|(i, word)| {
        let bits = word.load(Ordering::SeqCst);
        (0..64u32)
            .filter(move |b| bits & (1 << b) != 0)
            .map(move |b| i as u32 * 64 + b)
    })
}
