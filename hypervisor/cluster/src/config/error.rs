//! Where a config value is, and what is wrong with it.
//!
//! Every check, in the parser and in the planner, reports a [`ConfigError`]
//! that names the file, the 1-based line and column of the offending key or
//! value, the key path (`node[1].cpus[0]`) and a fix. The model keeps a
//! [`Location`] next to every value so that the planner, which runs later and
//! without the text, can still point at the exact spot.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

/// Where a key or value is in the config file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The key path, e.g. `node[1].cpus[0]` or `channel[0].access.db`.
    /// Array positions are 0-based: `node[1]` is the second `[[node]]`, the
    /// node with `NodeId(1)`.
    pub key: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters (not bytes), as editors do.
    pub column: u32,
    /// Byte range of the key or value in the file.
    pub span: Range<usize>,
}

impl Location {
    /// Line 1, column 1, no key: for problems of the file as a whole.
    pub fn start_of_file() -> Self {
        Self {
            key: String::new(),
            line: 1,
            column: 1,
            span: 0..0,
        }
    }
}

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Located<T> {
    pub value: T,
    pub at: Location,
}

impl<T> Located<T> {
    pub fn new(value: T, at: Location) -> Self {
        Self { value, at }
    }
}

/// What kind of mistake an error is: lets callers and tests match on the
/// class without parsing the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The text is not TOML.
    Syntax,
    /// A key or table the language does not have.
    UnknownKey,
    /// A value of the wrong TOML type (a string where a number belongs).
    WrongType,
    /// A required key is absent.
    Missing,
    /// A value of the right type that the language does not allow.
    BadValue,
    /// A name, CPU, domain or notification given twice.
    Duplicate,
    /// Keys that exclude each other, or a CPU claimed by two nodes.
    Conflict,
    /// A reference to a node that no `[[node]]` declares.
    UnknownNode,
    /// The config asks for hardware the machine does not have.
    Hardware,
    /// Not enough memory of the kind asked for.
    OutOfMemory,
    /// The topology handed to the planner breaks its own invariants (a boot
    /// discovery bug, not a config mistake).
    Topology,
}

/// One problem in a cluster config.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConfigError {
    /// The file name as the caller gave it to [`super::ClusterConfig::parse`].
    pub file: String,
    /// 1-based line of the offending key or value.
    pub line: u32,
    /// 1-based column (in characters) of the offending key or value.
    pub column: u32,
    /// The key path, e.g. `node[1].cpus[0]`; empty for the whole file.
    pub key: String,
    pub kind: ErrorKind,
    /// What is wrong: lowercase, specific, without the location.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl ConfigError {
    pub fn new(file: &str, at: &Location, kind: ErrorKind, message: String, fix: String) -> Self {
        Self {
            file: file.into(),
            line: at.line,
            column: at.column,
            key: at.key.clone(),
            kind,
            message,
            fix,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}; {}",
            self.file, self.line, self.column, self.message, self.fix
        )
    }
}

impl core::error::Error for ConfigError {}

/// Turns byte offsets into 1-based line and column.
#[derive(Clone, Debug)]
pub(crate) struct SourceMap<'s> {
    text: &'s str,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

impl<'s> SourceMap<'s> {
    pub(crate) fn new(text: &'s str) -> Self {
        let mut line_starts = alloc::vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Self { text, line_starts }
    }

    /// Line and column of byte `offset`; offsets past the end clamp to the
    /// end of the text.
    pub(crate) fn line_column(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        // The last line starting at or before `offset`; line_starts[0] == 0,
        // so there always is one.
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let column = match self.text.get(start..offset) {
            Some(prefix) => prefix.chars().count(),
            // Not on a character boundary (never from the TOML parser's
            // spans, but a count of bytes is still a useful answer).
            None => offset - start,
        };
        (saturate(line + 1), saturate(column + 1))
    }

    pub(crate) fn locate(&self, key: String, span: Range<usize>) -> Location {
        let (line, column) = self.line_column(span.start);
        Location {
            key,
            line,
            column,
            span,
        }
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let map = SourceMap::new("ab\n\u{e9}x = 1\n\n");
        assert_eq!(map.line_column(0), (1, 1));
        assert_eq!(map.line_column(1), (1, 2));
        assert_eq!(map.line_column(3), (2, 1));
        // 'x' follows a two-byte character: byte 5, column 2.
        assert_eq!(map.line_column(5), (2, 2));
        assert_eq!(map.line_column(11), (3, 1));
        assert_eq!(map.line_column(12), (4, 1));
        assert_eq!(map.line_column(999), (4, 1));
    }

    #[test]
    fn display_is_file_line_column_message_fix() {
        let at = Location {
            key: "node[1].cpus[1]".into(),
            line: 14,
            column: 8,
            span: 0..1,
        };
        let e = ConfigError::new(
            "cluster.toml",
            &at,
            ErrorKind::Conflict,
            "CPU 3 is in node 'db' and node 'log'".into(),
            "a CPU belongs to one node".into(),
        );
        assert_eq!(
            e.to_string(),
            "cluster.toml:14:8: CPU 3 is in node 'db' and node 'log'; a CPU belongs to one node"
        );
        assert_eq!(e.key, "node[1].cpus[1]");
    }
}
