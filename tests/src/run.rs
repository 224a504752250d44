//! One boot of the hypervisor in an emulator, from ISO to verdict.

use crate::build::target_dir;
use crate::console::{ConsoleInput, SerialPty, Typist};
use crate::emulator::{self, Emulator, Machine, NumaNode, RunFiles, Running};
use crate::event::{BadEvent, Event};
use crate::iso::{IsoContents, make_iso, make_linux_iso};
use crate::slots;
use anyhow::{Context, Result};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// After a `panic` event: how long to keep reading trailing output before
/// stopping the emulator (the hypervisor halts; the emulator never exits).
pub const PANIC_GRACE: Duration = Duration::from_secs(1);
/// After a `poweroff` event: how long the emulator may take to exit.
pub const POWEROFF_GRACE: Duration = Duration::from_secs(15);
/// How often the serial file is polled.
const POLL: Duration = Duration::from_millis(20);
/// How many old run directories to keep under target/atoll-runs.
const KEEP_RUN_DIRS: usize = 40;

/// The cluster config module of a run.
#[derive(Clone, Debug)]
pub enum ConfigModule {
    /// This file, as the `cluster.toml` module.
    File(PathBuf),
    /// These bytes (e.g. empty, to test that error).
    Bytes(Vec<u8>),
    /// No config module at all.
    Absent,
}

/// What to boot, and how.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub hypervisor: PathBuf,
    pub emulator: Emulator,
    pub cpus: u32,
    pub mem_mib: u32,
    pub timeout: Duration,
    pub cmdline: String,
    pub config: ConfigModule,
    /// NUMA nodes (QEMU only); empty: no ACPI SRAT, one memory domain.
    pub numa: Vec<NumaNode>,
    /// What to type into the console, and when.
    pub console_input: Vec<ConsoleInput>,
    /// Boot Atoll's Linux guest with this command line directly, without
    /// the hypervisor (for comparisons); the run ends when the emulator
    /// exits (Linux powered off).
    pub native_linux: Option<String>,
    /// The keyboard types into the console and the console goes to stdout
    /// as it comes (not line by line); Ctrl-] ends the run.
    pub interactive: bool,
}

impl RunSpec {
    /// Bochs, 4 CPUs, 512 MiB, 120 s, configs/core.toml (no VMs: the
    /// core's tests run in QEMU too), no command line,
    /// no NUMA.
    pub fn new(hypervisor: PathBuf) -> Self {
        RunSpec {
            hypervisor,
            emulator: Emulator::Bochs,
            cpus: 4,
            mem_mib: 512,
            timeout: Duration::from_secs(120),
            cmdline: String::new(),
            config: ConfigModule::File(crate::build::workspace_root().join("configs/core.toml")),
            numa: Vec::new(),
            console_input: Vec::new(),
            native_linux: None,
            interactive: false,
        }
    }

    /// The machine the emulator is asked for.
    pub fn machine(&self) -> Machine {
        Machine {
            cpus: self.cpus,
            mem_mib: self.mem_mib,
            numa: self.numa.clone(),
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    /// A `poweroff` event, then the emulator exited.
    PoweredOff { status: u64 },
    /// A `poweroff` event, but the emulator kept running.
    PoweroffHung { status: u64 },
    /// A `panic` event.
    Panic {
        msg: String,
        file: String,
        line: u64,
    },
    /// Neither event within the time limit.
    Timeout { after: Duration },
    /// The emulator exited without either event.
    EmulatorExited { code: Option<i32> },
    /// Ended from the keyboard (interactive runs).
    Interrupted,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::PoweredOff { status: 0 } => write!(f, "clean power-off"),
            Ending::PoweredOff { status } => {
                write!(f, "power-off with status {status} (an error was reported)")
            }
            Ending::PoweroffHung { status } => {
                write!(
                    f,
                    "power-off (status {status}) announced but the emulator did not exit"
                )
            }
            Ending::Panic { msg, file, line } => {
                write!(f, "hypervisor panic at {file}:{line}: {msg}")
            }
            Ending::Timeout { after } => {
                write!(f, "timeout after {} s without power-off", after.as_secs())
            }
            Ending::Interrupted => write!(f, "ended from the keyboard"),
            Ending::EmulatorExited { code } => {
                write!(
                    f,
                    "the emulator exited (code {code:?}) before the hypervisor powered off"
                )
            }
        }
    }
}

/// Everything a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub ending: Ending,
    /// Every console line, in order, without line terminators.
    pub lines: Vec<String>,
    /// When each line arrived, from the emulator's start.
    pub line_times: Vec<Duration>,
    pub events: Vec<Event>,
    /// Lines that start like an event but do not parse: a contract breach.
    pub bad_events: Vec<BadEvent>,
    pub wall_time: Duration,
    pub work_dir: PathBuf,
    /// The emulator's last stderr lines, for diagnosis.
    pub emulator_stderr: Vec<String>,
    /// The last lines of the emulator's own log (bochs.log), for diagnosis.
    pub emulator_log: Vec<String>,
}

