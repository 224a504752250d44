//! The emulated machine's serial console as a pseudo-terminal, for runs
//! that type into it: interactive `cargo xtask run`, and tests that drive
//! a guest's shell ([`ConsoleInput`]).
//!
//! The emulator opens the terminal side as its COM1 (Bochs `mode=term`,
//! QEMU a tty character device); the harness keeps the other side. What
//! the machine writes is copied to the run's serial file, so the line
//! reader works as for file consoles.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

/// Bytes to type once the console has printed a line containing `after`
/// (at any point of the run), or shows it in the line it is printing (a
/// prompt). A run's inputs are typed in order, each only after the one
/// before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleInput {
    pub after: String,
    pub send: Vec<u8>,
}

impl ConsoleInput {
    pub fn new(after: &str, send: &[u8]) -> Self {
        ConsoleInput {
            after: after.into(),
            send: send.to_vec(),
        }
    }
}

/// The harness's side of the console terminal.
pub struct SerialPty {
    master: File,
    terminal: PathBuf,
}

impl SerialPty {
    /// A new pseudo-terminal in raw mode (no echo, no line editing, bytes
    /// passed as they are).
    pub fn open() -> Result<SerialPty> {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master: OwnedFd =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).context("opening a pseudo-terminal")?;
        grantpt(&master).context("grantpt")?;
        unlockpt(&master).context("unlockpt")?;
        let name = ptsname(&master, Vec::new()).context("ptsname")?;
        let terminal = PathBuf::from(name.to_string_lossy().into_owned());
        let mut termios = rustix::termios::tcgetattr(&master).context("tcgetattr")?;
        termios.make_raw();
        rustix::termios::tcsetattr(&master, rustix::termios::OptionalActions::Now, &termios)
            .context("tcsetattr")?;
        Ok(SerialPty {
            master: File::from(master),
            terminal,
        })
    }

    /// The terminal device the emulator opens as COM1.
    pub fn terminal(&self) -> &Path {
        &self.terminal
    }

    /// A handle to type into the console with.
    pub fn input(&self) -> Result<File> {
        self.master
            .try_clone()
            .context("cloning the console handle")
    }

    /// Copies everything the machine writes to `serial`, and to stdout if
    /// `echo`, until the emulator closes the terminal.
    pub fn copy_output(&self, serial: &Path, echo: bool) -> Result<()> {
        let mut from = self.master.try_clone()?;
        let mut to =
            File::create(serial).with_context(|| format!("creating {}", serial.display()))?;
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the emulator has closed the terminal.
            while let Ok(n @ 1..) = from.read(&mut buf) {
                let _ = to.write_all(&buf[..n]);
                if echo {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
            }
        });
        Ok(())
    }
}

/// Types a run's [`ConsoleInput`]s as their triggers appear, one byte per
/// call: the emulated UART has a 16-byte FIFO and the machine reads it only
/// now and then, so bytes sent all at once would overflow it.
pub struct Typist {
    pending: std::collections::VecDeque<ConsoleInput>,
    typing: std::collections::VecDeque<u8>,
    to: File,
}

impl Typist {
    pub fn new(inputs: &[ConsoleInput], to: File) -> Self {
        Typist {
            pending: inputs.iter().cloned().collect(),
            typing: std::collections::VecDeque::new(),
            to,
        }
    }

    /// Called with every console line seen so far (`lines`, in order) and
    /// the unfinished one: starts the next input once its trigger appeared
    /// and the one before it is typed, and types one byte.
    pub fn poll(&mut self, lines: &[String], unfinished: &str) {
        if self.typing.is_empty()
            && let Some(next) = self.pending.front()
        {
            let seen =
                unfinished.contains(&next.after) || lines.iter().any(|l| l.contains(&next.after));
            if seen {
                self.typing.extend(&next.send);
                self.pending.pop_front();
            }
        }
        if let Some(byte) = self.typing.pop_front() {
            let _ = self.to.write_all(&[byte]);
            let _ = self.to.flush();
        }
    }

    /// Whether everything has been typed.
    pub fn done(&self) -> bool {
        self.pending.is_empty() && self.typing.is_empty()
    }
}

/// The key that ends an interactive run from the keyboard: Ctrl-] (as in
/// telnet); every other key goes to the machine.
pub const QUIT_KEY: u8 = 0x1d;

/// Forwards the keyboard (stdin, put in raw mode while the run lasts) to
/// the console. Sets `quit` when [`QUIT_KEY`] is typed. The returned guard
/// puts the terminal back.
pub fn forward_keyboard(to: File, quit: Arc<AtomicBool>) -> Option<KeyboardGuard> {
    let stdin = rustix::stdio::stdin();
    let saved = rustix::termios::tcgetattr(stdin).ok();
    if let Some(saved) = &saved {
        let mut raw = saved.clone();
        raw.make_raw();
        // Keys go through untouched, but the console still prints "\n" as
        // a new line (the same terminal shows the machine's output).
        raw.output_modes |=
            rustix::termios::OutputModes::OPOST | rustix::termios::OutputModes::ONLCR;
        let _ = rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw);
    }
    let mut to = to;
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut keys = std::io::stdin().lock();
        while let Ok(n @ 1..) = keys.read(&mut buf) {
            if let Some(at) = buf[..n].iter().position(|&b| b == QUIT_KEY) {
                let _ = to.write_all(&buf[..at]);
                quit.store(true, Ordering::SeqCst);
                return;
            }
            let _ = to.write_all(&buf[..n]);
        }
    });
    saved.map(|saved| KeyboardGuard { saved })
}

/// Restores the keyboard terminal's settings when dropped.
pub struct KeyboardGuard {
    saved: rustix::termios::Termios,
}

impl Drop for KeyboardGuard {
    fn drop(&mut self) {
        let stdin = rustix::stdio::stdin();
        let _ =
            rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_typed_in_order_once_their_trigger_appeared() {
        let path = std::env::temp_dir().join(format!("atoll-typist-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let mut typist = Typist::new(
            &[
                ConsoleInput::new("login", b"a"),
                ConsoleInput::new("prompt", b"b"),
            ],
            file,
        );
        let mut lines = vec!["prompt".to_string()];
        typist.poll(&lines, "");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"",
            "the first waits for its own trigger"
        );
        lines.push("login:".into());
        typist.poll(&lines, "");
        assert_eq!(std::fs::read(&path).unwrap(), b"a");
        typist.poll(&lines, "");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"ab",
            "then the second: its trigger came earlier"
        );
        assert!(typist.done());
        let file = File::create(&path).unwrap();
        let mut typist = Typist::new(&[ConsoleInput::new("vm:/# ", b"ls\r")], file);
        for _ in 0..5 {
            typist.poll(&[], "[vm] vm:/# ");
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"ls\r",
            "a prompt counts; one byte a call"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_pty_passes_bytes_both_ways_unchanged() {
        let pty = SerialPty::open().unwrap();
        let mut terminal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.terminal())
            .unwrap();
        let mut input = pty.input().unwrap();
        input.write_all(b"ab\r").unwrap();
        let mut got = [0u8; 3];
        terminal.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ab\r", "raw: no CR translation, no echo");
    }
}
