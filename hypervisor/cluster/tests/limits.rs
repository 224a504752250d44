//! The parser's resource limits: pathological files of the largest size
//! Atoll reads parse quickly, report a bounded number of short, escaped
//! errors, and fit the hypervisor's boot heap.
//!
//! This test binary counts every allocation (its own global allocator),
//! so the heap a parse needs is measured, not guessed.

use atoll_cluster::config::{
    ClusterConfig, ConfigError, ErrorKind, MAX_CONFIG_BYTES, MAX_ERRORS, MAX_ITEMS, MAX_TABLES,
};
use atoll_cluster::plan::admit::admit;
use atoll_cluster::topology::Topology;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// One test at a time: the counts are global, and tests run on several
/// threads.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The hypervisor's boot heap (hypervisor/src/arch/heap.rs), where the
/// config is parsed and planned at boot.
const BOOT_HEAP: usize = 2 << 20;

/// Peak bytes allocated while admitting `text` (parse, then plan), over
/// what was allocated before; and the errors.
fn measure(text: &str) -> (usize, Duration, Result<usize, Vec<ConfigError>>) {
    let machine = Topology::from_spec("cpus=4,numa=1,mem-mib=512").unwrap();
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let start = Instant::now();
    let result = admit("big.toml", text, &machine).map(|a| a.refused.len());
    let took = start.elapsed();
    let peak = PEAK.load(Ordering::SeqCst) - base;
    (peak, took, result)
}

/// Items (`=`, `,`, `[`, `{` outside strings and comments) and tables in
/// `text`, as Atoll counts them; the pathological texts here have no
/// strings or comments with those characters.
fn items(text: &str) -> usize {
    text.bytes().filter(|b| b"=,[{".contains(b)).count()
}

fn tables(text: &str) -> usize {
    text.lines()
        .filter(|l| l.trim_start().starts_with('['))
        .count()
        + text.bytes().filter(|&b| b == b'{').count()
}

/// `unit` repeated while the text stays within the limits Atoll puts on a
/// file (bytes, items, tables), then padded with a comment to the byte
/// limit: the largest text of that shape the parser is given.
fn fill(head: &str, unit: &str, tail: &str) -> String {
    let fits = |n: usize| {
        head.len() + n * unit.len() + tail.len() + 2 <= MAX_CONFIG_BYTES
            && items(head) + n * items(unit) + items(tail) <= MAX_ITEMS
            && tables(head) + n * tables(unit) + tables(tail) <= MAX_TABLES
    };
    let mut n = 0;
    while fits(n + 1) {
        n += 1;
    }
    let mut text = format!("{head}{}{tail}#", unit.repeat(n));
    while text.len() < MAX_CONFIG_BYTES - 1 {
        text.push('.');
    }
    text + "\n"
}

const NODE: &str = "[[node]]\nname = \"a\"\ncpus = [0, 1]\nmem_mib = 64\n";

/// A [[vm]] with every key.
const FULL_VM: &str = "[[vm]]\nname=\"v\"\nnode=\"a\"\nvcpus=1\nmem_mib=2\nkernel=\"k\"\ninitrd=\"i\"\ncmdline=\"c\"\nmodules=[\"m\"]\ndevices=[\"uart\"]\npin=[0]\non_crash=\"stop\"\nsignal=[{vm=\"v\",notifications=[0]}]\nchannels=[\"c\"]\n";

/// The planner benchmark's cluster: `n` nodes, a ring of channels, IPIs
/// both ways around it.
fn ring(n: usize) -> String {
    let mut text = String::new();
    for k in 0..n {
        text += &format!("[[node]]\nname = \"n{k}\"\ncount = 1\nmem_mib = 16\n");
    }
    for k in 0..n {
        let next = (k + 1) % n;
        text += &format!(
            "[[channel]]\nname = \"n{k}-n{next}\"\nsize_kib = 64\naccess = {{ n{k} = \"rw\", n{next} = \"r\" }}\n"
        );
        for (from, to) in [(k, next), (next, k)] {
            text += &format!("[[ipi]]\nfrom = \"n{from}\"\nto = \"n{to}\"\nnotifications = [0]\n");
        }
    }
    text
}