impl RunOutcome {
    /// A clean power-off with status 0 and every event line well-formed.
    pub fn success(&self) -> bool {
        self.ending == Ending::PoweredOff { status: 0 } && self.bad_events.is_empty()
    }

    /// The first event with this name.
    pub fn event(&self, name: &str) -> Option<&Event> {
        self.events.iter().find(|e| e.name == name)
    }

    /// All events with this name.
    pub fn events_named(&self, name: &str) -> Vec<&Event> {
        self.events.iter().filter(|e| e.name == name).collect()
    }

    /// A report for a failed assertion: ending, last console lines, emulator
    /// stderr, and where the files are.
    pub fn diagnostics(&self) -> String {
        let tail = self.lines[self.lines.len().saturating_sub(25)..].join("\n");
        let mut s = format!(
            "ending: {}\nwork dir: {}\nwall time: {:.1} s\n--- last console lines ---\n{tail}\n",
            self.ending,
            self.work_dir.display(),
            self.wall_time.as_secs_f64()
        );
        for bad in &self.bad_events {
            s += &format!("malformed event line ({}): {}\n", bad.reason, bad.line);
        }
        if !self.emulator_stderr.is_empty() {
            s += &format!(
                "--- emulator stderr (tail) ---\n{}\n",
                self.emulator_stderr.join("\n")
            );
        }
        if !self.emulator_log.is_empty() {
            s += &format!(
                "--- emulator log (tail) ---\n{}\n",
                self.emulator_log.join("\n")
            );
        }
        if self.events.is_empty() && self.work_dir.join("screen.txt").is_file() {
            s += "no event arrived: the boot may have stopped in the BIOS or GRUB; \
                  screen.txt in the work dir has what the screen showed\n";
        }
        s
    }
}

/// Boots `spec`, handing every console line to `on_line` as it arrives.
pub fn run(spec: &RunSpec, mut on_line: impl FnMut(&str)) -> Result<RunOutcome> {
    let machine = spec.machine();
    machine.check(spec.emulator)?;
    let work_dir = new_work_dir(spec)?;
    let mut files = prepare(spec, &work_dir)?;
    let _slot = slots::acquire(&slots::machine_dir())?;
    let mut console = Console::default();
    if spec.interactive || !spec.console_input.is_empty() {
        let pty = SerialPty::open()?;
        pty.copy_output(&files.serial, spec.interactive)?;
        files.serial_terminal = Some(pty.terminal().to_path_buf());
        console.typist = Some(Typist::new(&spec.console_input, pty.input()?));
        if spec.interactive {
            console.keyboard =
                crate::console::forward_keyboard(pty.input()?, Arc::clone(&console.quit));
        }
        console.pty = Some(pty);
    }
    let started = Instant::now();
    let mut running = emulator::start(spec.emulator, &machine, &files, &work_dir)?;
    let (ending, collected) = watch(
        &mut running,
        &files,
        &mut console,
        spec.timeout,
        started,
        &mut on_line,
    );
    drop(console);
    // The ISO is large and can be rebuilt; the rest of the directory is
    // what one needs to understand the run.
    let _ = std::fs::remove_dir_all(work_dir.join("iso"));
    let _ = std::fs::remove_file(&files.iso);
    Ok(RunOutcome {
        ending,
        lines: collected.lines,
        line_times: collected.times,
        events: collected.events,
        bad_events: collected.bad_events,
        wall_time: started.elapsed(),
        work_dir,
        emulator_stderr: running.stderr_tail(15),
        emulator_log: file_tail(&files.emulator_log, 15),
    })
}

/// Makes the ISO in `work_dir` and names the run's files.
fn prepare(spec: &RunSpec, work_dir: &Path) -> Result<RunFiles> {
    let files = |iso| RunFiles {
        iso,
        serial: work_dir.join("serial.txt"),
        serial_terminal: None,
        emulator_log: work_dir.join(format!("{}.log", spec.emulator.name())),
        screen: work_dir.join("screen.txt"),
    };
    if let Some(cmdline) = &spec.native_linux {
        let kernel = crate::linux::kernel()?;
        let initrd = crate::linux::initramfs()?;
        return Ok(files(make_linux_iso(work_dir, &kernel, &initrd, cmdline)?));
    }
    let config = match &spec.config {
        ConfigModule::File(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading cluster config {}", path.display()))?,
        ),
        ConfigModule::Bytes(bytes) => Some(bytes.clone()),
        ConfigModule::Absent => None,
    };
    let config_dir = match &spec.config {
        ConfigModule::File(path) => path
            .parent()
            .map_or_else(crate::build::workspace_root, Path::to_path_buf),
        _ => crate::build::workspace_root(),
    };
    let vm_images = match &config {
        Some(bytes) => crate::guests::vm_images(bytes, &config_dir)?,
        None => Vec::new(),
    };
    let iso = make_iso(
        work_dir,
        &IsoContents {
            hypervisor: &spec.hypervisor,
            config: config.as_deref(),
            cmdline: &spec.cmdline,
            vm_images: &vm_images,
        },
    )?;
    Ok(files(iso))
}

