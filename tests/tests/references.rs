//! Every reference to a Markdown file in the repository's `.md` and `.rs`
//! files names a file that exists, so a reader can follow it.
//!
//! A reference is a word ending in `.md` made of path characters
//! (`vmm/DESIGN.md`, `../../hypervisor/EVENTS.md`, `DESIGN.md`). One with
//! a `/` is looked up next to the file that names it, then from the
//! repository root (the notes write `vmm/DESIGN.md` from anywhere); a bare
//! name in the file's directory or any directory above it, up to the root
//! (a crate's sources say "this crate's `DESIGN.md`"). A path may not leave
//! the repository. Globs (`*/DESIGN.md`) and URLs are not references.
//!
//! Runs on the host, without an emulator: `cargo test -p atoll-tests
//! --test references`.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// Directories that hold no sources: build output, VCS data, fuzzing
/// corpora and crashes.
const SKIPPED_DIRS: &[&str] = &["target", ".git", "corpus", "artifacts", "coverage"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// The `.md` and `.rs` files under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !SKIPPED_DIRS.contains(&name) {
                sources(&path, out);
            }
        } else if name.ends_with(".md") || name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// The Markdown references in `text`, with their 1-based lines.
fn references(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let mut from = 0;
        while let Some(found) = line[from..].find(".md") {
            let end = from + found + ".md".len();
            from = end;
            // `.mdx`, `.md_file`: not a Markdown file name.
            if line[end..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            let start = line[..end]
                .rfind(|c: char| !is_path_char(c))
                .map_or(0, |i| i + 1);
            let word = &line[start..end];
            let before = line[..start].chars().next_back();
            // `*/DESIGN.md` is a glob; `https://...` a URL.
            if matches!(before, Some('*' | ':')) || word.starts_with("//") {
                continue;
            }
            if word.len() > ".md".len() && !word.ends_with("/.md") {
                out.push((line_no + 1, word.to_string()));
            }
        }
    }
    out
}

/// `path` without `.` and `..`, or `None` when it climbs above `root`.
fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix(root).ok()?;
    let mut parts: Vec<Component> = Vec::new();
    for part in relative.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(_) => parts.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// Where `word`, named in a file in `dir`, may point.
fn candidates(root: &Path, dir: &Path, word: &str) -> Vec<PathBuf> {
    if word.starts_with('/') {
        // An absolute path is outside the repository on another machine.
        return Vec::new();
    }
    if word.contains('/') {
        return vec![dir.join(word), root.join(word)];
    }
    dir.ancestors()
        .take_while(|d| d.starts_with(root))
        .map(|d| d.join(word))
        .collect()
}

fn resolves(root: &Path, dir: &Path, word: &str) -> bool {
    candidates(root, dir, word)
        .iter()
        .filter_map(|c| inside(root, c))
        .any(|c| c.is_file())
}

#[test]
fn every_markdown_reference_names_an_existing_file() {
    let root = repo_root();
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")),
        "no sources found under {}",
        root.display()
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    // This file's own examples are not references.
    let this_file = root.join("tests/tests/references.rs");
    for file in files.iter().filter(|f| **f != this_file) {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        let dir = file.parent().unwrap_or(&root);
        for (line, word) in references(&text) {
            checked += 1;
            if !resolves(&root, dir, &word) {
                let shown = file.strip_prefix(&root).unwrap_or(file);
                broken.push(format!("{}:{line}: {word}", shown.display()));
            }
        }
    }
    assert!(checked > 50, "only {checked} references found");
    assert!(
        broken.is_empty(),
        "references to Markdown files that do not exist:\n{}",
        broken.join("\n")
    );
}

#[test]
fn references_are_path_words_ending_in_md() {
    let text = "see vmm/DESIGN.md, (`../x/EVENTS.md`) and [y](../../a-b/c_d.md#s)\n\
                not *.md, */DESIGN.md, https://e.org/r.md, file.mdx, .md\n\
                this crate's `DESIGN.md`.";
    let words: Vec<(usize, String)> = references(text);
    let expected = [
        (1, "vmm/DESIGN.md"),
        (1, "../x/EVENTS.md"),
        (1, "../../a-b/c_d.md"),
        (3, "DESIGN.md"),
    ];
    assert_eq!(
        words,
        expected.map(|(l, w)| (l, w.to_string())).to_vec(),
        "{text}"
    );
}

#[test]
fn a_reference_resolves_only_inside_the_repository() {
    let root = repo_root();
    let vmm_src = root.join("vmm/src");
    assert!(resolves(&root, &vmm_src, "DESIGN.md"), "crate's own note");
    assert!(
        resolves(&root, &vmm_src, "hypervisor/EVENTS.md"),
        "from root"
    );
    assert!(resolves(
        &root,
        &root.join("vmm"),
        "../tests/docs/hostile-inputs.md"
    ));
    assert!(!resolves(&root, &vmm_src, "NO-SUCH-NOTE.md"));
    assert!(
        !resolves(&root, &root, "../cluster/README.md"),
        "left the repo"
    );
    assert!(!resolves(&root, &root, "/etc/x.md"));
}
