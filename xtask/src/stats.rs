//! `cargo xtask stats [LOG]`: the `stats` events of a run's console log
//! (hypervisor/EVENTS.md) as a table per VM: exits by reason, the
//! hypervisor's ticks for each, and the VM's time outside guest mode.
//! Without LOG it reads the newest run's console (target/atoll-runs).

use anyhow::{Context, Result, bail};
use atoll_tests::Event;
use atoll_tests::build::target_dir;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Prints the table for `log` (or the newest run); false if it has no
/// `stats` event.
pub fn run(log: Option<&Path>) -> Result<bool> {
    let path = match log {
        Some(p) => p.to_path_buf(),
        None => newest_console()?,
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table = render(&text);
    if table.is_empty() {
        eprintln!(
            "{}: no stats events (a VM prints one when it ends)",
            path.display()
        );
        return Ok(false);
    }
    println!("{}", path.display());
    print!("{table}");
    Ok(true)
}

/// The console of the most recent run.
fn newest_console() -> Result<PathBuf> {
    let runs = target_dir().join("atoll-runs");
    let newest = std::fs::read_dir(&runs)
        .with_context(|| {
            format!(
                "reading {}: no run yet? try cargo xtask run",
                runs.display()
            )
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("serial.txt"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    match newest {
        Some(p) => Ok(p),
        None => bail!(
            "no run console under {}; try cargo xtask run",
            runs.display()
        ),
    }
}

/// One block per `stats` event.
pub fn render(console: &str) -> String {
    let mut out = String::new();
    for event in console
        .lines()
        .filter_map(|l| Event::parse(l)?.ok())
        .filter(|e| e.name == "stats")
    {
        let n = |k: &str| event.u64(k).unwrap_or(0);
        let ppm = n("outside_ppm");
        let _ = writeln!(
            out,
            "VM {} (node {}): {} exits, {:.2} % of its time outside the guest",
            event.str("vm").unwrap_or("?"),
            n("node"),
            n("exits"),
            ppm as f64 / 10_000.0
        );
        let _ = writeln!(
            out,
            "  {:<20} {:>10} {:>14} {:>12}",
            "reason", "exits", "root ticks", "ticks/exit"
        );
        let reasons: Vec<&str> = event
            .get("reasons")
            .and_then(|r| r.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let counts = event.u64_list("counts").unwrap_or_default();
        let ticks = event.u64_list("ticks").unwrap_or_default();
        for ((reason, count), ticks) in reasons.iter().zip(&counts).zip(&ticks) {
            let per = if *count > 0 { ticks / count } else { 0 };
            let _ = writeln!(out, "  {reason:<20} {count:>10} {ticks:>14} {per:>12}");
        }
        let _ = writeln!(
            out,
            "  {:<20} {:>10} {:>14}\n",
            "in the guest",
            "",
            n("guest_ticks")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_vm_with_its_reasons() {
        let log = "[INFO] x\n@ev {\"ev\":\"stats\",\"vm\":\"web\",\"node\":1,\"exits\":12,\"guest_ticks\":700,\"root_ticks\":300,\"outside_ppm\":300000,\"reasons\":[\"cpuid\",\"io\"],\"counts\":[2,10],\"ticks\":[50,250]}\n";
        let table = render(log);
        assert!(
            table.starts_with("VM web (node 1): 12 exits, 30.00 % of its time outside the guest\n"),
            "{table}"
        );
        assert!(
            table.contains("  cpuid                         2             50           25\n"),
            "{table}"
        );
        assert!(
            table.contains("  io                           10            250           25\n"),
            "{table}"
        );
        assert!(table.contains("in the guest"), "{table}");
        assert!(render("@ev {\"ev\":\"boot\"}\n").is_empty());
    }
}