/// A run's console terminal, if it has one, and who types into it.
#[derive(Default)]
struct Console {
    pty: Option<SerialPty>,
    typist: Option<Typist>,
    keyboard: Option<crate::console::KeyboardGuard>,
    quit: Arc<AtomicBool>,
}

/// Follows the console until [`decide`] ends the run, stops the emulator
/// and collects what it wrote last.
fn watch(
    running: &mut Running,
    files: &RunFiles,
    console: &mut Console,
    timeout: Duration,
    started: Instant,
    on_line: &mut impl FnMut(&str),
) -> (Ending, Collected) {
    let mut tail = LineTail::new(files.serial.clone());
    let mut collected = Collected::default();
    let ending = loop {
        for line in tail.poll() {
            on_line(&line);
            collected.add(line, started.elapsed());
        }
        if let Some(typist) = console.typist.as_mut() {
            typist.poll(&collected.lines, &tail.unfinished());
        }
        if console.quit.load(Ordering::SeqCst) {
            break Ending::Interrupted;
        }
        let exited = running.try_exit();
        if let Some(ending) = decide(&collected, exited, started.elapsed(), timeout) {
            break ending;
        }
        std::thread::sleep(POLL);
    };
    running.stop();
    for line in tail.poll().into_iter().chain(tail.rest()) {
        on_line(&line);
        collected.add(line, started.elapsed());
    }
    (ending, collected)
}

/// The last `n` lines of a text file; none if it cannot be read.
fn file_tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Console output so far, and when the first terminal event came.
#[derive(Default)]
struct Collected {
    lines: Vec<String>,
    times: Vec<Duration>,
    events: Vec<Event>,
    bad_events: Vec<BadEvent>,
    /// The first `panic` or `poweroff` event and when it arrived.
    terminal: Option<(Event, Duration)>,
}

impl Collected {
    fn add(&mut self, line: String, at: Duration) {
        // The panic path stops every CPU by NMI, possibly in the middle of
        // an event line, and starts its report on a fresh line: the cut line
        // is the panic's doing, not a malformed event.
        if line.starts_with("[PANIC]")
            && let (Some(bad), Some(last)) = (self.bad_events.last(), self.lines.last())
            && &bad.line == last
        {
            self.bad_events.pop();
        }
        match Event::parse(&line) {
            Some(Ok(event)) => {
                if self.terminal.is_none() && matches!(event.name.as_str(), "panic" | "poweroff") {
                    self.terminal = Some((event.clone(), at));
                }
                self.events.push(event);
            }
            Some(Err(bad)) => self.bad_events.push(bad),
            None => {}
        }
        self.lines.push(line);
        self.times.push(at);
    }
}

/// Decides whether the run is over, and how. `exited` is the emulator's
/// exit code once it has exited.
fn decide(
    seen: &Collected,
    exited: Option<Option<i32>>,
    now: Duration,
    timeout: Duration,
) -> Option<Ending> {
    if let Some((event, at)) = &seen.terminal {
        let waited = now.saturating_sub(*at);
        let status = event.u64("status").unwrap_or(u64::MAX);
        return match event.name.as_str() {
            "panic" if exited.is_some() || waited >= PANIC_GRACE => Some(Ending::Panic {
                msg: event.str("msg").unwrap_or("").into(),
                file: event.str("file").unwrap_or("").into(),
                line: event.u64("line").unwrap_or(0),
            }),
            "poweroff" if exited.is_some() => Some(Ending::PoweredOff { status }),
            "poweroff" if waited >= POWEROFF_GRACE => Some(Ending::PoweroffHung { status }),
            _ => None,
        };
    }
    if let Some(code) = exited {
        return Some(Ending::EmulatorExited { code });
    }
    (now >= timeout).then_some(Ending::Timeout { after: timeout })
}

/// Follows a file that another process appends to, yielding whole lines.
struct LineTail {
    path: PathBuf,
    file: Option<File>,
    partial: Vec<u8>,
}

impl LineTail {
    fn new(path: PathBuf) -> Self {
        LineTail {
            path,
            file: None,
            partial: Vec::new(),
        }
    }

