//! `cargo xtask run` and `check-config` end to end, as a user types them:
//! their exit codes and messages are what scripts rely on.

use std::process::Command;

/// `cargo xtask ARGS` run in `dir`: (success, stdout+stderr).
fn xtask(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO"))
        .current_dir(dir)
        .arg("xtask")
        .args(args)
        .output()
        .expect("cargo xtask runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn xtask_run(args: &[&str]) -> (bool, String) {
    let run: Vec<&str> = ["run"].iter().chain(args).copied().collect();
    xtask(&atoll_tests::build::workspace_root(), &run)
}

#[test]
fn run_exits_zero_on_a_clean_power_off() {
    let (ok, text) = xtask_run(&["--emulator", "qemu", "--config", "configs/core.toml"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("@ev {\"ev\":\"poweroff\",\"status\":0"),
        "{text}"
    );
    assert!(text.contains("clean power-off"), "{text}");
}

#[test]
fn run_exits_non_zero_on_panic() {
    let (ok, text) = xtask_run(&["--emulator", "qemu", "--cmdline", "selftest=panic"]);
    assert!(!ok, "{text}");
    let verdict = text.lines().last().unwrap_or_default();
    assert!(
        verdict.starts_with("atoll: FAILED: hypervisor panic at ") && verdict.contains(".rs:"),
        "the last line names the panic\n{text}"
    );
}

#[test]
fn run_refuses_a_missing_config_file() {
    let (ok, text) = xtask_run(&["--config", "configs/no-such-file.toml"]);
    assert!(!ok, "{text}");
    assert!(text.contains("no-such-file.toml does not exist"), "{text}");
}

fn check_config(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let check: Vec<&str> = ["check-config"].iter().chain(args).copied().collect();
    xtask(dir, &check)
}

/// The machine a fixture declares in a first-line `# topology: SPEC`
/// comment, else the default 4-CPU machine.
fn fixture_topology(text: &str) -> String {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# topology:"))
        .map_or("cpus=4,numa=1,mem-mib=512".into(), |s| s.trim().to_string())
}

#[test]
fn check_config_rejects_every_invalid_fixture_with_its_pinned_message() {
    let dir =
        atoll_tests::build::workspace_root().join("hypervisor/cluster/tests/fixtures/invalid");
    let mut fixtures: Vec<String> = std::fs::read_dir(&dir)
        .expect("the fixtures directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 30, "{} fixtures", fixtures.len());
    let failures: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = fixtures
            .chunks(fixtures.len().div_ceil(4))
            .map(|chunk| {
                let dir = &dir;
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for name in chunk {
                        let text = std::fs::read_to_string(dir.join(name)).unwrap();
                        let expected_file = dir.join(name.replace(".toml", ".expected"));
                        let expected = std::fs::read_to_string(expected_file).unwrap();
                        let topology = fixture_topology(&text);
                        let (ok, out) = check_config(dir, &[name, "--topology", &topology]);
                        if ok || !out.lines().any(|l| l == expected.trim_end()) {
                            failures.push(format!(
                                "{name}: expected {expected:?}, got (ok={ok}):\n{out}"
                            ));
                        }
                    }
                    failures
                })
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn check_config_accepts_and_plans_every_shipped_config() {
    let root = atoll_tests::build::workspace_root();
    for (config, topology) in [
        ("configs/default.toml", "cpus=4,numa=1,mem-mib=512"),
        ("configs/core.toml", "cpus=4,numa=1,mem-mib=512"),
        ("configs/exitbench.toml", "cpus=4,numa=1,mem-mib=512"),
        ("configs/signal.toml", "cpus=4,numa=1,mem-mib=512"),
        ("configs/single-node.toml", "cpus=4,numa=1,mem-mib=512"),
        ("configs/multikernel.toml", "cpus=4,numa=1,mem-mib=512"),
        ("configs/numa.toml", "cpus=4,numa=2,mem-mib=1024"),
        ("configs/linux.toml", "cpus=2,numa=1,mem-mib=512"),
    ] {
        let (ok, out) = check_config(&root, &[config, "--topology", topology]);
        assert!(ok, "{config}:\n{out}");
        assert!(out.contains("node 0 "), "{config} prints its plan:\n{out}");
    }
    let shipped = std::fs::read_dir(root.join("configs")).unwrap().count();
    assert_eq!(shipped, 8, "a new config in configs/ needs a line above");
}

#[test]
fn stats_renders_a_console_log_and_fails_on_one_without_stats() {
    let dir = std::env::temp_dir().join(format!("atoll-stats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("console.txt");
    std::fs::write(
        &log,
        "[INFO] booted\n@ev {\"ev\":\"stats\",\"vm\":\"db\",\"node\":0,\"exits\":3,\"guest_ticks\":900,\"root_ticks\":100,\"outside_ppm\":100000,\"reasons\":[\"hlt\"],\"counts\":[3],\"ticks\":[100]}\n",
    )
    .unwrap();
    let root = atoll_tests::build::workspace_root();
    let (ok, text) = xtask(&root, &["stats", log.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("VM db (node 0): 3 exits, 10.00 %"), "{text}");
    assert!(text.contains("  hlt "), "{text}");
    std::fs::write(&log, "[INFO] no VMs here\n").unwrap();
    let (ok, text) = xtask(&root, &["stats", log.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("no stats events"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn check_config_without_topology_plans_on_the_default_machine() {
    // 2 vCPUs and 1 pinned CPU: only planning finds it, and the hypervisor
    // refuses the VM at boot, so check-config must fail without
    // --topology too, and say which machine it planned on.
    let dir =
        atoll_tests::build::workspace_root().join("hypervisor/cluster/tests/fixtures/invalid");
    let (ok, out) = check_config(&dir, &["vm-pin-count.toml"]);
    assert!(!ok, "{out}");
    let expected = std::fs::read_to_string(dir.join("vm-pin-count.expected")).unwrap();
    assert!(out.lines().any(|l| l == expected.trim_end()), "{out}");
    assert!(
        out.contains("vm-pin-count.toml: the hypervisor would refuse VM 'web'")
            && out.contains("planned on the default machine: cpus=4,numa=1,mem-mib=512"),
        "{out}"
    );
    let root = atoll_tests::build::workspace_root();
    let (ok, out) = check_config(&root, &["configs/default.toml"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("planned on the default machine: cpus=4,numa=1,mem-mib=512"),
        "{out}"
    );
    assert!(out.contains("node 0 "), "{out}");
}

#[test]
fn check_config_reads_only_regular_files() {
    let root = atoll_tests::build::workspace_root();
    for (path, what) in [("/dev/zero", "a device"), ("configs", "a directory")] {
        let (ok, out) = check_config(&root, &[path]);
        assert!(!ok, "{out}");
        assert!(
            out.contains(&format!("not a regular file (it is {what})")),
            "{out}"
        );
    }
}
