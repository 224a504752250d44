//! Numbers and sets as error messages write them.

use alloc::format;
use alloc::string::String;

use super::ranges::MIB;

/// "CPUs 0-3", "CPU 0", "no CPUs": the CPUs `0..n`.
pub(super) fn cpu_list(n: usize) -> String {
    match n {
        0 => "no CPUs".into(),
        1 => "CPU 0".into(),
        _ => format!("CPUs 0-{}", n - 1),
    }
}

/// A sorted set of numbers with runs collapsed: "0-3, 5, 7-8".
pub(super) fn index_set(sorted: &[u32]) -> String {
    let mut out = String::new();
    let mut iter = sorted.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while let Some(&next) = iter.peek() {
            if Some(next) != last.checked_add(1) {
                break;
            }
            last = next;
            iter.next();
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        if first == last {
            out.push_str(&format!("{first}"));
        } else {
            out.push_str(&format!("{first}-{last}"));
        }
    }
    out
}

/// "64 MiB", "12 KiB" or "100 bytes", whichever is exact.
pub(crate) fn size(bytes: u64) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_collapse_runs() {
        assert_eq!(index_set(&[0, 1, 2, 3, 5, 7, 8]), "0-3, 5, 7-8");
        assert_eq!(index_set(&[4]), "4");
        assert_eq!(index_set(&[]), "");
        assert_eq!(
            index_set(&[u32::MAX - 1, u32::MAX]),
            "4294967294-4294967295"
        );
    }

    #[test]
    fn sizes_are_exact() {
        assert_eq!(size(64 * MIB), "64 MiB");
        assert_eq!(size(MIB + 4096), "1028 KiB");
        assert_eq!(size(0), "0 bytes");
        assert_eq!(cpu_list(4), "CPUs 0-3");
    }
}
