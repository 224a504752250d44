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

use anyhow::{Context, Result, bail};
use atoll_tests::build::workspace_root;
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

/// One measurement line.
#[derive(Debug, PartialEq, Eq)]
struct Measurement {
    name: String,
    fields: BTreeMap<String, u128>,
}

/// Runs every suite whose package, target or measurement names contain
/// `filter`; true when all of them ran.
pub fn run(filter: Option<&str>) -> Result<bool> {
    let chosen: Vec<&Suite> = SUITES
        .iter()
        .filter(|s| {
            filter.is_none_or(|f| {
                s.package.contains(f) || s.target.contains(f) || f.starts_with(s.target)
            })
        })
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = SUITES.iter().map(|s| s.target).collect();
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
