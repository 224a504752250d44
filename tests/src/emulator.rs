//! The two emulators and their quirks.
//!
//! Bochs (Debian's build of 2.7):
//! - it has its debugger compiled in and stops at the first instruction
//!   unless started with `-rc` naming a file that says `c` (continue);
//! - `display_library: term` is the only headless display: it opens its own
//!   pty and announces it on stderr as `Bochs connected to screen
//!   "/dev/pts/N"`. Nobody reading that pty freezes the emulation after about
//!   20 KB of screen output, and a pty left in cooked mode echoes what is read
//!   back to Bochs as keystrokes. So the harness opens it, makes it raw with
//!   echo off, and drains it for the whole run;
//! - it ignores SIGTERM: stop it with SIGINT, SIGKILL as a last resort;
//! - it exits with code 1 even after a clean shutdown: the run is judged from
//!   the serial console, never from the exit code.
//!
//! QEMU TCG has no VMX; it is the fast choice for everything else, and has
//! NUMA (SRAT) for the multikernel core.

use anyhow::{Context, Result, bail, ensure};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Which emulator boots the ISO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulator {
    /// Bochs with a VMX + EPT capable CPU model.
    Bochs,
    /// QEMU with TCG (no VMX).
    Qemu,
}

impl Emulator {
    pub fn name(self) -> &'static str {
        match self {
            Emulator::Bochs => "bochs",
            Emulator::Qemu => "qemu",
        }
    }
}

impl std::str::FromStr for Emulator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bochs" => Ok(Emulator::Bochs),
            "qemu" => Ok(Emulator::Qemu),
            other => Err(format!("unknown emulator '{other}': use bochs or qemu")),
        }
    }
}

/// The Bochs CPU model: VMX with EPT, VPID and unrestricted guest.
pub const BOCHS_CPU_MODEL: &str = "corei7_skylake_x";

/// The machine the emulator should emulate.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpus: u32,
    pub mem_mib: u32,
    /// NUMA nodes (QEMU only); empty for a machine without an ACPI SRAT.
    pub numa: Vec<NumaNode>,
}

/// One NUMA node of the emulated machine: QEMU describes it to the guest in
/// the ACPI SRAT. Bochs' BIOS has no SRAT, so only QEMU can have nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaNode {
    /// CPU indices (0-based, below `Machine::cpus`) in this node; empty for
    /// a memory-only node.
    pub cpus: Vec<u32>,
    /// The node's RAM; the nodes' sizes add up to `Machine::mem_mib`.
    pub mem_mib: u32,
}

impl NumaNode {
    /// `domains` nodes sharing `cpus` CPUs and `mem_mib` MiB evenly, in
    /// order (the first nodes get the remainders), like `cpus=8,numa=2` in
    /// `cargo xtask check-config --topology`.
    pub fn even_split(cpus: u32, mem_mib: u32, domains: u32) -> Vec<NumaNode> {
        let share = |total: u32, i: u32| total / domains + u32::from(i < total % domains);
        let mut next_cpu = 0;
        (0..domains)
            .map(|i| {
                let count = share(cpus, i);
                let node = NumaNode {
                    cpus: (next_cpu..next_cpu + count).collect(),
                    mem_mib: share(mem_mib, i),
                };
                next_cpu += count;
                node
            })
            .collect()
    }
}

impl Machine {
    /// Checks that `emulator` can emulate this machine, before anything is
    /// started: a wrong NUMA layout would otherwise end as an emulator
    /// error that is harder to read.
    pub fn check(&self, emulator: Emulator) -> Result<()> {
        if self.numa.is_empty() {
            return Ok(());
        }
        if emulator != Emulator::Qemu {
            bail!("NUMA nodes need QEMU: Bochs' BIOS has no ACPI SRAT");
        }
        let total: u64 = self.numa.iter().map(|n| u64::from(n.mem_mib)).sum();
        ensure!(
            total == u64::from(self.mem_mib),
            "the NUMA nodes have {total} MiB in total but the machine has {} MiB",
            self.mem_mib
        );
        let mut seen = vec![false; self.cpus as usize];
        for cpu in self.numa.iter().flat_map(|n| &n.cpus) {
            let slot = seen.get_mut(*cpu as usize).with_context(|| {
                format!(
                    "NUMA node CPU {cpu} does not exist (the machine has {} CPUs)",
                    self.cpus
                )
            })?;
            ensure!(!*slot, "CPU {cpu} is in two NUMA nodes");
            *slot = true;
        }
        if let Some(cpu) = seen.iter().position(|s| !s) {
            bail!("CPU {cpu} is in no NUMA node; give every CPU a node");
        }
        Ok(())
    }
}

