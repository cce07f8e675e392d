//! Fault injection for the crash and disk-full tests (tests/kill_resume.rs): the environment
//! variable `INTERP_KIT_FAULT` makes a chosen moment of a run kill the process or fail with an
//! io error, so that a test can hit "during a Parquet part write" or "during a LoRA run"
//! deterministically instead of by luck. Unset (always, outside those tests), every check is one
//! load of a cached `None`.
//!
//! Syntax: comma-separated rules `<point>[@<substring>]:<n>[:<action>]`:
//! - `point`: `write` — [`crate::base::io::write_atomic_with`], after the temporary file is
//!   filled and before it is synced and renamed (the subject is the destination path);
//!   `lora_step` — after each optimizer step of LoRA training, before the step's callback (the
//!   subject is the step number).
//! - `@substring`: only hits whose subject contains it count (`write@cell-`, `write@manifest.json`).
//! - `n`: the rule fires at its n-th counted hit (1-based), once.
//! - `action`: `abort` (default: `std::process::abort()`, no destructor or buffer flush runs, like
//!   a kill), `enospc` (the hit returns the io error "No space left on device"), `eacces`
//!   ("Permission denied").
//!
//! Example: `INTERP_KIT_FAULT=write@cell-:3` kills the process while the third sweep part is written.
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The environment variable read (once, at the first check).
pub const ENV: &str = "INTERP_KIT_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Errno(i32),
}

#[derive(Debug)]
struct Rule {
    point: String,
    filter: Option<String>,
    n: usize,
    action: Action,
    hits: AtomicUsize,
}

fn parse_rule(s: &str) -> Result<Rule, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(format!("{ENV} rule {s:?}: expected <point>[@<substring>]:<n>[:abort|enospc|eacces]"));
    }
    let (point, filter) = match parts[0].split_once('@') {
        Some((p, f)) => (p, Some(f.to_string())),
        None => (parts[0], None),
    };
    if !matches!(point, "write" | "lora_step") {
        return Err(format!("{ENV} rule {s:?}: unknown point {point:?} (write, lora_step)"));
    }
    let n: usize = parts[1].parse().ok().filter(|n| *n >= 1).ok_or_else(|| format!("{ENV} rule {s:?}: n must be an integer >= 1"))?;
    let action = match parts.get(2).copied().unwrap_or("abort") {
        "abort" => Action::Abort,
        "enospc" => Action::Errno(libc::ENOSPC),
        "eacces" => Action::Errno(libc::EACCES),
        a => return Err(format!("{ENV} rule {s:?}: unknown action {a:?} (abort, enospc, eacces)")),
    };
    Ok(Rule { point: point.to_string(), filter, n, action, hits: AtomicUsize::new(0) })
}

fn rules() -> &'static Option<Vec<Rule>> {
    static RULES: OnceLock<Option<Vec<Rule>>> = OnceLock::new();
    RULES.get_or_init(|| {
        let spec = std::env::var(ENV).ok().filter(|s| !s.trim().is_empty())?;
        match spec.split(',').map(|r| parse_rule(r.trim())).collect::<Result<Vec<_>, _>>() {
            Ok(r) => Some(r),
            // A typo must not pass for "no fault": the test that set it would check nothing.
            Err(e) => panic!("{e}"),
        }
    })
}

/// A fault check at `point` for `subject` (a path, a step number). Returns the injected io error
/// if a rule with an io action fires; aborts the process if one with `abort` fires.
pub fn hit(point: &str, subject: &str) -> io::Result<()> {
    let Some(rules) = rules() else { return Ok(()) };
    for r in rules {
        if r.point != point || r.filter.as_deref().is_some_and(|f| !subject.contains(f)) {
            continue;
        }
        if r.hits.fetch_add(1, Ordering::SeqCst) + 1 == r.n {
            match r.action {
                Action::Abort => {
                    eprintln!("{ENV}: aborting at {point} hit {} ({subject})", r.n);
                    std::process::abort();
                }
                Action::Errno(e) => return Err(io::Error::from_raw_os_error(e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_bad_ones_are_named() {
        let r = parse_rule("write@cell-:3:enospc").unwrap();
        assert_eq!((r.point.as_str(), r.filter.as_deref(), r.n, r.action), ("write", Some("cell-"), 3, Action::Errno(libc::ENOSPC)));
        let r = parse_rule("lora_step:2").unwrap();
        assert_eq!((r.filter, r.n, r.action), (None, 2, Action::Abort));
        for (bad, word) in [("write", "expected"), ("flush:1", "flush"), ("write:0", "n must"), ("write:x", "n must"), ("write:1:boom", "boom")] {
            let e = parse_rule(bad).unwrap_err();
            assert!(e.contains(word), "{bad}: {e}");
        }
    }
}
