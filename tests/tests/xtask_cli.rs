//! `cargo xtask run` end to end, as a user types it: its exit code is the
//! verdict scripts rely on.

use std::process::Command;

fn xtask_run(args: &[&str]) -> (bool, String) {
    let root = atoll_tests::build::workspace_root();
    let out = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["xtask", "run"])
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

#[test]
fn run_exits_zero_on_a_clean_power_off() {
    let (ok, text) = xtask_run(&["--emulator", "qemu"]);
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
