//! A scan of the text before the TOML parser sees it: the parser recurses
//! once per level of nested arrays, inline tables and dotted keys, and the
//! hypervisor parses on its 64 KiB boot stack. A file of `[[[[...` would
//! overflow it; this scan refuses such a file in one pass, without
//! recursing or allocating.

use alloc::format;
use alloc::string::String;

use super::error::{ConfigError, ErrorKind, SourceMap};

/// Deepest nesting of arrays and inline tables, and most dots in one
/// dotted key. The language needs 3 (`signal = [{ notifications = [0] }]`).
pub const MAX_NESTING: usize = 16;

/// The first place `text` nests deeper than [`MAX_NESTING`], as an error.
/// Strings and comments are skipped, so brackets and dots in them do not
/// count.
pub(crate) fn check(file: &str, text: &str) -> Result<(), ConfigError> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut dots = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'#' => i = end_of_line(bytes, i),
            b'"' | b'\'' => i = end_of_string(bytes, i, b),
            b'\n' => dots = 0,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'.' => dots += 1,
            _ => {}
        }
        if depth > MAX_NESTING || dots > MAX_NESTING {
            let at = SourceMap::new(text).locate(String::new(), i..i);
            return Err(ConfigError::new(
                file,
                &at,
                ErrorKind::BadValue,
                format!("arrays, tables or dotted keys nest deeper than {MAX_NESTING} levels here"),
                "a cluster config nests at most 3 levels (like `signal = [{ vm = \"log\", notifications = [0] }]`): flatten this value".into(),
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
}