fn pathological() -> Vec<(&'static str, String)> {
    vec![
        (
            "one list of zeros",
            fill(
                "[[node]]\nname = \"a\"\nmem_mib = 64\ncpus = [",
                "0,",
                "]\n",
            ),
        ),
        ("nested empty arrays", fill("x = [", "[],", "]\n")),
        ("empty inline tables", fill("x = [", "{},", "]\n")),
        ("empty [[vm]] tables", fill(NODE, "[[vm]]\n", "")),
        (
            "[[node]] tables",
            fill("", "[[node]]\nname = \"n\"\ncount = 1\nmem_mib = 9\n", ""),
        ),
        (
            "bad references",
            fill(
                NODE,
                "[[ipi]]\nfrom = \"x\"\nto = \"y\"\nnotifications = [0]\n",
                "",
            ),
        ),
        (
            "one long name",
            fill("[[node]]\nname = \"", "x", "\"\ncount = 1\nmem_mib = 64\n"),
        ),
        ("many keys", fill("", "k = 1\n", "")),
        ("many short keys", fill("", "k=1\n", "")),
        ("dotted keys", fill("", "a.b.c.d.e.f = 1\n", "")),
        ("many lines", fill("", "\n", "")),
        ("escaped strings", fill("x = \"", "\\t", "\"\n")),
        ("full [[vm]] tables", fill(NODE, FULL_VM, "")),
        ("64-node ring", ring(64)),
    ]
}

#[test]
fn the_largest_files_fit_the_boot_heap_and_parse_quickly() {
    let _alone = alone();
    let mut report = Vec::new();
    for (what, text) in pathological() {
        assert!(text.len() <= MAX_CONFIG_BYTES, "{what}");
        let (peak, took, result) = measure(&text);
        report.push(format!(
            "{what}: {} bytes, {} items, {} tables: {peak} bytes at peak, {took:?}",
            text.len(),
            items(&text),
            tables(&text)
        ));
        // 5/8 of the boot heap: the rest holds the machine description,
        // the plan and the allocator's fragmentation.
        assert!(
            peak <= BOOT_HEAP * 5 / 8,
            "{what}: {peak} bytes\n{}",
            report.join("\n")
        );
        // Generous: these take milliseconds; quadratic work took seconds.
        assert!(took < Duration::from_secs(5), "{what}: {took:?}");
        if let Err(errors) = result {
            assert!(
                errors.len() <= MAX_ERRORS + 1,
                "{what}: {} errors",
                errors.len()
            );
        }
    }
    println!("{}", report.join("\n"));
}

#[test]
fn deep_nesting_parses_on_a_small_stack() {
    let _alone = alone();
    // The boot CPU parses on its boot stack: nesting must not recurse
    // per level without bound.
    for (open, close) in [("[", "]"), ("{a=", "}")] {
        let depth = MAX_CONFIG_BYTES / open.len();
        let text = format!("x = {}{}", open.repeat(depth), close.repeat(depth));
        let text = text.get(..MAX_CONFIG_BYTES).unwrap_or(&text).to_string();
        let worker = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                ClusterConfig::parse("deep.toml", &text)
                    .map(|_| ())
                    .unwrap_err()
                    .len()
            })
            .unwrap();
        let errors = worker.join().expect("no stack overflow");
        assert!((1..=MAX_ERRORS + 1).contains(&errors));
    }
}

fn parse_errors(text: &str) -> Vec<ConfigError> {
    ClusterConfig::parse("c.toml", text).unwrap_err()
}

#[test]
fn a_file_over_the_limit_is_one_error_before_any_parsing() {
    let _alone = alone();
    // A 100,000-entry CPU list (the duplicate check was quadratic: 6.4 s)
    // and a 50 MB name: refused by size, at once.
    let list: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
    let text = format!(
        "{NODE}[[node]]\nname = \"b\"\nmem_mib = 8\ncpus = [{}]\n",
        list.join(",")
    );
    let name = format!("[[node]]\nname = \"{}\"\n", "x".repeat(50 << 20));
    for text in [text, name] {
        let start = Instant::now();
        let errors = parse_errors(&text);
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].kind, ErrorKind::File);
        assert!(errors[0].message.ends_with(&format!(
            "bytes, more than the {MAX_CONFIG_BYTES} Atoll reads"
        )));
    }
}

