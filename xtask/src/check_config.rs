//! `cargo xtask check-config FILE`.
//!
//! At this stage the hypervisor only checks that the config module is there
//! and not empty; this command checks the same, plus UTF-8, so that the
//! file the user will boot is at least one the boot accepts. The cluster
//! config language and its checks fill this in.

use anyhow::{Context, Result};
use std::path::Path;

/// Checks `file`; prints a verdict and returns whether it passed.
pub fn check(file: &Path) -> Result<bool> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    match verdict(&bytes) {
        Ok(()) => {
            println!("{}: ok ({} bytes)", file.display(), bytes.len());
            Ok(true)
        }
        Err(problem) => {
            eprintln!("{}: {problem}", file.display());
            Ok(false)
        }
    }
}

fn verdict(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the file is empty; a cluster config needs at least one [[node]]".into());
    }
    std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 at byte {}; save the file as UTF-8",
            e.valid_up_to()
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_non_utf8_files_fail() {
        assert!(verdict(b"[[node]]\n").is_ok());
        assert!(verdict(b"").unwrap_err().contains("empty"));
        assert!(verdict(b"a\xffb").unwrap_err().contains("byte 1"));
    }
}
