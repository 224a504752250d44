//! The console: human log lines (`[INFO] ...`, through the `log` crate) and
//! structured event lines (`@ev {json}`, see hypervisor/EVENTS.md) on COM1.
//!
//! One lock serialises whole lines, so lines from different CPUs never
//! interleave. The panic path does not wait for the lock forever: a CPU that
//! panicked while holding it must still be able to report.

use crate::arch::serial::Serial;
use crate::arch::shared::CONSOLE;
use atoll_platform::event::Event;
use core::fmt::Write;

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let mut serial = CONSOLE.lock();
            // The UART cannot fail a write; there is nowhere to report it anyway.
            let _ = writeln!(serial, "[{}] {}", record.level(), record.args());
        }
    }

    fn flush(&self) {
        CONSOLE.lock().drain();
    }
}

/// Programs the UART and installs the logger. Called once, first thing.
pub fn init() {
    *CONSOLE.lock() = Serial::init();
    // Only fails if a logger is already set, which means init ran before.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

/// Writes one event line; `fields` adds the fields after `"ev":name`.
pub fn event(name: &str, fields: impl FnOnce(Event<&mut Serial>) -> Event<&mut Serial>) {
    let mut serial = CONSOLE.lock();
    let _ = fields(Event::new(&mut *serial, name)).finish();
}

/// Writes one line of a VM's console output as `[vm] text`.
pub fn guest_line(vm: &str, text: &str) {
    let mut serial = CONSOLE.lock();
    let _ = writeln!(serial, "[{vm}] {text}");
}

/// How many times the panic path tries the console lock before printing
/// without it.
const PANIC_LOCK_TRIES: u32 = 10_000_000;

/// The console for the panic path: the lock if it can be had soon, else the
/// bare UART (a line may then interleave with another CPU's, which beats
/// losing the panic report).
pub fn panic_writer() -> PanicWriter {
    for _ in 0..PANIC_LOCK_TRIES {
        if let Some(guard) = CONSOLE.try_lock() {
            return PanicWriter::Locked(guard);
        }
        core::hint::spin_loop();
    }
    PanicWriter::Unlocked(Serial)
}

/// See [`panic_writer`].
pub enum PanicWriter {
    Locked(spin::MutexGuard<'static, Serial>),
    Unlocked(Serial),
}

impl PanicWriter {
    pub fn serial(&mut self) -> &mut Serial {
        match self {
            PanicWriter::Locked(guard) => guard,
            PanicWriter::Unlocked(serial) => serial,
        }
    }
}
