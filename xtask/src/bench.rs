//! `cargo xtask bench [FILTER]`: runs Atoll's benchmarks and prints one
//! table.
//!
//! A benchmark is a `harness = false` bench target that prints one line per
//! measurement:
//!
//! ```text
//! bench NAME iterations=N median_ns=N min_ns=N
//! ```
//!
//! To add one, write such a target and list it in [`SUITES`]; this command
//! builds and runs it (`cargo bench -p PACKAGE --bench TARGET`) and
//! tabulates its lines. Other lines pass through to the terminal.
//!
//! Benchmarks of the hypervisor itself boot it in an emulator with a
//! self-test and tabulate the events it reports ([`BOOTS`]). Their figures
//! are TSC ticks of the emulated machine: in Bochs about one per emulated
//! instruction (path lengths, comparable between versions), in QEMU TCG the
//! host's TSC.

use anyhow::{Context, Result, bail};
use atoll_tests::build::{Profile, build_hypervisor, workspace_root};
use atoll_tests::{ConfigModule, Emulator, RunSpec};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// One bench target.
struct Suite {
    package: &'static str,
    target: &'static str,
    what: &'static str,
}

const SUITES: &[Suite] = &[Suite {
    package: "atoll-cluster",
    target: "planner",
    what: "cluster config parser and planner on 1024 CPUs in 64 NUMA domains",
}];

/// A benchmark that boots the hypervisor with a self-test.
struct Boot {
    name: &'static str,
    emulator: Emulator,
    config: &'static str,
    /// The self-test to run, or none (the config's VMs are the benchmark).
    selftest: Option<&'static str>,
    what: &'static str,
}

const BOOTS: &[Boot] = &[
    Boot {
        name: "ipi-bochs",
        emulator: Emulator::Bochs,
        config: "configs/core.toml",
        selftest: Some("ipi"),
        what: "inter-node round trips (channel write + IPI capability), 2 nodes x 2 CPUs",
    },
    Boot {
        name: "ipi-qemu",
        emulator: Emulator::Qemu,
        config: "configs/multikernel.toml",
        selftest: Some("ipi"),
        what: "inter-node round trips between 4 one-CPU nodes",
    },
    Boot {
        name: "lock-bochs",
        emulator: Emulator::Bochs,
        config: "configs/core.toml",
        selftest: Some("lock"),
        what: "the node lock under all CPUs of a node",
    },
    Boot {
        name: "exitbench",
        emulator: Emulator::Bochs,
        config: "configs/exitbench.toml",
        selftest: None,
        what: "guest exit round trips (the exitbench guest under Atoll)",
    },
    Boot {
        name: "signal",
        emulator: Emulator::Bochs,
        config: "configs/signal.toml",
        selftest: None,
        what: "VM-to-VM signal round trips across two nodes (signal + wait hypercalls)",
    },
];

/// One measurement line.
#[derive(Debug, PartialEq, Eq)]
struct Measurement {
    name: String,
    fields: BTreeMap<String, u128>,
}

/// The Linux boot-time benchmark's name.
pub const LINUX_BOOT: &str = "linux-boot";

/// Runs every suite whose package, target or measurement names contain
/// `filter`; true when all of them ran.
pub fn run(filter: Option<&str>) -> Result<bool> {
    let boots: Vec<&Boot> = BOOTS
        .iter()
        .filter(|b| filter.is_none_or(|f| b.name.contains(f)))
        .collect();
    let linux = filter.is_none_or(|f| LINUX_BOOT.contains(f));
    let host_ok = run_suites(filter, !boots.is_empty() || linux)?;
    let boots_ok = run_boots(&boots)?;
    let linux_ok = !linux || crate::linux_bench::run()?;
    Ok(host_ok && boots_ok && linux_ok)
}

