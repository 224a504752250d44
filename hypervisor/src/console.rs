//! The console: human log lines (`[INFO] ...`, through the `log` crate) and
//! structured event lines (`@ev {json}`, see hypervisor/EVENTS.md) on COM1.
//!
//! One lock serialises whole lines, so lines from different CPUs never
//! interleave. The panic path does not wait for the lock forever: a CPU that
//! panicked while holding it must still be able to report.
//!
//! VMs' console output comes out as lines prefixed `[vm] `. The VM that
//! has the keyboard (see [`ConsoleInput`]) may also leave a line open, so
//! its shell prompt shows while it waits for input; any other output first
//! ends that line.

use crate::arch::serial::Serial;
use crate::arch::shared::{CONSOLE, CONSOLE_INPUT, FOCUS, INPUT_READY, OPEN_LINE};
use atoll_platform::event::Event;
use core::fmt::Write;
use core::sync::atomic::Ordering;
use heapless::Deque;

/// No VM's line is open.
const NO_LINE: u32 = u32::MAX;

/// Ends a VM's open line before other output.
fn close_open_line(serial: &mut Serial) {
    if OPEN_LINE.swap(NO_LINE, Ordering::Relaxed) != NO_LINE {
        let _ = serial.write_str("\n");
    }
}

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let mut serial = CONSOLE.lock();
            close_open_line(&mut serial);
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
    close_open_line(&mut serial);
    let _ = fields(Event::new(&mut *serial, name)).finish();
}

/// Writes the end of a line of VM `index`'s console output: `[vm] text`,
/// or only `text` after the part of the line [`guest_partial`] wrote.
pub fn guest_line(index: usize, vm: &str, text: &str) {
    let mut serial = CONSOLE.lock();
    close_line_of_other(&mut serial, index);
    if OPEN_LINE.swap(NO_LINE, Ordering::Relaxed) != index as u32 {
        let _ = write!(serial, "[{vm}] ");
    }
    let _ = writeln!(serial, "{text}");
}

/// Writes the start of a line of VM `index`'s console output and leaves
/// the line open (a prompt).
pub fn guest_partial(index: usize, vm: &str, text: &str) {
    let mut serial = CONSOLE.lock();
    if OPEN_LINE.load(Ordering::Relaxed) != index as u32 {
        close_line_of_other(&mut serial, index);
        let _ = write!(serial, "[{vm}] ");
    }
    let _ = write!(serial, "{text}");
    OPEN_LINE.store(index as u32, Ordering::Relaxed);
}

/// Ends another VM's open line (`index`'s own continues).
fn close_line_of_other(serial: &mut Serial, index: usize) {
    let open = OPEN_LINE.load(Ordering::Relaxed);
    if open != NO_LINE && open != index as u32 {
        let _ = serial.write_str("\n");
        OPEN_LINE.store(NO_LINE, Ordering::Relaxed);
    }
}

/// VMs (by their index in the plan, the config's `[[vm]]` order) that can
/// get the keyboard; later ones still print.
pub const INPUT_VMS: usize = 16;
/// Bytes typed ahead for one VM before more are dropped.
const INPUT_BYTES: usize = 128;
/// Ctrl-A: the key after it chooses the VM that gets the keyboard: a digit
/// N the VM with index N, `n` the next VM; a second Ctrl-A types Ctrl-A.
pub const FOCUS_KEY: u8 = 0x01;

/// The console keyboard: which VM has it, and what was typed for each VM
/// and not yet taken by its node.
pub struct ConsoleInput {
    focus: usize,
    after_focus_key: bool,
    queues: [Deque<u8, INPUT_BYTES>; INPUT_VMS],
}

impl ConsoleInput {
    pub const fn new() -> Self {
        ConsoleInput {
            focus: 0,
            after_focus_key: false,
            queues: [const { Deque::new() }; INPUT_VMS],
        }
    }

    /// One typed byte, with `vms` VMs in the plan; the new focus if the
    /// byte changed it.
    fn key(&mut self, byte: u8, vms: usize) -> Option<usize> {
        let choices = vms.min(INPUT_VMS);
        if self.after_focus_key {
            self.after_focus_key = false;
            let chosen = match byte {
                b'0'..=b'9' => usize::from(byte - b'0'),
                b'n' if choices > 0 => (self.focus + 1) % choices,
                FOCUS_KEY => {
                    self.queue(FOCUS_KEY);
                    return None;
                }
                _ => return None,
            };
            if chosen >= choices {
                return None;
            }
            self.focus = chosen;
            FOCUS.store(chosen as u32, Ordering::Release);
            return Some(chosen);
        }
        if byte == FOCUS_KEY {
            self.after_focus_key = true;
            return None;
        }
        self.queue(byte);
        None
    }

    fn queue(&mut self, byte: u8) {
        if let Some(q) = self.queues.get_mut(self.focus)
            && q.push_back(byte).is_ok()
        {
            INPUT_READY.fetch_or(1 << self.focus, Ordering::Release);
        }
    }
}

impl Default for ConsoleInput {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes read from the console per poll, at most.
const POLL_BYTES: usize = 16;

/// Takes what was typed on the console (if no other CPU is writing to it)
/// and queues it for the VM with the keyboard; `vm_names` are the plan's
/// VMs in order. A focus change is reported as `console_focus`.
pub fn poll_input(vm_names: &[&str]) {
    let mut bytes = [0u8; POLL_BYTES];
    let mut n = 0;
    if let Some(serial) = CONSOLE.try_lock() {
        while let Some(slot) = bytes.get_mut(n) {
            let Some(byte) = serial.try_read_byte() else {
                break;
            };
            *slot = byte;
            n += 1;
        }
    }
    let mut focus = None;
    if n > 0 {
        let mut input = CONSOLE_INPUT.lock();
        for &byte in bytes.iter().take(n) {
            focus = input.key(byte, vm_names.len()).or(focus);
        }
    }
    if let Some(index) = focus {
        let name = vm_names.get(index).copied().unwrap_or("?");
        event("console_focus", |e| {
            e.field("vm", name).field("index", index)
        });
    }
}

/// Whether bytes wait for VM `index`.
pub fn has_input(index: usize) -> bool {
    index < INPUT_VMS && INPUT_READY.load(Ordering::Acquire) & (1 << index) != 0
}

/// Whether VM `index` has the keyboard (asked at every idle vCPU: no lock).
pub fn has_focus(index: usize) -> bool {
    FOCUS.load(Ordering::Acquire) == index as u32
}

/// Takes up to `buf.len()` bytes typed for VM `index`.
pub fn take_input(index: usize, buf: &mut [u8]) -> usize {
    let mut input = CONSOLE_INPUT.lock();
    let Some(queue) = input.queues.get_mut(index) else {
        return 0;
    };
    let mut n = 0;
    for slot in buf.iter_mut() {
        match queue.pop_front() {
            Some(byte) => {
                *slot = byte;
                n += 1;
            }
            None => break,
        }
    }
    if queue.is_empty() {
        INPUT_READY.fetch_and(!(1 << index), Ordering::Release);
    }
    n
}

/// Puts back bytes the VM could not take yet (its UART FIFO was full).
pub fn untake_input(index: usize, bytes: &[u8]) {
    let mut input = CONSOLE_INPUT.lock();
    let Some(queue) = input.queues.get_mut(index) else {
        return;
    };
    for &byte in bytes.iter().rev() {
        let _ = queue.push_front(byte);
    }
    if !queue.is_empty() {
        INPUT_READY.fetch_or(1 << index, Ordering::Release);
    }
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
