//! `cargo xtask`: build, run and test Atoll.
//!
//! - `build`: the hypervisor ELF for x86_64-unknown-none.
//! - `run`: build, make the ISO, boot it in Bochs or QEMU, stream the console;
//!   exit 0 only on a clean power-off.
//! - `test`: host tests plus emulator integration tests; ends with
//!   `N passed, N failed`.
//! - `check-config`: check a cluster config file, alone or planned on a
//!   machine given as a topology spec.
//! - `lint`: rustfmt and clippy over every crate, the bare-metal one included
//!   (rustfmt only for the fuzz crates, which need nightly to build).
//! - `fuzz`: every cargo-fuzz target for a while each, as a table (needs
//!   nightly Rust).
//! - `bench`: the benchmarks (the cluster planner on the host; inter-node
//!   round trips and the node lock in emulators), as tables.
#![forbid(unsafe_code)]

mod bench;
mod check_config;
mod fuzz;
mod fuzz_seeds;
mod linux_bench;
mod progress;
mod stats;
mod test;

use anyhow::{Context, Result, bail};
use atoll_tests::build::{Profile, build_hypervisor, workspace_root};
use atoll_tests::{ConfigModule, Emulator, NumaNode, RunSpec, packages};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run and test the Atoll hypervisor"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the hypervisor ELF (target/x86_64-unknown-none/<profile>/atoll),
    /// the test guests and the Linux guest images (cached).
    Build {
        /// Build without optimisations.
        #[arg(long)]
        debug: bool,
    },
    /// Boot the hypervisor in an emulator and stream its console.
    Run(RunArgs),
    /// Run every test: host unit tests, then emulator integration tests.
    Test,
    /// Check a cluster config file and plan it, as the hypervisor would
    /// at boot.
    CheckConfig {
        /// The config file (a regular file of at most 16 KiB).
        file: PathBuf,
        /// A machine to plan the config on, e.g. cpus=4,numa=2,mem-mib=1024
        /// (keys: cpus, numa, mem-mib or ram-mib, boot-cpu). Without it,
        /// the machine `cargo xtask run` boots by default
        /// (cpus=4,numa=1,mem-mib=512).
        #[arg(long, value_name = "SPEC")]
        topology: Option<String>,
    },
    /// rustfmt --check and clippy -D warnings over all crates.
    Lint,
    /// Run every fuzz target (or one) for a while, one after another, from
    /// its seed corpus, and print executions and coverage; fails on a
    /// crash. Needs a nightly toolchain; installs cargo-fuzz if missing.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Only this target (e.g. bzimage).
        target: Option<String>,
        /// Rewrite the committed seed files from their generator instead.
        #[arg(long)]
        write_seeds: bool,
    },
    /// Run the benchmarks (optimised host builds) and print a table.
    Bench {
        /// Only benchmarks whose name contains this, e.g. planner.
        filter: Option<String>,
    },
    /// The VMs' exit statistics (`stats` events) of a run as a table.
    Stats {
        /// A console log; the newest run's (target/atoll-runs) by default.
        log: Option<PathBuf>,
    },
}

/// The machine `cargo xtask run` boots by default (and `check-config`
/// plans on without `--topology`).
const DEFAULT_CPUS: u32 = 4;
const DEFAULT_NUMA: u32 = 1;
const DEFAULT_MEM_MIB: u32 = 512;

