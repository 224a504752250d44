//! Negative fixtures: every `fixtures/invalid/NAME.toml` must fail with
//! exactly the first error line pinned in `NAME.expected`.
//!
//! Fixtures whose error comes from planning name their machine in a first
//! line `# topology: SPEC` (see `Topology::from_spec`); the others are
//! planned on `cpus=4,numa=1,mem-mib=512` if they parse. Errors name the
//! fixture's own file name.
//!
//! `ATOLL_BLESS=1 cargo test -p atoll-cluster --test fixtures` rewrites the
//! `.expected` files from the current messages; review the diff.

use atoll_cluster::config::ClusterConfig;
use atoll_cluster::plan::plan;
use atoll_cluster::topology::Topology;
use std::path::{Path, PathBuf};

const DEFAULT_TOPOLOGY: &str = "cpus=4,numa=1,mem-mib=512";
const MIN_FIXTURES: usize = 30;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// All error lines for a fixture, or `None` if it is valid.
fn errors(path: &Path) -> Option<Vec<String>> {
    let name = path.file_name().unwrap().to_str().unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let spec = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# topology:"))
        .map_or(DEFAULT_TOPOLOGY, str::trim);
    let lines =
        |e: Vec<atoll_cluster::config::ConfigError>| e.iter().map(ToString::to_string).collect();
    let config = match ClusterConfig::parse(name, &text) {
        Ok(c) => c,
        Err(e) => return Some(lines(e)),
    };
    let topology = Topology::from_spec(spec).unwrap();
    plan(&config, &topology).err().map(lines)
}

#[test]
fn every_fixture_fails_with_its_pinned_message() {
    let files = fixtures();
    assert!(
        files.len() >= MIN_FIXTURES,
        "only {} fixtures; keep at least {MIN_FIXTURES}",
        files.len()
    );
    let bless = std::env::var_os("ATOLL_BLESS").is_some();
    let mut failures = Vec::new();
    for path in &files {
        let expected_path = path.with_extension("expected");
        let Some(errors) = errors(path) else {
            failures.push(format!(
                "{}: accepted, but it is an invalid fixture",
                path.display()
            ));
            continue;
        };
        let first = errors.first().cloned().unwrap_or_default();
        if bless {
            std::fs::write(&expected_path, format!("{first}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing", expected_path.display()));
        if expected.trim_end() != first {
            failures.push(format!(
                "{}:\n  expected: {}\n  actual:   {first}",
                path.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_expected_file_has_its_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "expected") {
            assert!(
                path.with_extension("toml").is_file(),
                "{} has no .toml",
                path.display()
            );
        }
    }
}
