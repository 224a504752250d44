//! Typed reading of the parsed TOML document, reporting every mistake with
//! its location instead of stopping at the first.
//!
//! The document comes from `toml`'s span-keeping parser ([`DeTable`]): each
//! key and value carries its byte range, which [`SourceMap`] turns into line
//! and column. Tables are read in source order (the parser's map is sorted by
//! key), so errors and grant lists follow the file.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::Range;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::error::{ConfigError, ErrorKind, ErrorList, Located, Location, SourceMap, shown};
use super::schema::{Key, Presence, Section};

/// A table being read.
pub(crate) struct Table<'t, 'i> {
    /// Key path of the table, e.g. `node[1]`.
    pub path: String,
    /// Where the table starts: its `[[node]]` header or its `{`.
    pub at: Location,
    entries: Vec<(&'t Spanned<DeString<'i>>, &'t Spanned<DeValue<'i>>)>,
    /// Keys the section does not have (already reported).
    unknown: Vec<String>,
}

impl Table<'_, '_> {
    /// Whether an unknown key looks like a misspelling of `name`: its
    /// "did you mean" error then stands for the missing key too.
    pub(crate) fn misspelt(&self, name: &str) -> bool {
        self.unknown.iter().any(|u| closest(u, &[name]).is_some())
    }
}

/// One value being read, with its key path and location.
#[derive(Clone)]
pub(crate) struct Field<'t, 'i> {
    pub at: Location,
    pub value: &'t DeValue<'i>,
    /// The example of the key this value belongs to, for fixes.
    pub example: &'static str,
}

pub(crate) struct Reader<'s> {
    pub file: &'s str,
    map: SourceMap<'s>,
    pub errors: ErrorList,
}

impl<'s> Reader<'s> {
    pub(crate) fn new(file: &'s str, text: &'s str) -> Self {
        Self {
            file,
            map: SourceMap::new(text),
            errors: ErrorList::new(file),
        }
    }

    pub(crate) fn locate(&self, key: String, span: Range<usize>) -> Location {
        self.map.locate(key, span)
    }

    pub(crate) fn report(&mut self, at: &Location, kind: ErrorKind, message: String, fix: String) {
        self.errors
            .push(ConfigError::new(self.file, at, kind, message, fix));
    }

    /// Opens `value` as a table of `section`, reporting a wrong type and
    /// every key `section` does not have.
    pub(crate) fn table<'t, 'i>(
        &mut self,
        path: String,
        value: &'t Spanned<DeValue<'i>>,
        section: &Section,
    ) -> Option<Table<'t, 'i>> {
        let at = self.locate(path.clone(), value.span());
        self.table_at(path, at, value.get_ref(), section)
    }

    /// Opens an array element (or other field) as a table of `section`,
    /// like [`Reader::table`].
    pub(crate) fn field_table<'t, 'i>(
        &mut self,
        field: &Field<'t, 'i>,
        section: &Section,
    ) -> Option<Table<'t, 'i>> {
        self.table_at(field.at.key.clone(), field.at.clone(), field.value, section)
    }

    fn table_at<'t, 'i>(
        &mut self,
        path: String,
        at: Location,
        value: &'t DeValue<'i>,
        section: &Section,
    ) -> Option<Table<'t, 'i>> {
        let DeValue::Table(table) = value else {
            self.report(
                &at,
                ErrorKind::WrongType,
                format!("{path} must be a table, not {}", article(value.type_str())),
                format!("write {} followed by its keys", section.header),
            );
            return None;
        };
        let entries = sorted_entries(table);
        let mut unknown = Vec::new();
        for (key, _) in &entries {
            let name: &str = key.get_ref();
            if section.key(name).is_none() {
                unknown.push(name.to_string());
                let key_at = self.locate(format!("{path}.{name}"), key.span());
                let names: Vec<&str> = section.keys.iter().map(|k| k.name).collect();
                self.report(
                    &key_at,
                    ErrorKind::UnknownKey,
                    format!("unknown key '{}' in {path}", shown(name)),
                    suggest(
                        name,
                        &names,
                        &format!("the keys of {}", section.header),
                        usize::MAX,
                    ),
                );
            }
        }
        Some(Table {
            path,
            at,
            entries,
            unknown,
        })
    }