    /// The complete lines appended since the last call. The file may not
    /// exist yet (the emulator creates it).
    fn poll(&mut self) -> Vec<String> {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        if let Some(file) = self.file.as_mut() {
            let _ = file.read_to_end(&mut self.partial);
        }
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            lines.push(clean_line(&line));
        }
        lines
    }

    /// The line being written (no newline yet), as it stands.
    fn unfinished(&self) -> String {
        clean_line(&self.partial)
    }

    /// The unterminated last line, if any (called once the writer is gone).
    fn rest(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| clean_line(&std::mem::take(&mut self.partial)))
    }
}

fn clean_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\n', '\r'])
        .to_string()
}

/// target/atoll-runs: one directory per run.
pub fn runs_dir() -> PathBuf {
    target_dir().join("atoll-runs")
}

fn new_work_dir(spec: &RunSpec) -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = runs_dir();
    prune_old_runs(&dir);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = format!(
        "{millis}-{}-{}cpu-{}-{}",
        spec.emulator.name(),
        spec.cpus,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let work = dir.join(name);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok(work)
}

/// Keeps the newest run directories (names start with a timestamp).
fn prune_old_runs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut runs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    runs.sort();
    let excess = runs.len().saturating_sub(KEEP_RUN_DIRS);
    for old in runs.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn seen(lines: &[&str]) -> Collected {
        let mut c = Collected::default();
        for (i, l) in lines.iter().enumerate() {
            c.add(l.to_string(), Duration::from_secs(i as u64));
        }
        c
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn clean_power_off_needs_the_event_and_the_exit() {
        let c = seen(&[
            "[INFO] x",
            "@ev {\"ev\":\"poweroff\",\"status\":0,\"reason\":\"done\"}",
        ]);
        assert_eq!(
            decide(&c, None, S(2), S(60)),
            None,
            "waits for the emulator to exit"
        );
        assert_eq!(
            decide(&c, Some(Some(1)), S(2), S(60)),
            Some(Ending::PoweredOff { status: 0 })
        );
        assert_eq!(
            decide(&c, None, S(1) + POWEROFF_GRACE, S(60)),
            Some(Ending::PoweroffHung { status: 0 })
        );
    }

    #[test]
    fn panic_ends_the_run_after_a_grace_period() {
        let c =
            seen(&["@ev {\"ev\":\"panic\",\"msg\":\"m\",\"file\":\"a.rs\",\"line\":3,\"cpu\":0}"]);
        assert_eq!(decide(&c, None, Duration::from_millis(100), S(60)), None);
        let ending = decide(&c, None, PANIC_GRACE, S(60)).unwrap();
        assert_eq!(
            ending,
            Ending::Panic {
                msg: "m".into(),
                file: "a.rs".into(),
                line: 3
            }
        );
    }

    #[test]
    fn exit_without_events_and_timeouts_are_failures() {
        let c = seen(&["[INFO] booting"]);
        assert_eq!(
            decide(&c, Some(None), S(3), S(60)),
            Some(Ending::EmulatorExited { code: None })
        );
        assert_eq!(decide(&c, None, S(59), S(60)), None);
        assert_eq!(
            decide(&c, None, S(60), S(60)),
            Some(Ending::Timeout { after: S(60) })
        );
    }

    #[test]
    fn a_line_cut_by_the_panic_stop_is_not_a_malformed_event() {
        let c = seen(&[
            "@ev {\"ev\":\"heartbeat\",\"node\"",
            "[PANIC] boom at x.rs:1 on cpu 2",
        ]);
        assert!(c.bad_events.is_empty());
        let c = seen(&["@ev {cut", "[INFO] later", "[PANIC] boom"]);
        assert_eq!(
            c.bad_events.len(),
            1,
            "only the line right before the panic"
        );
    }

    #[test]
    fn malformed_event_lines_are_kept_for_the_report() {
        let c = seen(&["@ev {broken", "@ev {\"ev\":\"boot\"}"]);
        assert_eq!(c.bad_events.len(), 1);
        assert_eq!(c.events.len(), 1);
        assert_eq!(c.lines.len(), 2);
    }

    #[test]
    fn tail_yields_whole_lines_as_they_are_appended() {
        let path = std::env::temp_dir().join(format!("atoll-tail-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut tail = LineTail::new(path.clone());
        assert!(tail.poll().is_empty(), "missing file is no lines");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"first li").unwrap();
        assert!(tail.poll().is_empty());
        f.write_all(b"ne\r\nsecond\nthi").unwrap();
        assert_eq!(tail.poll(), ["first line", "second"]);
        f.write_all(b"rd").unwrap();
        assert!(tail.poll().is_empty());
        assert_eq!(tail.rest(), Some("third".into()));
        let _ = std::fs::remove_file(&path);
    }
}
