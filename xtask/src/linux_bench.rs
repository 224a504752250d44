//! `cargo xtask bench linux-boot`: how long Atoll's Linux guest takes to
//! boot under Atoll and natively, in the same emulator (Bochs, the only
//! one here with VMX), with the same kernel, initramfs, command line and
//! CPU count.
//!
//! Each boot runs the `boot` workload (guest-images/linux/rootfs/etc/atoll/
//! boot.sh: nothing) and powers off. Boot time is wall-clock time from the
//! kernel's start (native: its first console line; under Atoll: the
//! `vm_start` event) to the `linux_init` event, plus the kernel's own
//! uptime at init (its clock: the TSC at the rate CPUID reports).

use anyhow::Result;
use atoll_tests::build::{Profile, build_hypervisor};
use atoll_tests::{ConfigModule, Emulator, RunOutcome, RunSpec};
use std::time::Duration;

/// vCPUs of the VM, and CPUs of the native machine.
const CPUS: u32 = 2;
/// The guest's command line in both boots.
const CMDLINE: &str = "console=ttyS0 atoll.run=boot";

/// The VM: alone on a node with one CPU per vCPU.
fn config() -> String {
    format!(
        r#"
[[node]]
name = "a"
cpus = [0, 1]
mem_mib = 96

[[vm]]
name = "linux"
node = "a"
vcpus = {CPUS}
mem_mib = 64
kernel = "linux"
initrd = "initramfs"
cmdline = "{CMDLINE}"
pin = [0, 1]
"#
    )
}

/// One boot's figures.
struct Figures {
    /// Kernel start to init, wall-clock seconds.
    wall_s: f64,
    /// The kernel's uptime at init, seconds of its own clock.
    uptime_s: f64,
    /// The whole run, emulator start to exit.
    run_s: f64,
    /// VM exits (under Atoll).
    exits: Option<u64>,
}

/// Boots natively and under Atoll; prints a table. True if both worked.
pub fn run() -> Result<bool> {
    crate::ensure_packages()?;
    eprintln!(
        "running {} (Linux boot time, native and under Atoll)",
        super::bench::LINUX_BOOT
    );
    let base = RunSpec {
        emulator: Emulator::Bochs,
        cpus: CPUS,
        timeout: Duration::from_secs(900),
        ..RunSpec::new(build_hypervisor(Profile::Release)?)
    };
    let native = RunSpec {
        native_linux: Some(CMDLINE.into()),
        ..base.clone()
    };
    let atoll = RunSpec {
        config: ConfigModule::Bytes(config().into_bytes()),
        ..base
    };
    let native_out = atoll_tests::run(&native, |_| {})?;
    let native = figures(&native_out, |l| l.contains("Linux version"));
    let atoll_out = atoll_tests::run(&atoll, |_| {})?;
    let under =
        figures(&atoll_out, |l| l.contains(r#""ev":"vm_start""#)).filter(|_| atoll_out.success());
    for (what, out, got) in [
        ("native", &native_out, &native),
        ("atoll", &atoll_out, &under),
    ] {
        if got.is_none() {
            eprintln!("{what} boot failed: {}\n{}", out.ending, out.diagnostics());
        }
    }
    print!("{}", table(native.as_ref(), under.as_ref()));
    Ok(native.is_some() && under.is_some())
}

/// The figures of a run whose kernel started at the first line `start`
/// matches, if Linux reached init and its workload passed.
fn figures(out: &RunOutcome, start: impl Fn(&str) -> bool) -> Option<Figures> {
    let at = |pred: &dyn Fn(&str) -> bool| {
        let i = out.lines.iter().position(|l| pred(l))?;
        out.line_times.get(i).copied()
    };
    let started = at(&start)?;
    let init = at(&|l: &str| l.contains(r#""ev":"linux_init""#))?;
    let done = out.events_named("linux_run_done");
    if done.first().and_then(|e| e.u64("status")) != Some(0) {
        return None;
    }
    let init_event = out.event("linux_init")?;
    Some(Figures {
        wall_s: init.saturating_sub(started).as_secs_f64(),
        uptime_s: init_event.get("uptime_s")?.as_f64()?,
        run_s: out.wall_time.as_secs_f64(),
        exits: out.event("stats").and_then(|e| e.u64("exits")),
    })
}

fn table(native: Option<&Figures>, atoll: Option<&Figures>) -> String {
    let mut out = format!(
        "{:<24}  {:>12}  {:>14}  {:>10}  {}\n",
        "linux-boot (Bochs, 2 CPUs)", "to init (s)", "guest clock (s)", "run (s)", "VM exits"
    );
    for (name, f) in [("native", native), ("under atoll", atoll)] {
        let Some(f) = f else {
            out.push_str(&format!("{name:<24}  failed\n"));
            continue;
        };
        out.push_str(&format!(
            "{name:<24}  {:>12.1}  {:>14.2}  {:>10.1}  {}\n",
            f.wall_s,
            f.uptime_s,
            f.run_s,
            f.exits.map_or("-".into(), |n| n.to_string())
        ));
    }
    if let (Some(n), Some(a)) = (native, atoll) {
        out.push_str(&format!(
            "{:<24}  {:>11.2}x\n",
            "atoll / native",
            a.wall_s / n.wall_s.max(1e-9)
        ));
    }
    // Each kernel's clock runs at the TSC rate it believes: natively what
    // Bochs' CPUID claims, under Atoll the rate Atoll measured against the
    // emulated timer. Only the wall-clock columns compare.
    out.push_str(
        "guest clock: each kernel's uptime at init by its own TSC rate (not comparable)\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_both_boots_and_their_ratio() {
        let n = Figures {
            wall_s: 10.0,
            uptime_s: 2.0,
            run_s: 14.0,
            exits: None,
        };
        let a = Figures {
            wall_s: 15.0,
            uptime_s: 3.0,
            run_s: 20.0,
            exits: Some(1000),
        };
        let t = table(Some(&n), Some(&a));
        assert!(t.contains("native"));
        assert!(t.contains("1000"));
        assert!(t.contains("1.50x"));
        assert!(t.contains("not comparable"));
        assert!(table(Some(&n), None).contains("under atoll               failed"));
    }

    #[test]
    fn the_config_plans() {
        let text = config();
        let parsed = atoll_cluster::config::ClusterConfig::parse("bench.toml", &text);
        assert!(parsed.is_ok(), "{parsed:?}");
    }
}