    /// The value of an optional `key` in `table`, if present.
    pub(crate) fn optional<'t, 'i>(
        &self,
        table: &Table<'t, 'i>,
        key: &'static Key,
    ) -> Option<Field<'t, 'i>> {
        debug_assert_ne!(key.presence, Presence::Required, "{} is required", key.name);
        self.lookup(table, key)
    }

    /// The value of `key` in `table`, whatever the key's presence.
    fn lookup<'t, 'i>(&self, table: &Table<'t, 'i>, key: &'static Key) -> Option<Field<'t, 'i>> {
        table
            .entries
            .iter()
            .find(|(k, _)| k.get_ref() == key.name)
            .map(|(_, v)| Field {
                at: self.locate(format!("{}.{}", table.path, key.name), v.span()),
                value: v.get_ref(),
                example: key.example,
            })
    }

    /// The value of `key` in `table`; reports it missing at the table's start.
    pub(crate) fn required<'t, 'i>(
        &mut self,
        table: &Table<'t, 'i>,
        key: &'static Key,
        owner: &str,
    ) -> Option<Field<'t, 'i>> {
        debug_assert_eq!(key.presence, Presence::Required, "{} is optional", key.name);
        let field = self.lookup(table, key);
        if field.is_none() && !table.misspelt(key.name) {
            let mut at = table.at.clone();
            at.key = format!("{}.{}", table.path, key.name);
            self.report(
                &at,
                ErrorKind::Missing,
                format!("{owner} has no {}", key.name),
                format!("add `{}` ({})", key.example, key.meaning),
            );
        }
        field
    }

    /// Reports `field` as not being `expected` ("a string"), with the
    /// key's example as the fix.
    pub(crate) fn wrong_type(&mut self, field: &Field<'_, '_>, expected: &str) {
        self.report(
            &field.at,
            ErrorKind::WrongType,
            format!(
                "{} must be {expected}, not {}",
                field.at.key,
                article(field.value.type_str())
            ),
            format!("write it like `{}`", field.example),
        );
    }

    pub(crate) fn string(&mut self, field: &Field<'_, '_>) -> Option<Located<String>> {
        match field.value {
            DeValue::String(s) => Some(Located::new(s.to_string(), field.at.clone())),
            _ => {
                self.wrong_type(field, "a string");
                None
            }
        }
    }

    /// A non-negative integer.
    pub(crate) fn integer(&mut self, field: &Field<'_, '_>) -> Option<Located<u64>> {
        let DeValue::Integer(int) = field.value else {
            self.wrong_type(field, "an integer");
            return None;
        };
        match i128::from_str_radix(int.as_str(), int.radix()) {
            Ok(n) if n < 0 => {
                self.report(
                    &field.at,
                    ErrorKind::BadValue,
                    format!("{} is {n}, but it cannot be negative", field.at.key),
                    format!("write a number like `{}`", field.example),
                );
                None
            }
            Ok(n) => match u64::try_from(n) {
                Ok(n) => Some(Located::new(n, field.at.clone())),
                Err(_) => {
                    self.too_large(field);
                    None
                }
            },
            Err(_) => {
                self.too_large(field);
                None
            }
        }
    }

    fn too_large(&mut self, field: &Field<'_, '_>) {
        self.report(
            &field.at,
            ErrorKind::BadValue,
            format!("{} is too large", field.at.key),
            format!("write a smaller number, like `{}`", field.example),
        );
    }

    /// The elements of an array of at most `max` (`why` says where the
    /// bound comes from), each with its own key path `key[i]`. A longer
    /// array is one error, before any element is looked at.
    pub(crate) fn array<'t, 'i>(
        &mut self,
        field: &Field<'t, 'i>,
        max: usize,
        why: &str,
    ) -> Option<Vec<Field<'t, 'i>>> {
        let DeValue::Array(array) = field.value else {
            self.wrong_type(field, "an array");
            return None;
        };
        if array.len() > max {
            self.report(
                &field.at,
                ErrorKind::BadValue,
                format!(
                    "{} lists {} entries, more than the {max} Atoll accepts",
                    field.at.key,
                    array.len()
                ),
                format!("list at most {max} ({why})"),
            );
            return None;
        }
        Some(
            array
                .iter()
                .enumerate()
                .map(|(i, v)| Field {
                    at: self.locate(format!("{}[{i}]", field.at.key), v.span()),
                    value: v.get_ref(),
                    example: field.example,
                })
                .collect(),
        )
    }

