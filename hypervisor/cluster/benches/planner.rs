//! Planner timings on a large machine: 1024 CPUs in 64 NUMA domains, with a
//! 64-node config (one node per domain, a ring of channels, IPIs both ways
//! around the ring), and the same with `count` nodes that leave the CPU
//! choice to the planner.
//!
//! Prints one line per benchmark for `cargo xtask bench` to tabulate:
//! `bench NAME iterations=N median_ns=N min_ns=N`.

use atoll_cluster::config::ClusterConfig;
use atoll_cluster::plan::plan;
use atoll_cluster::topology::Topology;
use std::fmt::Write;
use std::hint::black_box;
use std::time::Instant;

const NODES: usize = 64;
const WARMUP: usize = 10;
const ITERATIONS: usize = 200;

/// 64 nodes with `select(k)` choosing node k's CPUs, 256 MiB each, a 64 KiB
/// channel from each node to the next, notification 0 both ways.
fn config(select: impl Fn(usize) -> String) -> String {
    let mut text = String::new();
    for k in 0..NODES {
        let _ = writeln!(
            text,
            "[[node]]\nname = \"n{k}\"\n{}\nmem_mib = 256\n",
            select(k)
        );
    }
    for k in 0..NODES {
        let next = (k + 1) % NODES;
        let _ = writeln!(
            text,
            "[[channel]]\nname = \"n{k}-n{next}\"\nsize_kib = 64\naccess = {{ n{k} = \"rw\", n{next} = \"r\" }}\n"
        );
        for (from, to) in [(k, next), (next, k)] {
            let _ = writeln!(
                text,
                "[[ipi]]\nfrom = \"n{from}\"\nto = \"n{to}\"\nnotifications = [0]\n"
            );
        }
    }
    text
}

/// Runs `f` WARMUP + ITERATIONS times; returns (median, min) in ns.
fn time(mut f: impl FnMut()) -> (u128, u128) {
    for _ in 0..WARMUP {
        f();
    }
    let mut samples: Vec<u128> = (0..ITERATIONS)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_nanos()
        })
        .collect();
    samples.sort_unstable();
    (samples[samples.len() / 2], samples[0])
}

fn report(name: &str, (median, min): (u128, u128)) {
    println!("bench {name} iterations={ITERATIONS} median_ns={median} min_ns={min}");
}

fn main() {
    let topology = Topology::from_spec("cpus=1024,numa=64,mem-mib=65536").unwrap();
    let numa = config(|k| format!("numa = {k}"));
    let count = config(|_| "count = 16".into());
    let numa_config = ClusterConfig::parse("bench.toml", &numa).unwrap();
    let count_config = ClusterConfig::parse("bench.toml", &count).unwrap();
    // Both must plan, or the timings would measure the error path.
    plan(&numa_config, &topology).unwrap();
    plan(&count_config, &topology).unwrap();

    report(
        "planner/plan-1024cpus-64domains-64numa-nodes",
        time(|| {
            black_box(plan(black_box(&numa_config), black_box(&topology)).is_ok());
        }),
    );
    report(
        "planner/plan-1024cpus-64domains-64count-nodes",
        time(|| {
            black_box(plan(black_box(&count_config), black_box(&topology)).is_ok());
        }),
    );
    report(
        "planner/parse-64nodes-64channels-128ipis",
        time(|| {
            black_box(ClusterConfig::parse("bench.toml", black_box(&numa)).is_ok());
        }),
    );
}
