//! Value checks several tables share: bounds on integers, keywords, CPU
//! indices and notification numbers.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::config::error::{ErrorKind, Located, shown};
use crate::config::read::{Field, Reader, Table};
use crate::config::schema::{CPUS, CPUS_WHY, Key};
use crate::config::{MAX_MEM_MIB, NOTIFICATIONS};
use crate::topology::CpuIndex;

/// A located integer narrowed to `u32`.
pub(super) fn to_u32(r: &mut Reader<'_>, n: Located<u64>, what: &str) -> Option<Located<u32>> {
    at_most(r, n, u64::from(u32::MAX), what, "")
        .and_then(|n| Some(Located::new(u32::try_from(n.value).ok()?, n.at)))
}

/// A located integer that is at most `max`; else an error that names the
/// bound (and, in `why`, where it comes from).
pub(super) fn at_most(
    r: &mut Reader<'_>,
    n: Located<u64>,
    max: u64,
    what: &str,
    why: &str,
) -> Option<Located<u64>> {
    if n.value <= max {
        return Some(n);
    }
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    };
    r.report(
        &n.at,
        ErrorKind::BadValue,
        format!("{what} {} is too large", n.value),
        format!("the largest {what} Atoll accepts is {max}{why}"),
    );
    None
}

pub(super) fn read_cpus(
    r: &mut Reader<'_>,
    items: &[Field<'_, '_>],
) -> Option<Vec<Located<CpuIndex>>> {
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match r
            .integer(item)
            .and_then(|n| at_most(r, n, CPUS - 1, "CPU index", CPUS_WHY))
            .and_then(|n| to_u32(r, n, "CPU index"))
        {
            Some(n) => out.push(Located::new(CpuIndex(n.value), n.at)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

pub(super) fn read_notifications(
    r: &mut Reader<'_>,
    field: &Field<'_, '_>,
    path: &str,
) -> Option<Vec<Located<u8>>> {
    let items = r.array(
        field,
        usize::from(NOTIFICATIONS),
        "there are 64 notifications, 0 to 63",
    )?;
    if items.is_empty() {
        r.report(
            &field.at,
            ErrorKind::BadValue,
            format!("{path} grants no notifications"),
            "list at least one, like `notifications = [0]`".into(),
        );
        return None;
    }
    let mut out: Vec<Located<u8>> = Vec::with_capacity(items.len());
    let mut ok = true;
    let mut seen = 0u64;
    for item in &items {
        let Some(n) = r.integer(item) else {
            ok = false;
            continue;
        };
        match u8::try_from(n.value) {
            Ok(v) if v < NOTIFICATIONS => {
                let bit = 1u64.checked_shl(u32::from(v)).unwrap_or(0);
                if seen & bit != 0 {
                    r.report(
                        &n.at,
                        ErrorKind::Duplicate,
                        format!("notification {v} is listed twice in {path}"),
                        "list each notification once".into(),
                    );
                    ok = false;
                } else {
                    seen |= bit;
                    out.push(Located::new(v, n.at));
                }
            }
            _ => {
                r.report(
                    &n.at,
                    ErrorKind::BadValue,
                    format!("notification {} is out of range", n.value),
                    format!(
                        "notifications are numbered 0 to {} (the bits of the doorbell word)",
                        NOTIFICATIONS - 1
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// A key whose value is one of a few words (`words`: the word and what
/// it means), located; any other word is a `BadValue` error saying
/// `KEY "VALUE" <mistake>` (the value escaped, as every echoed value is),
/// with `fix`.
pub(super) fn read_keyword<T: Copy>(
    r: &mut Reader<'_>,
    t: &Table<'_, '_>,
    key: &'static Key,
    words: &[(&str, T)],
    mistake: &str,
    fix: &str,
) -> Result<Option<Located<T>>, ()> {
    let Some(f) = r.optional(t, key) else {
        return Ok(None);
    };
    let s = r.string(&f).ok_or(())?;
    if let Some(&(_, value)) = words.iter().find(|(word, _)| *word == s.value) {
        return Ok(Some(Located::new(value, s.at)));
    }
    let message = format!("{} \"{}\" {mistake}", key.name, shown(&s.value));
    r.report(&s.at, ErrorKind::BadValue, message, fix.into());
    Err(())
}

pub(super) fn at_least_one(
    r: &mut Reader<'_>,
    n: Located<u64>,
    message: &str,
    fix: &str,
) -> Option<Located<u64>> {
    if n.value == 0 {
        r.report(&n.at, ErrorKind::BadValue, message.into(), fix.into());
        None
    } else {
        Some(n)
    }
}

/// A size in MiB (`key` of `who`: a node's `mem_mib` or `kernel_mib`, a
/// VM's `mem_mib`) is at most [`MAX_MEM_MIB`]; else the error, and false.
pub(super) fn within_mem_limit(r: &mut Reader<'_>, n: &Located<u64>, key: &str, who: &str) -> bool {
    if n.value <= MAX_MEM_MIB {
        return true;
    }
    r.report(
        &n.at,
        ErrorKind::BadValue,
        format!(
            "{key} {} of {who} is above Atoll's limit of {MAX_MEM_MIB} MiB",
            n.value
        ),
        format!("set {key} to {MAX_MEM_MIB} or less"),
    );
    false
}
