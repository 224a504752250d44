//! A scan of the text before the TOML parser sees it, in one pass,
//! without recursing or allocating:
//!
//! - nesting: the parser recurses once per level of nested arrays, inline
//!   tables and dotted keys, and the hypervisor parses on its 64 KiB boot
//!   stack (a file of `[[[[...` overflowed it);
//! - items and tables: the parsed document takes 100 to 360 bytes of heap
//!   per key or value and about 3 KiB per table (measured in
//!   `tests/limits.rs`), and the hypervisor parses in its 2 MiB boot heap;
//!   so the number of `=`, `,`, `[` and `{` outside strings and comments,
//!   which bounds the keys and values, and the number of table headers and
//!   inline tables are bounded.

use alloc::format;
use alloc::string::String;

use super::error::{ConfigError, ErrorKind, SourceMap};

/// Deepest nesting of arrays and inline tables, and most dots in one
/// dotted key. The language needs 3 (`signal = [{ notifications = [0] }]`).
pub const MAX_NESTING: usize = 16;
/// Most items (`=`, `,`, `[` and `{` outside strings and comments) in a
/// config: a 64-node cluster with a ring of channels and IPIs both ways
/// has about 1700.
pub const MAX_ITEMS: usize = 2048;
/// Most tables (`[...]` / `[[...]]` headers and `{ }` inline tables): that
/// 64-node cluster has 320.
pub const MAX_TABLES: usize = 320;

/// The first place `text` nests deeper than [`MAX_NESTING`], as an error.
/// Strings and comments are skipped, so brackets and dots in them do not
/// count.
pub(crate) fn check(file: &str, text: &str) -> Result<(), ConfigError> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut dots = 0usize;
    let mut items = 0usize;
    let mut tables = 0usize;
    let mut line_start = true;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        // A `[` first on its line opens a table header (`[[` counts once).
        if (b == b'[' && line_start) || b == b'{' {
            tables += 1;
        }
        line_start = b == b'\n' || (line_start && (b == b' ' || b == b'\t'));
        match b {
            b'#' => i = end_of_line(bytes, i),
            b'"' | b'\'' => i = end_of_string(bytes, i, b),
            b'\n' => dots = 0,
            b'[' | b'{' => {
                depth += 1;
                items += 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'.' => dots += 1,
            b'=' | b',' => items += 1,
            _ => {}
        }
        let problem = if depth > MAX_NESTING || dots > MAX_NESTING {
            Some((
                format!("arrays, tables or dotted keys nest deeper than {MAX_NESTING} levels here"),
                "a cluster config nests at most 3 levels (like `signal = [{ vm = \"log\", notifications = [0] }]`): flatten this value",
            ))
        } else if tables > MAX_TABLES {
            Some((
                format!(
                    "the config has more than {MAX_TABLES} tables ([...] headers and {{ }} inline tables) by here"
                ),
                "split the cluster, or merge tables",
            ))
        } else if items > MAX_ITEMS {
            Some((
                format!(
                    "the config has more than {MAX_ITEMS} items ('=', ',', '[' and '{{' outside strings and comments) by here"
                ),
                "split the cluster, or shorten lists and tables",
            ))
        } else {
            None
        };
        if let Some((message, fix)) = problem {
            let at = SourceMap::new(text).locate(String::new(), i..i);
            return Err(ConfigError::new(
                file,
                &at,
                ErrorKind::BadValue,
                message,
                fix.into(),
            ));
        }
        i += 1;
    }
    Ok(())
}

/// The index of the newline ending the line at `i` (or the end).
fn end_of_line(bytes: &[u8], i: usize) -> usize {
    let rest = bytes.get(i..).unwrap_or(&[]);
    rest.iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |n| i + n)
}

/// The index of the quote closing the string that opens at `i`: `"..."`
/// with backslash escapes, `'...'` without, or their triple-quoted
/// multi-line forms. An unclosed string runs to the end of its line (or,
/// multi-line, of the text): the parser reports it.
fn end_of_string(bytes: &[u8], i: usize, quote: u8) -> usize {
    let triple = bytes.get(i + 1) == Some(&quote) && bytes.get(i + 2) == Some(&quote);
    let mut j = if triple { i + 3 } else { i + 1 };
    while let Some(&b) = bytes.get(j) {
        if quote == b'"' && b == b'\\' {
            j += 2;
            continue;
        }
        if b == b'\n' && !triple {
            return j.saturating_sub(1);
        }
        if b == quote {
            let closes =
                !triple || (bytes.get(j + 1) == Some(&quote) && bytes.get(j + 2) == Some(&quote));
            if closes {
                return if triple { j + 2 } else { j };
            }
        }
        j += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn the_language_nests_little_and_passes() {
        let text = "[[vm]]\nsignal = [{ vm = \"a.b.c\", notifications = [0] }] # [[[[[[[[[[[[[[[[[[\nx = '[[[[[[[[[[[[[[[[[['\ny = \"\"\"\n[[[[[[[[[[[[[[[[[[[[\n\"\"\"\na.b.c = 1.5\n";
        assert_eq!(check("c.toml", text), Ok(()));
    }

    #[test]
    fn deep_arrays_tables_and_dotted_keys_are_one_located_error() {
        let deep = format!("x = {}", "[".repeat(5000));
        let e = check("c.toml", &deep).unwrap_err();
        assert_eq!((e.line, e.column), (1, 21));
        assert!(e.to_string().contains("nest deeper than 16 levels"));
        let dotted = format!("\n{} = 1", "a.".repeat(40));
        assert_eq!(check("c.toml", &dotted).unwrap_err().line, 2);
        let tables = format!("x = {}", "{a=".repeat(40));
        assert!(check("c.toml", &tables).is_err());
        // An escaped quote does not end a string.
        let escaped = "x = \"\\\"[[[[[[[[[[[[[[[[[[[[\"\n".to_string();
        assert_eq!(check("c.toml", &escaped), Ok(()));
    }

    #[test]
    fn items_are_counted_outside_strings_and_comments() {
        let zeros = format!("x = [{}]", "0,".repeat(MAX_ITEMS));
        let e = check("c.toml", &zeros).unwrap_err();
        // '=' and '[' are items 1 and 2; comma k is at byte 4 + 2k, and
        // comma 2047 is item 2049: byte 4098, column 4099.
        assert_eq!(e.column, 4099);
        assert!(e.message.starts_with("the config has more than 2048 items"));
        let quoted = format!("x = \"{}\" # {}", ",".repeat(5000), ",".repeat(5000));
        assert_eq!(check("c.toml", &quoted), Ok(()));
        let tables = "[[vm]]\n".repeat(MAX_TABLES + 1);
        let e = check("c.toml", &tables).unwrap_err();
        assert_eq!((e.line, e.column), (MAX_TABLES as u32 + 1, 1));
        assert!(e.message.starts_with("the config has more than 320 tables"));
        let inline = format!("x = [{}]", "{},".repeat(MAX_TABLES + 1));
        assert!(check("c.toml", &inline).is_err());
        assert_eq!(
            check("c.toml", &"[a.b]\n x = [1]\n".repeat(MAX_TABLES)),
            Ok(())
        );
    }
}