    /// A string of at most `max` bytes.
    pub(crate) fn short_string(
        &mut self,
        field: &Field<'_, '_>,
        max: usize,
        what: &str,
    ) -> Option<Located<String>> {
        let s = self.string(field)?;
        if s.value.len() > max {
            self.report(
                &s.at,
                ErrorKind::BadValue,
                format!(
                    "{} '{}' is {} bytes long, more than the {max} Atoll accepts",
                    what,
                    shown(&s.value),
                    s.value.len()
                ),
                format!("shorten it to at most {max} bytes"),
            );
            return None;
        }
        Some(s)
    }

    /// An array of at most `max` strings of at most `max_len` bytes each.
    pub(crate) fn strings(
        &mut self,
        field: &Field<'_, '_>,
        max: usize,
        why: &str,
        max_len: usize,
        what: &str,
    ) -> Option<Vec<Located<String>>> {
        let items = self.array(field, max, why)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in &items {
            match self.short_string(item, max_len, what) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A table whose keys the caller interprets (e.g. `access`); entries in
    /// source order, each with the location of its key and of its value.
    pub(crate) fn map<'t, 'i>(
        &mut self,
        field: &Field<'t, 'i>,
    ) -> Option<Vec<(Located<String>, Field<'t, 'i>)>> {
        let DeValue::Table(table) = field.value else {
            self.wrong_type(field, "a table");
            return None;
        };
        Some(
            sorted_entries(table)
                .into_iter()
                .map(|(k, v)| {
                    let path = format!("{}.{}", field.at.key, k.get_ref());
                    let key =
                        Located::new(k.get_ref().to_string(), self.locate(path.clone(), k.span()));
                    let value = Field {
                        at: self.locate(path, v.span()),
                        value: v.get_ref(),
                        example: field.example,
                    };
                    (key, value)
                })
                .collect(),
        )
    }
}

/// A table's entries in source order.
pub(crate) fn sorted_entries<'t, 'i>(
    table: &'t DeTable<'i>,
) -> Vec<(&'t Spanned<DeString<'i>>, &'t Spanned<DeValue<'i>>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    entries
}

/// "a string", "an integer", ...
pub(crate) fn article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

/// A fix for an unknown word: "did you mean 'x'? " when one of `known` is
/// close, then the list of known words: all of them for the language's
/// own words (`max` = `usize::MAX`), else at most `max` (the config's
/// names: see [`super::error::listed`]).
pub(crate) fn suggest(word: &str, known: &[&str], list_intro: &str, max: usize) -> String {
    let list = super::error::listed_upto(known.iter().copied(), max);
    match closest(word, known) {
        Some(k) => format!("did you mean '{}'? {list_intro} are {list}", shown(k)),
        None => format!("{list_intro} are {list}"),
    }
}

/// The word of `known` that `word` is probably a misspelling of: at most
/// two edits away, and fewer edits than the word is long. Words much
/// longer than a name are nobody's misspelling (and would make the edit
/// distance costly).
pub(crate) fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    if word.len() > 2 * super::MAX_NAME_LEN {
        return None;
    }
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|&(d, k)| d <= 2 && d < k.len())
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, for "did you mean" (inputs are short key names).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev
                .get(j)
                .copied()
                .unwrap_or(usize::MAX)
                .saturating_add(usize::from(ca != *cb));
            let delete = prev
                .get(j + 1)
                .copied()
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            let insert = cur.get(j).copied().unwrap_or(usize::MAX).saturating_add(1);
            cur.push(substitute.min(delete).min(insert));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("cpus", "cpus"), 0);
        assert_eq!(edit_distance("cpu", "cpus"), 1);
        assert_eq!(edit_distance("mem", "mem_mib"), 4);
        assert_eq!(edit_distance("", "ab"), 2);
    }

    #[test]
    fn suggest_names_a_close_key_and_lists_all() {
        assert_eq!(
            suggest("cpu", &["name", "cpus"], "the keys of [[node]]", usize::MAX),
            "did you mean 'cpus'? the keys of [[node]] are 'name' and 'cpus'"
        );
        assert_eq!(
            suggest("zzzzzz", &["a", "b", "c"], "the keys", 2),
            "the keys are 'a', 'b', ... (3 in all)"
        );
    }
}