#[test]
fn a_long_list_is_one_error_and_duplicates_are_found_in_any_order() {
    let _alone = alone();
    let list: Vec<String> = (0..1000).map(|i| (i % 300).to_string()).collect();
    let errors = parse_errors(&format!(
        "[[node]]\nname = \"a\"\nmem_mib = 64\ncpus = [{}]\n",
        list.join(",")
    ));
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "c.toml:4:8: node[0].cpus lists 1000 entries, more than the 256 Atoll accepts; list at most 256 (Atoll uses at most 256 CPUs)"
        ]
    );
    // The largest list Atoll takes, every CPU listed twice (reversed).
    let mut cpus: Vec<u32> = (0..128).collect();
    cpus.extend((0..128).rev());
    let list: Vec<String> = cpus.iter().map(u32::to_string).collect();
    let errors = parse_errors(&format!(
        "[[node]]\nname = \"a\"\nmem_mib = 64\ncpus = [{}]\n",
        list.join(",")
    ));
    assert_eq!(errors.len(), MAX_ERRORS + 1);
    assert!(
        errors[0]
            .message
            .starts_with("CPU 127 is listed twice in node 'a'")
    );
    assert_eq!(
        errors[MAX_ERRORS].to_string(),
        "c.toml: and 108 more errors; correct the errors above and check again"
    );
}

#[test]
fn many_bad_references_print_a_bounded_report() {
    let _alone = alone();
    // 150 nodes, then as many bad references as fit.
    let nodes: String = (0..150)
        .map(|i| format!("[[node]]\nname=\"n{i}\"\ncount=1\nmem_mib=9\n"))
        .collect();
    let text = fill(
        &nodes,
        "[[ipi]]\nfrom=\"x\"\nto=\"n1\"\nnotifications=[0]\n",
        "",
    );
    let errors = parse_errors(&text);
    assert_eq!(errors.len(), MAX_ERRORS + 1);
    assert_eq!(
        errors[0].message,
        "ipi[0] comes from node 'x', which does not exist"
    );
    // The 256 node names are not listed in full.
    assert_eq!(
        errors[0].fix,
        "the nodes are 'n0', 'n1', 'n2', 'n3', 'n4', 'n5', 'n6', 'n7', ... (150 in all)"
    );
    let printed: usize = errors.iter().map(|e| e.to_string().len() + 1).sum();
    assert!(printed < 4000, "{printed} bytes");
}

#[test]
fn names_are_escaped_and_cut_in_messages() {
    let _alone = alone();
    // A terminal title sequence: ESC ] 0 ; ... BEL, as TOML escapes.
    let errors =
        parse_errors("[[node]]\nname = \"a\\u001b]0;owned\\u0007\"\ncount = 1\nmem_mib = 64\n");
    let line = errors[0].to_string();
    assert!(line.contains("'a\\u{1b}]0;owned\\u{7}'"), "{line}");
    assert!(!line.chars().any(char::is_control), "{line}");
    let long = "y".repeat(6000);
    let errors = parse_errors(&format!(
        "[[node]]\nname = \"{long}\"\ncount = 1\nmem_mib = 64\n"
    ));
    let line = errors[0].to_string();
    assert!(
        line.contains(&format!("'{}... (6000 characters)'", "y".repeat(40))),
        "{line}"
    );
    assert!(line.len() < 300, "{line}");
}

#[test]
fn keyword_values_are_escaped_in_messages() {
    let _alone = alone();
    for key in ["platform", "on_crash"] {
        let errors = parse_errors(&format!(
            "[[node]]\nname = \"a\"\ncount = 1\nmem_mib = 64\n\
             [[vm]]\nname = \"v\"\nnode = \"a\"\nvcpus = 1\nmem_mib = 4\n\
             kernel = \"k\"\n{key} = \"pc\\u001b]0;owned\\u0007\"\n"
        ));
        let line = errors
            .iter()
            .map(ToString::to_string)
            .find(|l| l.contains(key))
            .unwrap_or_default();
        assert!(line.contains("\\u{1b}]0;owned\\u{7}"), "{key}: {line}");
        assert!(!line.chars().any(char::is_control), "{line}");
    }
}