fn run_suites(filter: Option<&str>, others_chosen: bool) -> Result<bool> {
    let chosen: Vec<&Suite> = SUITES
        .iter()
        .filter(|s| {
            filter.is_none_or(|f| {
                s.package.contains(f) || s.target.contains(f) || f.starts_with(s.target)
            })
        })
        .collect();
    if chosen.is_empty() && others_chosen {
        return Ok(true);
    }
    if chosen.is_empty() {
        let names: Vec<&str> = SUITES
            .iter()
            .map(|s| s.target)
            .chain(BOOTS.iter().map(|b| b.name))
            .chain([LINUX_BOOT])
            .collect();
        bail!(
            "no benchmark matches '{}'; the benchmarks are {}",
            filter.unwrap_or_default(),
            names.join(", ")
        );
    }
    let mut results = Vec::new();
    let mut ok = true;
    for suite in chosen {
        eprintln!("running {} ({})", suite.target, suite.what);
        let mut child = Command::new(env!("CARGO"))
            .args(["bench", "--package", suite.package, "--bench", suite.target])
            .current_dir(workspace_root())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running cargo bench for {}", suite.target))?;
        let stdout = child.stdout.take().context("no stdout from cargo bench")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            match parse_line(&line) {
                Some(m)
                    if filter.is_none_or(|f| m.name.contains(f) || suite.target.contains(f)) =>
                {
                    results.push(m)
                }
                Some(_) => {}
                None => println!("{line}"),
            }
        }
        let status = child.wait()?;
        if !status.success() {
            eprintln!("{}: cargo bench failed ({status})", suite.target);
            ok = false;
        }
    }
    print!("{}", table(&results));
    Ok(ok)
}

/// Boots each chosen benchmark and prints its events as a table.
fn run_boots(boots: &[&Boot]) -> Result<bool> {
    if boots.is_empty() {
        return Ok(true);
    }
    crate::ensure_packages()?;
    let hypervisor = build_hypervisor(Profile::Release)?;
    let mut rows = Vec::new();
    let mut ok = true;
    for boot in boots {
        eprintln!("running {} ({})", boot.name, boot.what);
        let spec = RunSpec {
            emulator: boot.emulator,
            cmdline: boot
                .selftest
                .map_or(String::new(), |t| format!("selftest={t}")),
            config: ConfigModule::File(workspace_root().join(boot.config)),
            ..RunSpec::new(hypervisor.clone())
        };
        let out = atoll_tests::run(&spec, |_| {})?;
        if !out.success() {
            eprintln!("{}: {}\n{}", boot.name, out.ending, out.diagnostics());
            ok = false;
            continue;
        }
        rows.extend(out.events.iter().filter_map(|e| boot_row(boot.name, e)));
    }
    print!("{}", boot_table(&rows));
    Ok(ok)
}

/// One row of the boot benchmark table: what, and the cycle figures.
fn boot_row(bench: &str, event: &atoll_tests::Event) -> Option<[String; 5]> {
    let n = |k: &str| event.u64(k).map_or("-".into(), |v| v.to_string());
    match event.name.as_str() {
        "ipi_rtt" => Some([
            format!("{bench} node {}->{}", n("from"), n("to")),
            n("median_cycles"),
            n("min_cycles"),
            n("max_cycles"),
            n("rounds"),
        ]),
        "lock_stats" => {
            let per = |k: &str| {
                let total = event.u64(k)?;
                let count = event.u64("acquisitions").filter(|&c| c > 0)?;
                Some((total / count).to_string())
            };
            Some([
                format!("{bench} node {} ({} CPUs) hold", n("node"), n("cpus")),
                per("hold_cycles").unwrap_or_else(|| "-".into()),
                "-".into(),
                n("max_hold_cycles"),
                format!("{} ({} contended)", n("acquisitions"), n("contended")),
            ])
        }
        "guest_signal" => Some([
            format!("{bench} VM round trip"),
            n("median_cycles"),
            n("min_cycles"),
            n("max_cycles"),
            n("rounds"),
        ]),
        "guest_exitbench" => Some([
            format!("{bench} {}", event.str("op").unwrap_or("?")),
            n("median_cycles"),
            n("min_cycles"),
            n("max_cycles"),
            n("iterations"),
        ]),
        _ => None,
    }
}

