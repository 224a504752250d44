//! Where a config value is, and what is wrong with it.
//!
//! Every check, in the parser and in the planner, reports a [`ConfigError`]
//! that names the file, the 1-based line and column of the offending key or
//! value, the key path (`node[1].cpus[0]`) and a fix. The model keeps a
//! [`Location`] next to every value so that the planner, which runs later and
//! without the text, can still point at the exact spot.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

/// Most errors one check reports: the rest are counted in a last line
/// ("and 9980 more errors"), so a broken file cannot flood the terminal
/// or the boot console.
pub const MAX_ERRORS: usize = 20;
/// Longest echo of a name or value in a message, in characters; a longer
/// one is cut and its length given.
pub const MAX_SHOWN: usize = 40;
/// Most items a list in a message names ("known nodes: a, b, ... (256 in
/// all)").
pub const MAX_LISTED: usize = 8;

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
    /// The value, checked.
    pub value: T,
    /// Where it was written.
    pub at: Location,
}

impl<T> Located<T> {
    /// `value`, written at `at`.
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
    /// The file cannot be read as a config at all: too large, not a
    /// regular file, not UTF-8.
    File,
    /// Not an error of its own: the count of errors left out after
    /// [`MAX_ERRORS`]. Shown without a line and column.
    More,
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
    /// The class of mistake.
    pub kind: ErrorKind,
    /// What is wrong: lowercase, specific, without the location.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl ConfigError {
    /// An error in `file` at `at`.
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
        if self.kind == ErrorKind::More {
            return write!(f, "{}: {}; {}", self.file, self.message, self.fix);
        }
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

/// The `[[vm]]` an error is inside: `N` of a key `vm[N]...`.
pub(crate) fn vm_index(key: &str) -> Option<usize> {
    let rest = key.strip_prefix("vm[")?;
    let (digits, _) = rest.split_once(']')?;
    digits.parse().ok()
}

/// The errors of one check, kept bounded: at most `2 * KEEP` are held at
/// any time (the earliest in the file win), the others only counted. What
/// a boot needs to refuse VMs survives the cut: which `[[vm]]` tables have
/// errors, the first error of each, and whether any error is elsewhere.
#[derive(Clone, Debug)]
pub(crate) struct ErrorList {
    file: String,
    kept: Vec<ConfigError>,
    dropped: usize,
    /// First error (in file order) of each `[[vm]]` table with errors.
    pub(crate) vms: BTreeMap<usize, ConfigError>,
    /// Some error is outside every `[[vm]]` table.
    pub(crate) outside_vms: bool,
    /// Valid names of the `[[vm]]` tables read, by index, so that a
    /// refusal can name a VM whose table has errors.
    pub(crate) vm_names: BTreeMap<usize, String>,
}

/// Errors held before the list is cut back to the earliest.
const KEEP: usize = 4 * MAX_ERRORS;

impl ErrorList {
    pub(crate) fn new(file: &str) -> Self {
        Self {
            file: file.into(),
            kept: Vec::new(),
            dropped: 0,
            vms: BTreeMap::new(),
            outside_vms: false,
            vm_names: BTreeMap::new(),
        }
    }

    pub(crate) fn push(&mut self, error: ConfigError) {
        match vm_index(&error.key) {
            Some(vm) => {
                let earlier = self
                    .vms
                    .get(&vm)
                    .is_some_and(|e| (e.line, e.column) <= (error.line, error.column));
                if !earlier {
                    self.vms.insert(vm, error.clone());
                }
            }
            None => self.outside_vms = true,
        }
        self.kept.push(error);
        if self.kept.len() >= 2 * KEEP {
            self.cut(KEEP);
        }
    }

    /// Sorts by position (stable: errors at one spot keep the order the
    /// checks found them in) and keeps the first `n`.
    fn cut(&mut self, n: usize) {
        self.kept.sort_by_key(|e| (e.line, e.column));
        if self.kept.len() > n {
            self.dropped += self.kept.len() - n;
            self.kept.truncate(n);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.dropped == 0
    }

    /// Errors in all, reported or not.
    pub(crate) fn len(&self) -> usize {
        self.kept.len() + self.dropped
    }

    /// Adds every error of `other` (a later pass over the same file).
    pub(crate) fn extend(&mut self, other: ErrorList) {
        self.dropped += other.dropped;
        for e in other.kept {
            self.push(e);
        }
        for (vm, e) in other.vms {
            self.vms.entry(vm).or_insert(e);
        }
        self.outside_vms |= other.outside_vms;
    }

    /// The first [`MAX_ERRORS`] in file order, then an [`ErrorKind::More`]
    /// line if there were more.
    pub(crate) fn into_sorted(mut self) -> Vec<ConfigError> {
        self.cut(MAX_ERRORS);
        if self.dropped > 0 {
            let n = self.dropped;
            let s = if n == 1 { "" } else { "s" };
            self.kept.push(ConfigError::new(
                &self.file,
                &Location::start_of_file(),
                ErrorKind::More,
                format!("and {n} more error{s}"),
                "correct the errors above and check again".into(),
            ));
        }
        self.kept
    }
}

/// A name or value as a message shows it: control characters (and the
/// characters that reorder text on a terminal) escaped as `\u{1b}`, and
/// cut after [`MAX_SHOWN`] characters with its length given. Nothing from
/// the file reaches the operator's terminal raw.
pub fn shown(text: &str) -> String {
    let mut out = String::new();
    let mut count = 0usize;
    for c in text.chars() {
        count += 1;
        if count > MAX_SHOWN {
            continue;
        }
        if c.is_control() || is_bidi_control(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    if count > MAX_SHOWN {
        out.push_str(&format!("... ({count} characters)"));
    }
    out
}

/// The Unicode bidirectional embedding, override and isolate controls
/// (they are not `Cc`, but reorder what a terminal shows).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// A list in a message: at most [`MAX_LISTED`] items, each [`shown`] and
/// quoted, then how many there are in all.
pub fn listed<'a>(items: impl ExactSizeIterator<Item = &'a str>) -> String {
    listed_upto(items, MAX_LISTED)
}

/// [`listed`] with at most `max` items named.
pub(crate) fn listed_upto<'a>(items: impl ExactSizeIterator<Item = &'a str>, max: usize) -> String {
    let total = items.len();
    let mut out = String::new();
    for (i, item) in items.take(max).enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == total { " and " } else { ", " });
        }
        out.push('\'');
        out.push_str(&shown(item));
        out.push('\'');
    }
    if total > max {
        out.push_str(&format!(", ... ({total} in all)"));
    }
    out
}

/// `bytes` as UTF-8 text, or a [`ErrorKind::File`] error at the line and
/// column of the first byte that is not.
pub fn utf8<'b>(file: &str, bytes: &'b [u8]) -> Result<&'b str, ConfigError> {
    core::str::from_utf8(bytes).map_err(|e| {
        let good = e.valid_up_to();
        // The valid prefix is text: count lines and characters in it.
        let prefix = core::str::from_utf8(bytes.get(..good).unwrap_or(&[])).unwrap_or("");
        let map = SourceMap::new(prefix);
        let at = map.locate(String::new(), good..good);
        ConfigError::new(
            file,
            &at,
            ErrorKind::File,
            format!("the file is not UTF-8 text (byte {good} is not valid UTF-8)"),
            "save the config as UTF-8".into(),
        )
    })
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