/// The files of one run, all inside its work directory.
#[derive(Clone, Debug)]
pub struct RunFiles {
    pub iso: PathBuf,
    pub serial: PathBuf,
    /// A terminal for COM1 instead of the serial file (crate::console):
    /// the harness copies its output to `serial` and can type into it.
    pub serial_terminal: Option<PathBuf>,
    pub emulator_log: PathBuf,
    /// What Bochs' term display showed (BIOS, GRUB): the place to look when
    /// a boot fails before the hypervisor writes to the serial port.
    pub screen: PathBuf,
}

/// Bochs refuses a `host` memory size above this (MiB); a larger `guest`
/// size is fine, Bochs then allocates guest memory in blocks on demand.
pub const BOCHS_MAX_HOST_MIB: u32 = 2048;

/// The bochsrc for a run.
pub fn bochsrc(machine: &Machine, files: &RunFiles) -> String {
    format!(
        "\
memory: guest={mem}, host={host}
cpu: model={BOCHS_CPU_MODEL}, count={cpus}, reset_on_triple_fault=0
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
ata0-master: type=cdrom, path={iso}, status=inserted
boot: cdrom
display_library: term
{com1}
port_e9_hack: enabled=1
log: {log}
panic: action=fatal
error: action=ignore
info: action=ignore
debug: action=ignore
mouse: enabled=0
speaker: enabled=0
sound: driver=dummy
clock: sync=none, time0=local
",
        mem = machine.mem_mib,
        host = machine.mem_mib.min(BOCHS_MAX_HOST_MIB),
        cpus = machine.cpus,
        iso = files.iso.display(),
        com1 = match &files.serial_terminal {
            Some(tty) => format!("com1: enabled=1, mode=term, dev={}", tty.display()),
            None => format!("com1: enabled=1, mode=file, dev={}", files.serial.display()),
        },
        log = files.emulator_log.display(),
    )
}

/// QEMU's arguments for a run.
pub fn qemu_args(machine: &Machine, files: &RunFiles) -> Vec<String> {
    let mut args: Vec<String> = [
        "-machine", "pc", "-accel", "tcg", "-display", "none", "-monitor", "none",
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        "-smp".into(),
        machine.cpus.to_string(),
        "-m".into(),
        machine.mem_mib.to_string(),
        "-serial".into(),
        match &files.serial_terminal {
            Some(tty) => tty.display().to_string(),
            None => format!("file:{}", files.serial.display()),
        },
        "-no-reboot".into(),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
        "-cdrom".into(),
        files.iso.display().to_string(),
        "-boot".into(),
        "d".into(),
    ]);
    for (id, node) in machine.numa.iter().enumerate() {
        args.extend(numa_args(id, node));
    }
    args
}

/// QEMU's arguments for one NUMA node: a RAM backend of the node's size and
/// the node with its CPUs (QEMU 5.1+ needs `memdev`; `mem=` is gone).
fn numa_args(id: usize, node: &NumaNode) -> Vec<String> {
    let mut spec = format!("node,nodeid={id}");
    for range in cpu_ranges(&node.cpus) {
        spec += &format!(",cpus={range}");
    }
    let mut args = Vec::new();
    if node.mem_mib > 0 {
        args.push("-object".into());
        args.push(format!(
            "memory-backend-ram,id=numa-mem{id},size={}M",
            node.mem_mib
        ));
        spec += &format!(",memdev=numa-mem{id}");
    }
    args.push("-numa".into());
    args.push(spec);
    args
}

/// CPU indices as QEMU's `a-b` ranges, e.g. [0, 1, 2, 5] -> ["0-2", "5"].
fn cpu_ranges(cpus: &[u32]) -> Vec<String> {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for cpu in sorted {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == cpu => *last = cpu,
            _ => ranges.push((cpu, cpu)),
        }
    }
    ranges
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect()
}

/// A running emulator.
pub struct Running {
    child: Child,
    emulator: Emulator,
    /// Bochs' stderr lines (diagnostics for a failed run).
    stderr_lines: Arc<Mutex<Vec<String>>>,
}