fn boot_table(rows: &[[String; 5]]) -> String {
    let width = rows
        .iter()
        .map(|r| r[0].len())
        .chain([9])
        .max()
        .unwrap_or(9);
    let mut out = format!(
        "{:<width$}  {:>14}  {:>10}  {:>10}  {}\n",
        "benchmark", "median cycles", "min", "max", "count"
    );
    for [name, median, min, max, count] in rows {
        out.push_str(&format!(
            "{name:<width$}  {median:>14}  {min:>10}  {max:>10}  {count}\n"
        ));
    }
    out
}

/// `bench NAME key=value ...` with integer values.
fn parse_line(line: &str) -> Option<Measurement> {
    let mut words = line.strip_prefix("bench ")?.split_whitespace();
    let name = words.next()?.to_string();
    let fields = words
        .map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect::<Option<BTreeMap<_, _>>>()?;
    Some(Measurement { name, fields })
}

/// A duration in ns, in the unit that reads best.
fn duration(ns: u128) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

fn table(results: &[Measurement]) -> String {
    let width = results
        .iter()
        .map(|m| m.name.len())
        .chain([9])
        .max()
        .unwrap_or(9);
    let mut out = format!(
        "{:<width$}  {:>10}  {:>10}  {:>10}\n",
        "benchmark", "median", "min", "iterations"
    );
    for m in results {
        let field = |k: &str| m.fields.get(k).copied();
        let time = |k| field(k).map_or("-".into(), duration);
        out.push_str(&format!(
            "{:<width$}  {:>10}  {:>10}  {:>10}\n",
            m.name,
            time("median_ns"),
            time("min_ns"),
            field("iterations").map_or("-".into(), |n| n.to_string())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurement_lines_parse_and_others_do_not() {
        let m =
            parse_line("bench planner/plan iterations=200 median_ns=173428 min_ns=166688").unwrap();
        assert_eq!(m.name, "planner/plan");
        assert_eq!(m.fields["median_ns"], 173_428);
        assert_eq!(m.fields["iterations"], 200);
        assert!(parse_line("Running benches/planner.rs").is_none());
        assert!(parse_line("bench x median_ns=fast").is_none());
    }

    #[test]
    fn boot_events_become_rows() {
        let rtt = atoll_tests::Event::parse(
            "@ev {\"ev\":\"ipi_rtt\",\"from\":0,\"to\":1,\"rounds\":16,\"min_cycles\":140,\"median_cycles\":315,\"max_cycles\":605}",
        )
        .unwrap()
        .unwrap();
        let row = boot_row("ipi-bochs", &rtt).unwrap();
        assert_eq!(row, ["ipi-bochs node 0->1", "315", "140", "605", "16"]);
        let lock = atoll_tests::Event::parse(
            "@ev {\"ev\":\"lock_stats\",\"node\":1,\"cpus\":2,\"acquisitions\":4000,\"contended\":10,\"hold_cycles\":80000,\"max_hold_cycles\":90}",
        )
        .unwrap()
        .unwrap();
        let row = boot_row("lock-bochs", &lock).unwrap();
        assert_eq!(row[1], "20");
        assert_eq!(row[4], "4000 (10 contended)");
        assert!(boot_table(&[row]).starts_with("benchmark"));
        let exit = atoll_tests::Event::parse(
            "[exitbench] @ev {\"ev\":\"guest_exitbench\",\"op\":\"cpuid\",\"iterations\":1000,\"median_cycles\":900,\"min_cycles\":880,\"max_cycles\":5000}",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            boot_row("exitbench", &exit).unwrap(),
            ["exitbench cpuid", "900", "880", "5000", "1000"]
        );
    }

    #[test]
    fn the_table_aligns_and_picks_units() {
        let results = [
            parse_line("bench planner/plan iterations=200 median_ns=173428 min_ns=950").unwrap(),
            parse_line("bench p iterations=5 median_ns=2500000").unwrap(),
        ];
        assert_eq!(
            table(&results),
            "benchmark         median         min  iterations\n\
             planner/plan    173.4 us      950 ns         200\n\
             p                2.50 ms           -           5\n"
        );
    }
}