#[derive(clap::Args)]
struct RunArgs {
    /// Cluster config passed as the `cluster.toml` boot module.
    #[arg(long, default_value = "configs/default.toml")]
    config: PathBuf,
    /// Number of emulated CPUs.
    #[arg(long, default_value_t = DEFAULT_CPUS, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    /// NUMA domains (QEMU only): CPUs and memory split evenly, in order,
    /// and described to the hypervisor in the ACPI SRAT.
    #[arg(long, default_value_t = DEFAULT_NUMA, value_parser = clap::value_parser!(u32).range(1..=16))]
    numa: u32,
    /// Emulated RAM in MiB.
    #[arg(long, default_value_t = DEFAULT_MEM_MIB, value_parser = clap::value_parser!(u32).range(64..=16384))]
    mem_mib: u32,
    /// Give up after this many seconds (default: 120, or no limit when
    /// the console is interactive).
    #[arg(long)]
    timeout: Option<u64>,
    /// Type into the VMs' consoles from this terminal (the default when
    /// stdin is a terminal): Ctrl-A then a digit N gives the keyboard to
    /// VM N, Ctrl-A n to the next VM; Ctrl-] ends the run.
    #[arg(long, overrides_with = "no_interactive")]
    interactive: bool,
    /// Never read the keyboard, even from a terminal.
    #[arg(long)]
    no_interactive: bool,
    /// bochs (VMX/EPT) or qemu (TCG: faster, no VMX).
    #[arg(long, default_value = "bochs")]
    emulator: Emulator,
    /// Words appended to the hypervisor command line, e.g. "selftest=panic".
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Build the hypervisor without optimisations.
    #[arg(long)]
    debug: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Build { debug } => build(debug).map(|_| true),
        Cmd::Run(args) => run(args),
        Cmd::Test => test::run_all(),
        Cmd::CheckConfig { file, topology } => check_config::check(&file, topology.as_deref()),
        Cmd::Lint => lint(),
        Cmd::Fuzz {
            write_seeds: true, ..
        } => fuzz_seeds::write().map(|_| true),
        Cmd::Fuzz { secs, target, .. } => fuzz::run(secs, target.as_deref()),
        Cmd::Bench { filter } => bench::run(filter.as_deref()),
        Cmd::Stats { log } => stats::run(log.as_deref()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn profile(debug: bool) -> Profile {
    if debug {
        Profile::Debug
    } else {
        Profile::Release
    }
}

/// Installs missing host packages (as root) or says how to.
pub fn ensure_packages() -> Result<()> {
    let missing = packages::missing()?;
    if missing.is_empty() {
        return Ok(());
    }
    let log = std::env::temp_dir().join("atoll-apt.log");
    let spinner = progress::spinner(format!("installing {}", missing.join(" ")));
    let result = packages::install(&missing, &log);
    spinner.finish_and_clear();
    result?;
    eprintln!("installed {}", missing.join(" "));
    Ok(())
}

fn build(debug: bool) -> Result<PathBuf> {
    let elf = build_hypervisor(profile(debug))?;
    eprintln!("hypervisor: {}", elf.display());
    atoll_tests::guests::build_guests()?;
    eprintln!(
        "test guests: {}",
        atoll_tests::guests::guest_elf("").display()
    );
    eprintln!("linux kernel: {}", atoll_tests::linux::kernel()?.display());
    eprintln!(
        "linux initramfs: {}",
        atoll_tests::linux::initramfs()?.display()
    );
    Ok(elf)
}

fn run(args: RunArgs) -> Result<bool> {
    ensure_packages()?;
    let config = resolve(&args.config);
    if !config.is_file() {
        bail!(
            "config file {} does not exist; pass --config FILE",
            config.display()
        );
    }
    use std::io::IsTerminal;
    let interactive = args.interactive || (!args.no_interactive && std::io::stdin().is_terminal());
    let timeout = match (args.timeout, interactive) {
        (Some(secs), _) => Duration::from_secs(secs),
        (None, false) => Duration::from_secs(120),
        (None, true) => Duration::MAX,
    };
    let spec = RunSpec {
        emulator: args.emulator,
        cpus: args.cpus,
        mem_mib: args.mem_mib,
        timeout,
        interactive,
        cmdline: args.cmdline,
        config: ConfigModule::File(config),
        numa: if args.numa > 1 {
            NumaNode::even_split(args.cpus, args.mem_mib, args.numa)
        } else {
            Vec::new()
        },
        ..RunSpec::new(build(args.debug)?)
    };
    let outcome = if interactive {
        eprintln!(
            "booting in {} with {} CPUs, {} MiB; Ctrl-A N gives the keyboard to VM N, Ctrl-] ends the run\r",
            spec.emulator.name(),
            spec.cpus,
            spec.mem_mib
        );
        // The console goes to stdout as it comes, prompts included.
        atoll_tests::run(&spec, |_| {})?
    } else {
        let spinner = progress::spinner(format!(
            "booting in {} with {} CPUs, {} MiB (timeout {} s)",
            spec.emulator.name(),
            spec.cpus,
            spec.mem_mib,
            timeout.as_secs()
        ));
        let outcome = atoll_tests::run(&spec, |line| spinner.suspend(|| println!("{line}")))?;
        spinner.finish_and_clear();
        outcome
    };
    for bad in &outcome.bad_events {
        eprintln!("malformed event line ({}): {}", bad.reason, bad.line);
    }
    if outcome.ending == atoll_tests::Ending::Interrupted {
        eprintln!("atoll: {}", outcome.ending);
    } else if outcome.success() {
        eprintln!(
            "atoll: {} after {:.1} s",
            outcome.ending,
            outcome.wall_time.as_secs_f64()
        );
    } else {
        eprintln!("{}", outcome.diagnostics());
        eprintln!("atoll: FAILED: {}", outcome.ending);
    }
    Ok(outcome.success())
}

/// A path relative to the current directory, or else to the workspace root
/// (so `cargo xtask run --config configs/x.toml` works from anywhere).
fn resolve(path: &std::path::Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        path.to_path_buf()
    } else {
        workspace_root().join(path)
    }
}

fn lint() -> Result<bool> {
    let steps: [&[&str]; 5] = [
        &["fmt", "--all", "--check"],
        // The fuzz crates are outside the workspace and need nightly to
        // build (`cargo xtask fuzz` builds them): formatting only.
        &["fmt", "--manifest-path", "vmm/fuzz/Cargo.toml", "--check"],
        &[
            "fmt",
            "--manifest-path",
            "hypervisor/fuzz/Cargo.toml",
            "--check",
        ],
        &[
            "clippy",
            "--all-targets",
            "--features",
            "atoll-tests/emulator",
            "--",
            "-D",
            "warnings",
        ],
        &[
            "clippy",
            "--package",
            "atoll-hypervisor",
            "--package",
            "atoll-guest-rt",
            "--package",
            "atoll-test-guests",
            "--target",
            "x86_64-unknown-none",
            "--",
            "-D",
            "warnings",
        ],
    ];
    let mut ok = true;
    for args in steps {
        let status = Command::new(env!("CARGO"))
            .args(args)
            .current_dir(workspace_root())
            .status()
            .with_context(|| format!("running cargo {}", args.join(" ")))?;
        ok &= status.success();
    }
    Ok(ok)
}