/// Starts the emulator on the run's files in `work_dir`.
pub fn start(
    emulator: Emulator,
    machine: &Machine,
    files: &RunFiles,
    work_dir: &Path,
) -> Result<Running> {
    let stdout = File::create(work_dir.join("emulator.stdout"))?;
    let mut cmd = match emulator {
        Emulator::Bochs => {
            let rc = work_dir.join("bochsrc");
            std::fs::write(&rc, bochsrc(machine, files))?;
            let dbg = work_dir.join("dbg.rc");
            std::fs::write(&dbg, "c\n")?;
            let mut cmd = Command::new("bochs");
            cmd.arg("-q").arg("-f").arg(&rc).arg("-rc").arg(&dbg);
            cmd
        }
        Emulator::Qemu => {
            let mut cmd = Command::new("qemu-system-x86_64");
            cmd.args(qemu_args(machine, files));
            cmd
        }
    };
    let argv = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(work_dir.join("emulator.cmdline"), argv + "\n")?;
    let mut child = cmd
        .current_dir(work_dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", emulator.name()))?;
    let stderr = child.stderr.take().context("emulator stderr")?;
    let stderr_lines = Arc::new(Mutex::new(Vec::new()));
    spawn_stderr_reader(
        stderr,
        Arc::clone(&stderr_lines),
        files.emulator_log.with_extension("stderr"),
        files.screen.clone(),
    );
    Ok(Running {
        child,
        emulator,
        stderr_lines,
    })
}

/// Reads the emulator's stderr to the end, keeping its lines; on Bochs'
/// screen announcement it starts draining that pty into `screen`.
fn spawn_stderr_reader(
    stderr: impl Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    copy_to: PathBuf,
    screen: PathBuf,
) {
    thread::spawn(move || {
        let mut copy = File::create(copy_to).ok();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(pty) = bochs_screen_pty(&line) {
                drain_pty(pty, screen.clone());
            }
            if let Some(f) = copy.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if let Ok(mut all) = lines.lock() {
                all.push(line);
            }
        }
    });
}

/// The pty path in Bochs' `Bochs connected to screen "/dev/pts/N"` line.
pub fn bochs_screen_pty(line: &str) -> Option<PathBuf> {
    let rest = line.split("connected to screen \"").nth(1)?;
    let path = rest.split('"').next()?;
    path.starts_with("/dev/").then(|| PathBuf::from(path))
}

/// How much of Bochs' screen output is kept in `screen.txt`; the rest is
/// read and dropped (a long run redraws the screen many times).
const SCREEN_KEEP: u64 = 1 << 20;

/// Opens the pty, makes it raw with echo off and reads it to EOF on its own
/// thread. The bytes are Bochs' VGA text screen as curses output; the first
/// MiB goes to `screen` for diagnosing boots that fail inside GRUB.
fn drain_pty(path: PathBuf, screen: PathBuf) {
    thread::spawn(move || {
        let Ok(mut pty) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        else {
            return;
        };
        if let Ok(mut termios) = rustix::termios::tcgetattr(&pty) {
            termios.make_raw();
            let _ =
                rustix::termios::tcsetattr(&pty, rustix::termios::OptionalActions::Now, &termios);
        }
        let mut keep = File::create(&screen).ok();
        let mut kept = 0u64;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pty.read(&mut buf) {
            if let Some(f) = keep.as_mut().filter(|_| kept < SCREEN_KEEP) {
                let _ = f.write_all(&buf[..n]);
                kept += n as u64;
            }
        }
    });
}

