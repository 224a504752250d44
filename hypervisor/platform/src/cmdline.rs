//! The hypervisor command line: space-separated `key=value` or `key` words,
//! as given to GRUB's `multiboot2` line.

/// A borrowed command line.
#[derive(Clone, Copy, Debug)]
pub struct Cmdline<'a>(pub &'a str);

/// The keys Atoll understands. Anything else is reported as a warning so that
/// a typo does not silently change behaviour.
pub const KNOWN_KEYS: &[&str] = &["selftest"];

impl<'a> Cmdline<'a> {
    /// The words of the command line as `(key, value)` pairs; a bare word has
    /// an empty value.
    pub fn words(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .split_ascii_whitespace()
            .map(|word| word.split_once('=').unwrap_or((word, "")))
    }

    /// The value of the last `key=value` word with this key.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.words()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .last()
    }

    /// The first key that is not in [`KNOWN_KEYS`].
    pub fn first_unknown_key(&self) -> Option<&'a str> {
        self.words()
            .map(|(k, _)| k)
            .find(|k| !KNOWN_KEYS.contains(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_and_unknown_keys() {
        let c = Cmdline("  selftest=panic  verbose selftest=ipi ");
        assert_eq!(c.get("selftest"), Some("ipi"));
        assert_eq!(c.get("missing"), None);
        assert_eq!(c.first_unknown_key(), Some("verbose"));
        assert_eq!(Cmdline("").first_unknown_key(), None);
    }
}
