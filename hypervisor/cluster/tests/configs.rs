//! Every shipped config in `configs/` parses and plans on the machine it is
//! written for.

use atoll_cluster::config::ClusterConfig;
use atoll_cluster::plan::{Access, plan};
use atoll_cluster::topology::{DomainId, Topology};
use std::path::PathBuf;

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// The machine each shipped config is written for.
fn topology_for(file: &str) -> &'static str {
    match file {
        "numa.toml" => "cpus=4,numa=2,mem-mib=1024",
        _ => "cpus=4,numa=1,mem-mib=512",
    }
}

fn load(file: &str) -> (ClusterConfig, atoll_cluster::plan::Plan) {
    let text = std::fs::read_to_string(configs_dir().join(file)).unwrap();
    let config = ClusterConfig::parse(file, &text).unwrap_or_else(|errors| {
        panic!(
            "{file} does not parse:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let topology = Topology::from_spec(topology_for(file)).unwrap();
    let plan = plan(&config, &topology).unwrap_or_else(|errors| {
        panic!(
            "{file} does not plan:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    (config, plan)
}

#[test]
fn every_shipped_config_parses_and_plans() {
    let mut files: Vec<String> = std::fs::read_dir(configs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".toml"))
        .collect();
    files.sort();
    for expected in [
        "default.toml",
        "multikernel.toml",
        "numa.toml",
        "single-node.toml",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "configs/{expected} is missing"
        );
    }
    for file in &files {
        load(file);
    }
}

#[test]
fn default_has_two_nodes_a_channel_and_ipis_both_ways() {
    let (config, plan) = load("default.toml");
    assert_eq!(plan.nodes.len(), 2);
    let cpus: Vec<Vec<u32>> = plan
        .nodes
        .iter()
        .map(|n| n.cpus.iter().map(|c| c.index.0).collect())
        .collect();
    assert_eq!(cpus, [vec![0, 1], vec![2, 3]]);
    assert_eq!(plan.channels.len(), 1);
    assert_eq!(plan.channels[0].range.len, 64 * 1024);
    assert!(
        plan.nodes
            .iter()
            .all(|n| n.channels == [(0, Access::ReadWrite)])
    );
    assert_eq!(config.signals().len(), 2);
    assert!(plan.signals.iter().all(|s| s.notifications == 1));
}

#[test]
fn single_node_takes_every_cpu() {
    let (_, plan) = load("single-node.toml");
    assert_eq!(plan.nodes.len(), 1);
    assert_eq!(plan.nodes[0].cpus.len(), 4);
}

#[test]
fn multikernel_has_one_cpu_per_node_and_every_pair_connected() {
    let (_, plan) = load("multikernel.toml");
    assert_eq!(plan.nodes.len(), 4);
    assert!(plan.nodes.iter().all(|n| n.cpus.len() == 1));
    assert_eq!(plan.channels.len(), 6);
    assert_eq!(plan.signals.len(), 12);
}

#[test]
fn numa_nodes_are_tied_to_their_domains() {
    let (_, plan) = load("numa.toml");
    let domains: Vec<_> = plan.nodes.iter().map(|n| n.domain).collect();
    assert_eq!(domains, [Some(DomainId(0)), Some(DomainId(1))]);
}