impl Running {
    /// The exit code if the emulator has exited.
    pub fn try_exit(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// Stops the emulator: SIGINT for Bochs (it ignores SIGTERM), waiting up
    /// to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        if self.emulator == Emulator::Bochs {
            let pid = rustix::process::Pid::from_child(&self.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if self.try_exit().is_some() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last `n` lines the emulator wrote to stderr.
    pub fn stderr_tail(&self, n: usize) -> Vec<String> {
        let all = self
            .stderr_lines
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        all[all.len().saturating_sub(n)..].to_vec()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> RunFiles {
        RunFiles {
            iso: "/r/atoll.iso".into(),
            serial: "/r/serial.txt".into(),
            serial_terminal: None,
            emulator_log: "/r/bochs.log".into(),
            screen: "/r/screen.txt".into(),
        }
    }

    fn machine(cpus: u32, mem_mib: u32) -> Machine {
        Machine {
            cpus,
            mem_mib,
            numa: Vec::new(),
        }
    }

    fn node(cpus: &[u32], mem_mib: u32) -> NumaNode {
        NumaNode {
            cpus: cpus.to_vec(),
            mem_mib,
        }
    }

    #[test]
    fn bochsrc_asks_for_a_vmx_cpu_and_a_headless_display() {
        let rc = bochsrc(&machine(4, 256), &files());
        assert!(rc.contains("cpu: model=corei7_skylake_x, count=4, reset_on_triple_fault=0\n"));
        assert!(rc.contains("memory: guest=256, host=256\n"));
        let big = bochsrc(&machine(1, 4096), &files());
        assert!(big.contains("memory: guest=4096, host=2048\n"), "{big}");
        assert!(rc.contains("display_library: term\n"));
        assert!(rc.contains("com1: enabled=1, mode=file, dev=/r/serial.txt\n"));
        assert!(rc.contains("ata0-master: type=cdrom, path=/r/atoll.iso, status=inserted\n"));
        assert!(rc.contains("info: action=ignore\n"));
        assert!(
            rc.contains("sound: driver=dummy\n"),
            "no ALSA noise on stderr"
        );
    }

    #[test]
    fn qemu_gets_cpus_memory_serial_and_the_exit_device() {
        let args = qemu_args(&machine(2, 512), &files()).join(" ");
        assert!(args.contains("-smp 2 -m 512"));
        assert!(args.contains("-serial file:/r/serial.txt"));
        assert!(args.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(args.contains("-accel tcg"));
        assert!(args.contains("-no-reboot"));
        assert!(!args.contains("-numa"));
    }

    #[test]
    fn qemu_gets_one_memory_backend_and_numa_node_per_node() {
        let mut m = machine(4, 512);
        m.numa = vec![node(&[0, 1, 3], 384), node(&[2], 128), node(&[], 0)];
        let args = qemu_args(&m, &files()).join(" ");
        assert!(args.contains(
            "-object memory-backend-ram,id=numa-mem0,size=384M -numa node,nodeid=0,cpus=0-1,cpus=3,memdev=numa-mem0"
        ), "{args}");
        assert!(args.contains(
            "-object memory-backend-ram,id=numa-mem1,size=128M -numa node,nodeid=1,cpus=2,memdev=numa-mem1"
        ), "{args}");
        assert!(args.ends_with("-numa node,nodeid=2"), "{args}");
    }

    #[test]
    fn even_split_shares_cpus_and_memory_in_order() {
        let nodes = NumaNode::even_split(5, 1025, 2);
        assert_eq!(nodes, vec![node(&[0, 1, 2], 513), node(&[3, 4], 512)]);
        let m = Machine {
            cpus: 5,
            mem_mib: 1025,
            numa: nodes,
        };
        m.check(Emulator::Qemu).unwrap();
    }

    #[test]
    fn numa_layouts_are_checked_before_the_emulator_starts() {
        let mut m = machine(2, 512);
        assert!(m.check(Emulator::Bochs).is_ok(), "no NUMA is fine anywhere");
        m.numa = vec![node(&[0], 256), node(&[1], 256)];
        assert!(m.check(Emulator::Qemu).is_ok());
        let err = |m: &Machine, emu| format!("{:#}", m.check(emu).unwrap_err());
        assert!(err(&m, Emulator::Bochs).contains("need QEMU"));
        m.numa[1].mem_mib = 128;
        assert!(err(&m, Emulator::Qemu).contains("384 MiB in total"));
        m.numa[1].mem_mib = 256;
        m.numa[1].cpus = vec![0];
        assert!(err(&m, Emulator::Qemu).contains("CPU 0 is in two"));
        m.numa[1].cpus = vec![2];
        assert!(err(&m, Emulator::Qemu).contains("CPU 2 does not exist"));
        m.numa[1].cpus = vec![];
        assert!(err(&m, Emulator::Qemu).contains("CPU 1 is in no NUMA node"));
    }

    #[test]
    fn finds_the_bochs_screen_pty() {
        let line = "00000000000i[      ] Bochs connected to screen \"/dev/pts/3\"";
        assert_eq!(bochs_screen_pty(line), Some(PathBuf::from("/dev/pts/3")));
        assert_eq!(bochs_screen_pty("something else"), None);
        assert_eq!(bochs_screen_pty("connected to screen \"nope\""), None);
    }

    #[test]
    fn parses_emulator_names() {
        assert_eq!("bochs".parse::<Emulator>(), Ok(Emulator::Bochs));
        assert_eq!("qemu".parse::<Emulator>(), Ok(Emulator::Qemu));
        assert!("kvm".parse::<Emulator>().is_err());
    }
}
