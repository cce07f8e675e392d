//! Loaders under fuzzing (issue 23 §1): every file format the kit reads, started from small valid
//! files (the tiny fixtures, or files the kit's own writers make in a temp dir) and mutated — bit
//! flips, truncation at every region, length/count/offset fields set to huge or off-by-one values,
//! JSON and TOML values of the wrong type, removed fields, broken chat templates — must end in
//! `Ok` or in an `Err` whose message (`{:#}`) is non-empty and names the file. Never a panic (each
//! case runs under `catch_unwind` and a panic fails the test with the case), never an allocation of
//! absurd size (this binary's global allocator refuses any single allocation over
//! [`ALLOC_LIMIT`] and prints the case, after which the process aborts unless the loader copes
//! with the refusal, which still fails the case: the inputs are all under 1 MB, so a loader that
//! tries it believed a length field without comparing it to the file size), never an endless loop (a
//! watchdog aborts the run, printing the case, if one case runs for [`CASE_TIMEOUT_S`] s).
//!
//! Cases are seeded (a fixed proptest seed unless `PROPTEST_RNG_SEED` is set) and their number per
//! loader is [`CASES`] unless `PROPTEST_CASES` is set; `scripts/fuzz_long.sh` runs many more.
//! Each loader's test first checks that its unmutated input loads, and ends by checking that some
//! cases were rejected (otherwise the mutations did not reach the loader) and printing the tally.
//! `FUZZ_SURVEY=1` records every failing case (grouped by where it fails) and reports them all at
//! the end of each test instead of stopping at the first; `FUZZ_PRINT_ERRORS=1` prints every error.
//!
//! The regression tests at the end pin each defect the fuzzing found (the commit messages and
//! issue 23's notes list them), and the last two check the `dump`, `judge_code` and `introspect`
//! examples on a corrupt model: in process through their `run(args)`, and as built binaries when
//! `cargo test --workspace` has built them.
mod common;

use anyhow::Result;
use candle_core::{DType, Device};
use interp_kit::prelude::*;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::Value as Json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// Cases per loader in the default test run (see the module docs).
const CASES: u32 = 3000;
/// The largest single allocation a loader may make on these (sub-megabyte) inputs.
const ALLOC_LIMIT: usize = 1 << 30;
/// A case that runs this long is taken for an endless loop.
const CASE_TIMEOUT_S: u64 = 120;

// ---------------------------------------------------------------------------------------------
// Harness: allocation guard, watchdog, case runner
// ---------------------------------------------------------------------------------------------

thread_local! {
    /// The running case's label, readable from the allocator without allocating.
    static LABEL: Cell<([u8; 240], usize)> = const { Cell::new(([0; 240], 0)) };
}
/// Allocations refused so far (any is a failure).
static REFUSED: AtomicUsize = AtomicUsize::new(0);

struct Guard;

fn write_stderr(b: &[u8]) {
    // SAFETY: writing a valid buffer to fd 2; no allocation.
    unsafe {
        libc::write(2, b.as_ptr().cast(), b.len());
    }
}

fn refuse(size: usize) {
    REFUSED.fetch_add(1, Ordering::SeqCst);
    let mut digits = [0u8; 24];
    let mut i = digits.len();
    let mut n = size;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    write_stderr(b"\nfuzz_loaders: REFUSED an allocation of ");
    write_stderr(&digits[i..]);
    write_stderr(b" bytes (a length field believed without checking it against the file size?) in case: ");
    let _ = LABEL.try_with(|c| {
        let (buf, n) = c.get();
        write_stderr(&buf[..n]);
    });
    write_stderr(b"\n");
}

// SAFETY: forwards to the system allocator; refusing (null) is allowed by the GlobalAlloc contract.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > ALLOC_LIMIT {
            refuse(l.size());
            return std::ptr::null_mut();
        }
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.size() > ALLOC_LIMIT {
            refuse(l.size());
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_LIMIT {
            refuse(new_size);
            return std::ptr::null_mut();
        }
        System.realloc(p, l, new_size)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static GLOBAL: Guard = Guard;

/// Cases in flight, per thread, for the watchdog.
static INFLIGHT: Mutex<Option<HashMap<std::thread::ThreadId, (Instant, String)>>> = Mutex::new(None);

thread_local! {
    /// Where the last panic on this thread happened (`file:line`), set by the hook below.
    static PANIC_AT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// `FUZZ_SURVEY=1`: record every failing case (grouped by where it fails) and keep going, to list
/// all defects in one run instead of stopping at the first; the test still fails at the end.
fn survey() -> bool {
    std::env::var_os("FUZZ_SURVEY").is_some_and(|v| v != "0")
}

/// Failures seen in survey mode: kind -> (count, first case).
static SURVEY: Mutex<Option<std::collections::BTreeMap<String, (usize, String)>>> = Mutex::new(None);

fn record(kind: String, case: String) {
    let mut g = SURVEY.lock().unwrap_or_else(|e| e.into_inner());
    let e = g.get_or_insert_with(Default::default).entry(kind).or_insert((0, case));
    e.0 += 1;
}

fn start_watchdog() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let _ = PANIC_AT.try_with(|p| *p.borrow_mut() = at);
            let in_case = LABEL.try_with(|c| c.get().1 > 0).unwrap_or(false);
            if !(survey() && in_case) {
                default(info);
            }
        }));
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            let guard = INFLIGHT.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = guard.as_ref() {
                for (start, label) in m.values() {
                    if start.elapsed().as_secs() >= CASE_TIMEOUT_S {
                        eprintln!("fuzz_loaders: case ran {} s, taken for an endless loop: {label}", start.elapsed().as_secs());
                        std::process::abort();
                    }
                }
            }
        });
    });
}

fn set_label(label: &str) {
    let mut buf = [0u8; 240];
    let n = label.len().min(buf.len());
    buf[..n].copy_from_slice(&label.as_bytes()[..n]);
    LABEL.with(|c| c.set((buf, n)));
    let mut g = INFLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(HashMap::new).insert(std::thread::current().id(), (Instant::now(), label.to_string()));
}

fn clear_label() {
    LABEL.with(|c| c.set(([0; 240], 0)));
    let mut g = INFLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = g.as_mut() {
        m.remove(&std::thread::current().id());
    }
}

/// Ok / Err counts of one loader.
#[derive(Default)]
struct Tally {
    ok: Cell<usize>,
    err: Cell<usize>,
}

impl Tally {
    fn report(&self, what: &str) {
        let (ok, err) = (self.ok.get(), self.err.get());
        println!("{what}: {} cases, {ok} Ok, {err} Err", ok + err);
        if survey() {
            let g = SURVEY.lock().unwrap_or_else(|e| e.into_inner());
            let m = g.as_ref().cloned().unwrap_or_default();
            for (kind, (n, case)) in &m {
                println!("  SURVEY {what}: {n} x {kind}\n      first: {}", case.chars().take(400).collect::<String>());
            }
            assert!(m.is_empty(), "{what}: {} kinds of failure (survey mode)", m.len());
        }
        assert!(err > 0, "{what}: no case was rejected: the mutations do not reach the loader");
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "<non-string panic>".into())
}

/// Runs `load` on case `label`: a panic, a refused allocation, or an error that is empty or does
/// not name `file` (its file name) fails the case.
fn check<T>(tally: &Tally, label: &str, file: &Path, load: impl FnOnce() -> Result<T>) -> Result<(), TestCaseError> {
    start_watchdog();
    set_label(label);
    let before = REFUSED.load(Ordering::SeqCst);
    let r = catch_unwind(AssertUnwindSafe(load));
    // (The panic hook ran inside the case, while the label was set.)
    clear_label();
    if REFUSED.load(Ordering::SeqCst) != before {
        return Err(TestCaseError::fail(format!("{label}: the loader asked for an absurd allocation (see stderr)")));
    }
    let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let out = match r {
        Err(p) => {
            let at = PANIC_AT.with(|a| a.borrow().clone());
            let text = panic_text(&*p);
            if survey() {
                record(format!("PANIC at {at}: {}", text.chars().take(100).collect::<String>()), label.to_string());
            }
            Err(TestCaseError::fail(format!("{label}: PANIC at {at}: {text}")))
        }
        Ok(Ok(_)) => {
            tally.ok.set(tally.ok.get() + 1);
            Ok(())
        }
        Ok(Err(e)) => {
            tally.err.set(tally.err.get() + 1);
            let msg = format!("{e:#}");
            if std::env::var_os("FUZZ_PRINT_ERRORS").is_some() {
                println!("ERR {label} => {msg}");
            }
            if msg.trim().is_empty() {
                if survey() {
                    record("EMPTY error message".into(), label.to_string());
                }
                Err(TestCaseError::fail(format!("{label}: empty error message")))
            } else if !msg.contains(&name) {
                if survey() {
                    let shape: String = msg.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).take(140).collect();
                    record(format!("NO FILE NAME ({name}): {shape}"), format!("{label} => {msg}"));
                }
                Err(TestCaseError::fail(format!("{label}: the error does not name {name}: {msg}")))
            } else {
                Ok(())
            }
        }
    };
    if survey() && out.is_err() {
        return Ok(());
    }
    out
}

/// Seeded, `PROPTEST_CASES` / `PROPTEST_RNG_SEED` overridable, no regression files. `loaders`:
/// how many loaders (or seed files of one loader) share the cases, so each gets [`CASES`].
fn runner(salt: u64, loaders: u32) -> TestRunner {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = CASES;
    }
    c.cases = c.cases.saturating_mul(loaders);
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(0x1f_2023 ^ salt);
    }
    c.failure_persistence = None;
    if std::env::var_os("PROPTEST_MAX_SHRINK_ITERS").is_none() {
        c.max_shrink_iters = 400;
    }
    TestRunner::new(c)
}

fn run_cases<S: Strategy>(salt: u64, loaders: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = runner(salt, loaders).run(&strategy, test) {
        panic!("{e}");
    }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write(p: &Path, b: impl AsRef<[u8]>) {
    std::fs::write(p, b).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
}

/// A directory in `tmp` holding symlinks to every file of `src` (a mutated file then replaces its link).
fn linked_copy(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        let _ = std::fs::remove_file(&to);
        std::os::unix::fs::symlink(e.path(), &to).unwrap();
    }
}

fn replace(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    write(&p, bytes);
    p
}

// ---------------------------------------------------------------------------------------------
// Binary mutations over a known field layout
// ---------------------------------------------------------------------------------------------

/// An integer field of a binary format (little endian).
#[derive(Clone, Debug)]
struct Field {
    off: usize,
    width: usize,
    what: String,
    /// Counts, lengths, types, dims, offsets of the structure (not e.g. one token's string length).
    major: bool,
}

/// Where a binary file's fields and region boundaries are.
#[derive(Clone, Debug, Default)]
struct BinLayout {
    fields: Vec<Field>,
    /// The metadata region (header, footer) where mutations are most telling.
    meta: Range<usize>,
    /// Offsets where a truncation cuts between two regions.
    bounds: Vec<usize>,
    /// GGUF: each tensor info's name, the offset of its `n_dims` field and `n_dims`.
    tensors: Vec<(String, usize, usize)>,
}

#[derive(Clone, Debug)]
enum BinMut {
    /// Flip bit `.1` of a byte anywhere.
    Flip(Index, u8),
    /// Flip a bit in the metadata region.
    FlipMeta(Index, u8),
    /// Overwrite a byte of the metadata region.
    SetMeta(Index, u8),
    /// Set a structural field to a nasty value.
    Major(Index, Index),
    /// Set any field to a nasty value.
    Field(Index, Index),
    /// Cut the file at a random offset.
    Truncate(Index),
    /// Cut the file at a region boundary (just before, at, or just after it).
    TruncateAt(Index, i8),
    /// Delete up to `.1` bytes of the metadata region.
    Delete(Index, u8),
    /// Insert bytes into the metadata region.
    Insert(Index, Vec<u8>),
}

fn bin_mut() -> impl Strategy<Value = BinMut> {
    prop_oneof![
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| BinMut::Flip(i, b)),
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| BinMut::FlipMeta(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| BinMut::SetMeta(i, b)),
        6 => (any::<Index>(), any::<Index>()).prop_map(|(i, v)| BinMut::Major(i, v)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, v)| BinMut::Field(i, v)),
        1 => any::<Index>().prop_map(BinMut::Truncate),
        2 => (any::<Index>(), -2i8..=2).prop_map(|(i, d)| BinMut::TruncateAt(i, d)),
        1 => (any::<Index>(), 1u8..16).prop_map(|(i, n)| BinMut::Delete(i, n)),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..9)).prop_map(|(i, b)| BinMut::Insert(i, b)),
    ]
}

fn bin_muts() -> impl Strategy<Value = Vec<BinMut>> {
    proptest::collection::vec(bin_mut(), 1..4)
}

fn nasty_int(sel: &Index, orig: u64, file_len: u64) -> u64 {
    let vals = [
        0,
        1,
        2,
        3,
        4,
        5,
        8,
        13,
        31,
        255,
        256,
        65535,
        1 << 31,
        u32::MAX as u64,
        1 << 32,
        1 << 40,
        1 << 48,
        1 << 62,
        u64::MAX / 2,
        u64::MAX - 1,
        u64::MAX,
        file_len,
        file_len + 1,
        file_len.saturating_sub(1),
        orig.wrapping_add(1),
        orig.wrapping_sub(1),
        orig.wrapping_mul(2),
        orig ^ (1 << 63),
    ];
    vals[sel.index(vals.len())]
}

fn put_int(b: &mut [u8], off: usize, width: usize, v: u64) {
    let bytes = v.to_le_bytes();
    let end = (off + width).min(b.len());
    if off < end {
        b[off..end].copy_from_slice(&bytes[..end - off]);
    }
}

fn get_int(b: &[u8], off: usize, width: usize) -> u64 {
    let mut x = [0u8; 8];
    let end = (off + width).min(b.len());
    if off < end {
        x[..end - off].copy_from_slice(&b[off..end]);
    }
    u64::from_le_bytes(x)
}

fn in_range(r: &Range<usize>, i: &Index) -> usize {
    if r.is_empty() {
        r.start
    } else {
        r.start + i.index(r.len())
    }
}

/// Applies `muts` to `b` (offsets of `layout` refer to the unmutated file, so structural field
/// mutations come first); returns a description with the resolved offsets.
fn apply_bin(b: &mut Vec<u8>, layout: &BinLayout, muts: &[BinMut]) -> String {
    let mut muts: Vec<&BinMut> = muts.iter().collect();
    // Length-changing mutations last, so the others hit the offsets they were meant for.
    muts.sort_by_key(|m| matches!(m, BinMut::Truncate(_) | BinMut::TruncateAt(..) | BinMut::Delete(..) | BinMut::Insert(..)));
    let mut desc = Vec::new();
    let file_len = b.len() as u64;
    let majors: Vec<&Field> = layout.fields.iter().filter(|f| f.major).collect();
    for m in muts {
        let meta = layout.meta.start.min(b.len())..layout.meta.end.min(b.len());
        match m {
            BinMut::Flip(i, bit) if !b.is_empty() => {
                let at = i.index(b.len());
                b[at] ^= 1 << bit;
                desc.push(format!("flip byte {at} bit {bit}"));
            }
            BinMut::FlipMeta(i, bit) if !meta.is_empty() => {
                let at = in_range(&meta, i);
                b[at] ^= 1 << bit;
                desc.push(format!("flip meta byte {at} bit {bit}"));
            }
            BinMut::SetMeta(i, v) if !meta.is_empty() => {
                let at = in_range(&meta, i);
                b[at] = *v;
                desc.push(format!("set meta byte {at} = {v}"));
            }
            BinMut::Major(fi, vi) | BinMut::Field(fi, vi) => {
                let pool: Vec<&Field> = if matches!(m, BinMut::Major(..)) { majors.clone() } else { layout.fields.iter().collect() };
                if pool.is_empty() {
                    continue;
                }
                let f = pool[fi.index(pool.len())];
                let orig = get_int(b, f.off, f.width);
                let v = nasty_int(vi, orig, file_len);
                put_int(b, f.off, f.width, v);
                desc.push(format!("{} @{} = {v}", f.what, f.off));
            }
            BinMut::Truncate(i) => {
                let at = i.index(b.len() + 1);
                b.truncate(at);
                desc.push(format!("truncate at {at}"));
            }
            BinMut::TruncateAt(i, d) if !layout.bounds.is_empty() => {
                let at = (layout.bounds[i.index(layout.bounds.len())] as i64 + *d as i64).clamp(0, b.len() as i64) as usize;
                b.truncate(at);
                desc.push(format!("truncate at boundary {at}"));
            }
            BinMut::Delete(i, n) if !meta.is_empty() => {
                let at = in_range(&meta, i);
                let end = (at + *n as usize).min(b.len());
                b.drain(at..end);
                desc.push(format!("delete {at}..{end}"));
            }
            BinMut::Insert(i, bytes) if !meta.is_empty() => {
                let at = in_range(&meta, i);
                b.splice(at..at, bytes.iter().copied());
                desc.push(format!("insert {bytes:?} at {at}"));
            }
            _ => {}
        }
    }
    desc.join("; ")
}

/// Every boundary of `layout` as a truncation point (and one byte either side), plus the empty file.
fn truncations(layout: &BinLayout, len: usize) -> Vec<usize> {
    let mut v: Vec<usize> = vec![0, 1, 4, 8, len.saturating_sub(1)];
    for &b in &layout.bounds {
        v.extend([b.saturating_sub(1), b, b + 1]);
    }
    v.retain(|&x| x < len);
    v.sort();
    v.dedup();
    v
}

// ---------------------------------------------------------------------------------------------
// Format walkers (test-side, to know where the fields are)
// ---------------------------------------------------------------------------------------------

struct Rd<'a> {
    b: &'a [u8],
    pos: usize,
    fields: Vec<Field>,
}

impl Rd<'_> {
    fn int(&mut self, width: usize, what: &str, major: bool) -> u64 {
        let v = get_int(self.b, self.pos, width);
        self.fields.push(Field { off: self.pos, width, what: what.to_string(), major });
        self.pos += width;
        v
    }
    fn string(&mut self, what: &str, major: bool) -> String {
        let n = self.int(8, what, major) as usize;
        let s = String::from_utf8_lossy(&self.b[self.pos..self.pos + n]).to_string();
        self.pos += n;
        s
    }
    /// One GGUF metadata value of type `ty`.
    fn gguf_value(&mut self, ty: u32, major: bool) -> Option<u64> {
        match ty {
            0 | 1 | 7 => self.pos += 1,
            2 | 3 => self.pos += 2,
            4 | 5 => return Some(self.int(4, "u32 value", major)),
            6 => self.pos += 4,
            10 | 11 => return Some(self.int(8, "u64 value", major)),
            12 => self.pos += 8,
            8 => {
                self.string("string value length", major);
            }
            9 => {
                let et = self.int(4, "array element type", true) as u32;
                let n = self.int(8, "array length", true);
                for _ in 0..n {
                    self.gguf_value(et, false);
                }
            }
            other => panic!("unknown GGUF value type {other}"),
        }
        None
    }
}

/// The fields of a GGUF v2/v3 file (counts, key lengths, value types, array lengths, tensor
/// names, dims, dtypes, offsets) and its region boundaries.
fn gguf_layout(b: &[u8]) -> BinLayout {
    let mut r = Rd { b, pos: 4, fields: vec![] };
    let version = r.int(4, "version", true);
    assert!(version >= 2, "test walker reads GGUF v2/v3 only");
    let n_t = r.int(8, "tensor_count", true);
    let n_kv = r.int(8, "metadata_kv_count", true);
    let mut bounds = vec![4, 8, 16, 24];
    let mut align = 32u64;
    for _ in 0..n_kv {
        bounds.push(r.pos);
        let key = r.string("key length", true);
        let ty = r.int(4, "value type", true) as u32;
        bounds.push(r.pos);
        let v = r.gguf_value(ty, true);
        if key == "general.alignment" {
            align = v.unwrap_or(32);
        }
    }
    let mut offsets = vec![];
    let mut tensors = vec![];
    for _ in 0..n_t {
        bounds.push(r.pos);
        let name = r.string("tensor name length", true);
        tensors.push((name, r.pos, get_int(b, r.pos, 4) as usize));
        let nd = r.int(4, "n_dims", true);
        for _ in 0..nd {
            r.int(8, "dim", true);
        }
        r.int(4, "ggml dtype", true);
        offsets.push(r.int(8, "tensor offset", true));
    }
    let head_end = r.pos;
    let data = (head_end as u64).div_ceil(align) * align;
    bounds.push(head_end);
    bounds.push(data as usize);
    for o in offsets {
        bounds.push((data + o) as usize);
        bounds.push((data + o + 3) as usize);
    }
    bounds.push(b.len());
    BinLayout { fields: r.fields, meta: 0..head_end, bounds, tensors }
}

/// A safetensors file: the header length (the only integer field) and the JSON header region.
fn safetensors_layout(b: &[u8]) -> BinLayout {
    let n = get_int(b, 0, 8) as usize;
    let h: Json = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let mut bounds = vec![8, 8 + n];
    for (k, v) in h.as_object().unwrap() {
        if k != "__metadata__" {
            let offs = v["data_offsets"].as_array().unwrap();
            bounds.push(8 + n + offs[0].as_u64().unwrap() as usize);
            bounds.push(8 + n + offs[1].as_u64().unwrap() as usize);
        }
    }
    BinLayout { fields: vec![Field { off: 0, width: 8, what: "header length".into(), major: true }], meta: 0..8 + n, bounds, ..Default::default() }
}

/// A Parquet file: the footer length field and the footer (file metadata) region.
fn parquet_layout(b: &[u8]) -> BinLayout {
    let n = b.len();
    let flen = get_int(b, n - 8, 4) as usize;
    let start = n - 8 - flen;
    BinLayout {
        fields: vec![Field { off: n - 8, width: 4, what: "footer length".into(), major: true }],
        meta: start..n,
        bounds: vec![4, start, n - 8, n - 4],
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// JSON and TOML mutations
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    At(usize),
}

fn json_paths(v: &Json, cur: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(cur.clone());
    match v {
        Json::Object(m) => {
            for (k, x) in m {
                cur.push(Seg::Key(k.clone()));
                json_paths(x, cur, out);
                cur.pop();
            }
        }
        Json::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                cur.push(Seg::At(i));
                json_paths(x, cur, out);
                cur.pop();
            }
        }
        _ => {}
    }
}

fn json_at<'a>(v: &'a mut Json, path: &[Seg]) -> Option<&'a mut Json> {
    let mut cur = v;
    for s in path {
        cur = match s {
            Seg::Key(k) => cur.get_mut(k.as_str())?,
            Seg::At(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

fn nasty_json(sel: &Index) -> Json {
    let vals: Vec<Json> = vec![
        Json::Null,
        true.into(),
        false.into(),
        0.into(),
        (-1).into(),
        1.into(),
        2.into(),
        3.into(),
        0.5.into(),
        (-0.5).into(),
        1e308.into(),
        (-1e308).into(),
        u64::MAX.into(),
        i64::MIN.into(),
        (1u64 << 32).into(),
        (1u64 << 40).into(),
        "".into(),
        "x".into(),
        "\u{0}".into(),
        "../../../nonexistent".into(),
        "float64".into(),
        "llama".into(),
        "F32".into(),
        "I64".into(),
        Json::Array(vec![]),
        serde_json::json!([null]),
        serde_json::json!([0, 0, 0]),
        serde_json::json!([1u64 << 40, 1u64 << 40]),
        serde_json::json!([-1, 7]),
        serde_json::json!({}),
        serde_json::json!({"x": 1}),
    ];
    vals[sel.index(vals.len())].clone()
}

#[derive(Clone, Debug)]
enum TextMut {
    /// Flip one bit of one byte (may break UTF-8).
    Flip(Index, u8),
    /// Cut the text.
    Truncate(Index),
    /// Delete up to `.1` bytes.
    Delete(Index, u8),
    /// Insert a syntax character.
    Insert(Index, Index),
}

fn text_mut() -> impl Strategy<Value = TextMut> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| TextMut::Flip(i, b)),
        any::<Index>().prop_map(TextMut::Truncate),
        (any::<Index>(), 1u8..8).prop_map(|(i, n)| TextMut::Delete(i, n)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, c)| TextMut::Insert(i, c)),
    ]
}

fn apply_text(b: &mut Vec<u8>, m: &TextMut) -> String {
    let ins: [&[u8]; 14] = [b"{", b"}", b"[", b"]", b"\"", b",", b":", b"\\", b"\0", b"\xff", b"\n", b"=", b"{{", b"{%"];
    match m {
        TextMut::Flip(i, bit) if !b.is_empty() => {
            let at = i.index(b.len());
            b[at] ^= 1 << bit;
            format!("flip byte {at} bit {bit}")
        }
        TextMut::Truncate(i) => {
            let at = i.index(b.len() + 1);
            b.truncate(at);
            format!("truncate at {at}")
        }
        TextMut::Delete(i, n) if !b.is_empty() => {
            let at = i.index(b.len());
            let end = (at + *n as usize).min(b.len());
            b.drain(at..end);
            format!("delete {at}..{end}")
        }
        TextMut::Insert(i, c) => {
            let at = i.index(b.len() + 1);
            let s = ins[c.index(ins.len())];
            b.splice(at..at, s.iter().copied());
            format!("insert {:?} at {at}", String::from_utf8_lossy(s))
        }
        _ => String::new(),
    }
}

#[derive(Clone, Debug)]
enum TreeMut {
    /// Remove a node (an object member or array element), chosen among the first two levels or anywhere.
    Remove(Index, bool),
    /// Replace a node with a nasty value.
    Replace(Index, bool, Index),
}

fn tree_mut() -> impl Strategy<Value = TreeMut> {
    prop_oneof![
        1 => (any::<Index>(), any::<bool>()).prop_map(|(i, s)| TreeMut::Remove(i, s)),
        2 => (any::<Index>(), any::<bool>(), any::<Index>()).prop_map(|(i, s, v)| TreeMut::Replace(i, s, v)),
    ]
}

#[derive(Clone, Debug)]
enum DocMut {
    Tree(Vec<TreeMut>),
    Text(Vec<TextMut>),
}

fn doc_mut() -> impl Strategy<Value = DocMut> {
    prop_oneof![
        3 => proptest::collection::vec(tree_mut(), 1..4).prop_map(DocMut::Tree),
        1 => proptest::collection::vec(text_mut(), 1..4).prop_map(DocMut::Text),
    ]
}

fn pick_path(paths: &[Vec<Seg>], i: &Index, shallow: bool) -> Option<Vec<Seg>> {
    let pool: Vec<&Vec<Seg>> = paths.iter().filter(|p| !shallow || p.len() <= 2).collect();
    if pool.is_empty() {
        return None;
    }
    Some(pool[i.index(pool.len())].clone())
}

fn mutate_json_tree(v: &mut Json, muts: &[TreeMut]) -> String {
    let mut desc = vec![];
    for m in muts {
        let mut paths = vec![];
        json_paths(v, &mut vec![], &mut paths);
        match m {
            TreeMut::Remove(i, shallow) => {
                let paths: Vec<Vec<Seg>> = paths.into_iter().filter(|p| !p.is_empty()).collect();
                let Some(mut p) = pick_path(&paths, i, *shallow) else { continue };
                let last = p.pop().unwrap();
                let Some(parent) = json_at(v, &p) else { continue };
                match (parent, &last) {
                    (Json::Object(m), Seg::Key(k)) => {
                        m.remove(k);
                    }
                    (Json::Array(a), Seg::At(i)) => {
                        a.remove(*i);
                    }
                    _ => continue,
                }
                desc.push(format!("remove {p:?}/{last:?}"));
            }
            TreeMut::Replace(i, shallow, val) => {
                let Some(p) = pick_path(&paths, i, *shallow) else { continue };
                let new = nasty_json(val);
                if let Some(x) = json_at(v, &p) {
                    desc.push(format!("{p:?} = {new}"));
                    *x = new;
                }
            }
        }
    }
    desc.join("; ")
}

/// A mutated JSON document: structural mutations re-serialised, or text mutations of the original.
fn mutate_json(orig: &[u8], m: &DocMut) -> (Vec<u8>, String) {
    match m {
        DocMut::Tree(ms) => {
            let mut v: Json = serde_json::from_slice(orig).unwrap();
            let d = mutate_json_tree(&mut v, ms);
            (serde_json::to_vec_pretty(&v).unwrap(), d)
        }
        DocMut::Text(ms) => {
            let mut b = orig.to_vec();
            let d: Vec<String> = ms.iter().map(|t| apply_text(&mut b, t)).collect();
            (b, d.join("; "))
        }
    }
}

fn toml_to_json(v: &toml::Value) -> Json {
    serde_json::to_value(v).unwrap()
}

fn nasty_toml(sel: &Index) -> toml::Value {
    use toml::Value as T;
    let vals = vec![
        T::Integer(0),
        T::Integer(-1),
        T::Integer(1),
        T::Integer(i64::MAX),
        T::Integer(i64::MIN),
        T::Integer(1 << 40),
        T::Float(0.0),
        T::Float(-0.5),
        T::Float(1e300),
        T::Float(f64::NAN),
        T::Float(f64::INFINITY),
        T::Float(f64::NEG_INFINITY),
        T::String(String::new()),
        T::String("x".into()),
        T::String("../../nonexistent".into()),
        T::String("0..999".into()),
        T::Boolean(true),
        T::Array(vec![]),
        T::Array(vec![T::Integer(-1)]),
        T::Array(vec![T::Float(2.5), T::Float(0.0)]),
        T::Array(vec![T::String("x".into())]),
        T::Table(toml::Table::new()),
    ];
    vals[sel.index(vals.len())].clone()
}

fn toml_at<'a>(v: &'a mut toml::Value, path: &[Seg]) -> Option<&'a mut toml::Value> {
    let mut cur = v;
    for s in path {
        cur = match (cur, s) {
            (toml::Value::Table(t), Seg::Key(k)) => t.get_mut(k)?,
            (toml::Value::Array(a), Seg::At(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn mutate_toml(orig: &str, m: &DocMut) -> (Vec<u8>, String) {
    match m {
        DocMut::Tree(ms) => {
            let mut v = toml::Value::Table(toml::from_str::<toml::Table>(orig).unwrap());
            let mut desc = vec![];
            for tm in ms {
                let mut paths = vec![];
                json_paths(&toml_to_json(&v), &mut vec![], &mut paths);
                match tm {
                    TreeMut::Remove(i, shallow) => {
                        let paths: Vec<Vec<Seg>> = paths.into_iter().filter(|p| !p.is_empty()).collect();
                        let Some(mut p) = pick_path(&paths, i, *shallow) else { continue };
                        let last = p.pop().unwrap();
                        match (toml_at(&mut v, &p), &last) {
                            (Some(toml::Value::Table(t)), Seg::Key(k)) => {
                                t.remove(k);
                            }
                            (Some(toml::Value::Array(a)), Seg::At(i)) => {
                                a.remove(*i);
                            }
                            _ => continue,
                        }
                        desc.push(format!("remove {p:?}/{last:?}"));
                    }
                    TreeMut::Replace(i, shallow, val) => {
                        let Some(p) = pick_path(&paths, i, *shallow) else { continue };
                        if p.is_empty() {
                            continue;
                        }
                        let new = nasty_toml(val);
                        if let Some(x) = toml_at(&mut v, &p) {
                            desc.push(format!("{p:?} = {new}"));
                            *x = new;
                        }
                    }
                }
            }
            // A table may not follow plain values in TOML's text form; to_string orders them.
            let text = match toml::to_string(&v) {
                Ok(t) => t,
                Err(_) => return (orig.as_bytes().to_vec(), "unserialisable mutation skipped".into()),
            };
            (text.into_bytes(), desc.join("; "))
        }
        DocMut::Text(ms) => {
            let mut b = orig.as_bytes().to_vec();
            let d: Vec<String> = ms.iter().map(|t| apply_text(&mut b, t)).collect();
            (b, d.join("; "))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF: models (header, metadata, tensor infos, data offsets) and control vectors
// ---------------------------------------------------------------------------------------------

fn load_gguf_model(p: &Path) -> Result<Model> {
    let m = Model::from_gguf(p, &Device::Cpu, DType::F32)?;
    // The tokenizer is read (or its failure recorded) while loading; asking for it must not panic.
    let _ = m.tok().map(|t| t.encode("Hi there"));
    Ok(m)
}

fn load_gguf_tokenizer(p: &Path) -> Result<Tokenizer> {
    let t = Tokenizer::from_gguf_file(p)?;
    let _ = t.encode("Hi there");
    Ok(t)
}

/// A GGUF model (and its tokenizer alone) under binary mutations; the gpt2 f16 and llama Q8_0
/// fixtures, truncated at every region first.
#[test]
fn gguf_model_files() {
    let tmp = tempfile::tempdir().unwrap();
    let seeds: Vec<(String, Vec<u8>)> = [("gpt2", "model-f16.gguf"), ("llama", "model-q8_0.gguf")]
        .iter()
        .map(|(a, f)| (format!("{a}/{f}"), std::fs::read(fixtures().join("gguf").join(a).join(f)).unwrap()))
        .collect();
    let layouts: Vec<BinLayout> = seeds.iter().map(|(_, b)| gguf_layout(b)).collect();
    let path = tmp.path().join("model.gguf");
    let tally = Tally::default();
    for ((name, b), layout) in seeds.iter().zip(&layouts) {
        write(&path, b);
        load_gguf_model(&path).unwrap_or_else(|e| panic!("{name} does not load unmutated: {e:#}"));
        for cut in truncations(layout, b.len()) {
            write(&path, &b[..cut]);
            let label = format!("{name} truncated at {cut}");
            check(&tally, &label, &path, || load_gguf_model(&path)).unwrap_or_else(|e| panic!("{e}"));
            check(&tally, &label, &path, || load_gguf_tokenizer(&path)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    run_cases(1, 1, (any::<Index>(), bin_muts()), |(seed, muts)| {
        let k = seed.index(seeds.len());
        let mut b = seeds[k].1.clone();
        let desc = apply_bin(&mut b, &layouts[k], &muts);
        write(&path, &b);
        let label = format!("{}: {desc}", seeds[k].0);
        check(&tally, &label, &path, || load_gguf_model(&path))?;
        check(&tally, &label, &path, || load_gguf_tokenizer(&path))
    });
    tally.report("gguf model files");
}

fn control_vector() -> ControlVector {
    let dirs = (1..4).map(|l| {
        let v: Vec<f32> = (0..8).map(|i| ((i * 7 + l * 3) % 5) as f32 - 2.0).collect();
        Direction::new(v).at(HookPoint::resid_post(l))
    });
    ControlVector::from_directions("tiny", dirs).unwrap()
}

/// Control vectors: the llama.cpp GGUF the kit exports (and a repeng-style fixture), and the kit's
/// safetensors form of a control vector and of a single direction.
#[test]
fn control_vector_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cv = control_vector();
    let (g, st, dir) = (tmp.path().join("cv.gguf"), tmp.path().join("cv.safetensors"), tmp.path().join("dir.safetensors"));
    cv.export_gguf(&g).unwrap();
    cv.save(&st).unwrap();
    cv.get(2).unwrap().save(&dir).unwrap();
    let seeds: Vec<(String, Vec<u8>, u8)> = vec![
        ("kit gguf".into(), std::fs::read(&g).unwrap(), 0),
        ("repeng gguf".into(), std::fs::read(fixtures().join("control_vector/repeng_style.gguf")).unwrap(), 0),
        ("control vector safetensors".into(), std::fs::read(&st).unwrap(), 1),
        ("direction safetensors".into(), std::fs::read(&dir).unwrap(), 2),
    ];
    let layouts: Vec<BinLayout> =
        seeds.iter().map(|(_, b, kind)| if *kind == 0 { gguf_layout(b) } else { safetensors_layout(b) }).collect();
    let tally = Tally::default();
    let load = |kind: u8, p: &Path| -> Result<usize> {
        Ok(match kind {
            0 => ControlVector::import_gguf(p)?.len(),
            1 => ControlVector::load(p)?.len(),
            _ => Direction::load(p)?.dim(),
        })
    };
    let path = |kind: u8| if kind == 0 { g.clone() } else { tmp.path().join("x.safetensors") };
    for ((name, b, kind), layout) in seeds.iter().zip(&layouts) {
        let p = path(*kind);
        write(&p, b);
        load(*kind, &p).unwrap_or_else(|e| panic!("{name} does not load unmutated: {e:#}"));
        for cut in truncations(layout, b.len()) {
            write(&p, &b[..cut]);
            check(&tally, &format!("{name} truncated at {cut}"), &p, || load(*kind, &p)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let strat = (any::<Index>(), prop_oneof![3 => bin_muts().prop_map(Ok), 1 => doc_mut().prop_map(Err)]);
    run_cases(2, 4, strat, |(seed, m)| {
        let k = seed.index(seeds.len());
        let (name, orig, kind) = &seeds[k];
        let (b, desc) = match &m {
            Ok(muts) => {
                let mut b = orig.clone();
                let d = apply_bin(&mut b, &layouts[k], muts);
                (b, d)
            }
            Err(dm) if *kind != 0 => mutate_safetensors_header(orig, dm),
            Err(_) => return Ok(()),
        };
        let p = path(*kind);
        write(&p, &b);
        check(&tally, &format!("{name}: {desc}"), &p, || load(*kind, &p))
    });
    tally.report("control vector files");
}

/// The safetensors file with its JSON header mutated (and the header length rewritten to fit).
fn mutate_safetensors_header(orig: &[u8], m: &DocMut) -> (Vec<u8>, String) {
    let n = get_int(orig, 0, 8) as usize;
    let (h, desc) = mutate_json(&orig[8..8 + n], m);
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&h);
    b.extend_from_slice(&orig[8 + n..]);
    (b, format!("header: {desc}"))
}

// ---------------------------------------------------------------------------------------------
// HF directories: safetensors, config.json, shard index, tokenizer files, chat templates
// ---------------------------------------------------------------------------------------------

fn load_hf(dir: &Path) -> Result<Model> {
    Model::from_hf_dir(dir, &Device::Cpu, DType::F32)
}

/// `model.safetensors` of the tiny GPT-2 and Llama (binary and JSON-header mutations: header
/// length, dtype / shape / offsets that disagree with the data, offsets past the end, removed
/// tensors), and the Qwen3 fixture's shard index.
#[test]
fn safetensors_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let archs = ["gpt2", "llama"];
    let seeds: Vec<Vec<u8>> = archs.iter().map(|a| std::fs::read(common::fixture_dir(a).join("model.safetensors")).unwrap()).collect();
    let layouts: Vec<BinLayout> = seeds.iter().map(|b| safetensors_layout(b)).collect();
    let dirs: Vec<PathBuf> = archs.iter().map(|a| tmp.path().join(a)).collect();
    let tally = Tally::default();
    for ((a, d), (b, layout)) in archs.iter().zip(&dirs).zip(seeds.iter().zip(&layouts)) {
        linked_copy(&common::fixture_dir(a), d);
        let p = replace(d, "model.safetensors", b);
        load_hf(d).unwrap_or_else(|e| panic!("{a} does not load unmutated: {e:#}"));
        for cut in truncations(layout, b.len()) {
            write(&p, &b[..cut]);
            check(&tally, &format!("{a} truncated at {cut}"), &p, || load_hf(d)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let strat = (any::<Index>(), prop_oneof![1 => bin_muts().prop_map(Ok), 2 => doc_mut().prop_map(Err)]);
    run_cases(3, 1, strat, |(k, m)| {
        let k = k.index(archs.len());
        let (b, desc) = match &m {
            Ok(muts) => {
                let mut b = seeds[k].clone();
                let d = apply_bin(&mut b, &layouts[k], muts);
                (b, d)
            }
            Err(dm) => mutate_safetensors_header(&seeds[k], dm),
        };
        let p = replace(&dirs[k], "model.safetensors", &b);
        check(&tally, &format!("{}: {desc}", archs[k]), &p, || load_hf(&dirs[k]))
    });
    // The sharded Qwen3: its index names the shards.
    let q = tmp.path().join("qwen3");
    linked_copy(&common::fixture_dir("qwen3"), &q);
    let index = std::fs::read(common::fixture_dir("qwen3").join("model.safetensors.index.json")).unwrap();
    run_cases(4, 1, doc_mut(), |m| {
        let (b, desc) = mutate_json(&index, &m);
        let p = replace(&q, "model.safetensors.index.json", &b);
        check(&tally, &format!("qwen3 index: {desc}"), &p, || load_hf(&q))
    });
    tally.report("safetensors checkpoints");
}

/// `config.json` of every architecture: wrong types, missing fields, huge or zero sizes, unknown
/// `model_type`.
#[test]
fn hf_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let archs = ["qwen2", "qwen3", "llama", "gemma2", "gpt_neox", "gpt2"];
    let seeds: Vec<Vec<u8>> = archs.iter().map(|a| std::fs::read(common::fixture_dir(a).join("config.json")).unwrap()).collect();
    let dirs: Vec<PathBuf> = archs.iter().map(|a| tmp.path().join(a)).collect();
    for (a, d) in archs.iter().zip(&dirs) {
        linked_copy(&common::fixture_dir(a), d);
        load_hf(d).unwrap_or_else(|e| panic!("{a} does not load unmutated: {e:#}"));
    }
    let tally = Tally::default();
    run_cases(5, 1, (any::<Index>(), doc_mut()), |(k, m)| {
        let k = k.index(archs.len());
        let (b, desc) = mutate_json(&seeds[k], &m);
        let p = replace(&dirs[k], "config.json", &b);
        check(&tally, &format!("{} config.json: {desc}", archs[k]), &p, || load_hf(&dirs[k]))
    });
    tally.report("config.json");
}

/// Templates that raise, loop, recurse, index out of range or do not compile.
const BAD_TEMPLATES: &[&str] = &[
    "{{ raise_exception('this template refuses') }}",
    "{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}",
    "{{ messages[1000].content }}",
    "{{ messages[0].content.no_such_method() }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for i in range(1000000000) %}x{% endfor %}",
    "{{ 'abc' * 1000000000 }}",
    "{{ ",
    "{% for m in messages %}",
    "{% if %}{% endif %}",
    "{{ (messages | length) / 0 }}",
    "{{ 1 // 0 }}",
    "{{ undefined_thing.attr }}",
    "{% set x = namespace(a=1) %}{{ x.a.b.c }}",
    "{{ messages | tojson }}",
    "",
];

fn load_tokenizer(dir: &Path) -> Result<usize> {
    let t = Tokenizer::from_hf_dir(dir)?;
    let _ = t.encode("Hello there, 12 tokens.")?;
    if t.chat_template().is_some() {
        t.render_chat(&Chat::new().system("Be brief.").user("Hi").assistant("Hello."), false)?;
        t.render_chat(&Chat::new().user("Hi"), true)?;
    }
    Ok(t.vocab_size())
}

#[derive(Clone, Debug)]
enum TokMut {
    /// A JSON or text mutation of one of the directory's JSON files.
    File(Index, DocMut),
    /// `chat_template` in `tokenizer_config.json` set to a bad template.
    Template(Index),
    /// A bad `chat_template.jinja` beside the other files.
    Jinja(Index),
}

/// `tokenizer.json`, `tokenizer_config.json`, `generation_config.json` and chat templates (in
/// the config and as `chat_template.jinja`) of four tokenizer directories; a loaded tokenizer
/// also encodes and renders a chat.
#[test]
fn tokenizer_files() {
    let tmp = tempfile::tempdir().unwrap();
    let srcs = [fixtures().join("byte_chat"), common::fixture_dir("llama"), common::fixture_dir("gpt2"), fixtures().join("chat/qwen3")];
    let dirs: Vec<PathBuf> = (0..srcs.len()).map(|i| tmp.path().join(format!("tok{i}"))).collect();
    let mut files: Vec<Vec<(String, Vec<u8>)>> = vec![];
    for (s, d) in srcs.iter().zip(&dirs) {
        linked_copy(s, d);
        load_tokenizer(d).unwrap_or_else(|e| panic!("{} does not load unmutated: {e:#}", s.display()));
        let mut fs = vec![];
        for n in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
            if let Ok(b) = std::fs::read(s.join(n)) {
                fs.push((n.to_string(), b));
            }
        }
        files.push(fs);
    }
    let tally = Tally::default();
    let strat = (
        any::<Index>(),
        prop_oneof![
            4 => (any::<Index>(), doc_mut()).prop_map(|(i, m)| TokMut::File(i, m)),
            1 => any::<Index>().prop_map(TokMut::Template),
            1 => any::<Index>().prop_map(TokMut::Jinja),
        ],
    );
    run_cases(6, 1, strat, |(k, m)| {
        let k = k.index(dirs.len());
        let d = &dirs[k];
        let (p, desc) = match &m {
            TokMut::File(f, dm) => {
                let (name, orig) = &files[k][f.index(files[k].len())];
                let (b, desc) = mutate_json(orig, dm);
                (replace(d, name, &b), format!("{name}: {desc}"))
            }
            TokMut::Template(t) => {
                let cfg = d.join("tokenizer_config.json");
                let mut v: Json = match std::fs::read(&cfg) {
                    Ok(b) => serde_json::from_slice(&b).unwrap(),
                    Err(_) => serde_json::json!({}),
                };
                let tpl = BAD_TEMPLATES[t.index(BAD_TEMPLATES.len())];
                v["chat_template"] = tpl.into();
                (replace(d, "tokenizer_config.json", &serde_json::to_vec(&v).unwrap()), format!("chat_template {tpl:?}"))
            }
            TokMut::Jinja(t) => {
                let tpl = BAD_TEMPLATES[t.index(BAD_TEMPLATES.len())];
                (replace(d, "chat_template.jinja", tpl.as_bytes()), format!("chat_template.jinja {tpl:?}"))
            }
        };
        let r = check(&tally, &format!("{}: {desc}", srcs[k].display()), &p, || load_tokenizer(d));
        // Back to the unmutated directory for the next case.
        let _ = std::fs::remove_file(d.join("chat_template.jinja"));
        linked_copy(&srcs[k], d);
        r
    });
    tally.report("tokenizer files");
}

// ---------------------------------------------------------------------------------------------
// PEFT adapters
// ---------------------------------------------------------------------------------------------

/// `adapter_config.json` and `adapter_model.safetensors` of PEFT's own adapter (fixture) and of
/// one the kit saved, loaded for the tiny Qwen2.
#[test]
fn peft_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny("qwen2");
    let kit = tmp.path().join("kit_src");
    LoraAdapter::new(&model, &LoraConfig::qv(4, 8.0).with_seed(3)).unwrap().save(&kit).unwrap();
    let srcs = [fixtures().join("peft/qv"), kit];
    let dirs: Vec<PathBuf> = (0..srcs.len()).map(|i| tmp.path().join(format!("ad{i}"))).collect();
    let mut cfgs = vec![];
    let mut weights = vec![];
    for (s, d) in srcs.iter().zip(&dirs) {
        linked_copy(s, d);
        LoraAdapter::load(d, &model).unwrap_or_else(|e| panic!("{} does not load unmutated: {e:#}", s.display()));
        cfgs.push(std::fs::read(s.join("adapter_config.json")).unwrap());
        weights.push(std::fs::read(s.join("adapter_model.safetensors")).unwrap());
    }
    let layouts: Vec<BinLayout> = weights.iter().map(|b| safetensors_layout(b)).collect();
    let tally = Tally::default();
    for (k, d) in dirs.iter().enumerate() {
        for cut in truncations(&layouts[k], weights[k].len()) {
            let p = replace(d, "adapter_model.safetensors", &weights[k][..cut]);
            check(&tally, &format!("adapter {k} truncated at {cut}"), &p, || LoraAdapter::load(d, &model)).unwrap_or_else(|e| panic!("{e}"));
        }
        linked_copy(&srcs[k], d);
    }
    let strat = (any::<Index>(), prop_oneof![2 => doc_mut().prop_map(|m| (0u8, Ok(m))), 1 => doc_mut().prop_map(|m| (1u8, Ok(m))), 1 => bin_muts().prop_map(|b| (1u8, Err(b)))]);
    run_cases(7, 1, strat, |(k, (which, m))| {
        let k = k.index(dirs.len());
        let d = &dirs[k];
        let (p, desc) = match (which, &m) {
            (0, Ok(dm)) => {
                let (b, desc) = mutate_json(&cfgs[k], dm);
                (replace(d, "adapter_config.json", &b), format!("adapter_config.json: {desc}"))
            }
            (_, Ok(dm)) => {
                let (b, desc) = mutate_safetensors_header(&weights[k], dm);
                (replace(d, "adapter_model.safetensors", &b), desc)
            }
            (_, Err(bm)) => {
                let mut b = weights[k].clone();
                let desc = apply_bin(&mut b, &layouts[k], bm);
                (replace(d, "adapter_model.safetensors", &b), desc)
            }
        };
        let r = check(&tally, &format!("adapter {k}: {desc}"), &p, || LoraAdapter::load(d, &model));
        linked_copy(&srcs[k], d);
        r
    });
    tally.report("PEFT adapters");
}

// ---------------------------------------------------------------------------------------------
// Study TOML configs
// ---------------------------------------------------------------------------------------------

fn load_study_config(name: &str, p: &Path) -> Result<()> {
    use interp_kit::studies::*;
    match name {
        "steering_reliability.toml" | "steering_reliability_tiny_neox.toml" => {
            steering_reliability::config::StudyConfig::load(p)?;
        }
        "inoculation_caps.toml" => {
            inoculation_caps::InoculationConfig::load(p)?;
        }
        "insecure_code.toml" => {
            insecure_code::InsecureConfig::load(p)?;
        }
        "introspection.toml" => {
            introspection::IntrospectionConfig::load(p)?;
        }
        "trait_monitoring.toml" => {
            trait_monitoring::TraitConfig::load(p)?;
        }
        other => panic!("no loader for {other}"),
    }
    Ok(())
}

/// Every study config of `configs/`, in a temp `configs/` beside links to the repository's
/// `datasets/` and `tests/` (their relative paths resolve as in the repository).
#[test]
fn study_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let cdir = tmp.path().join("configs");
    std::fs::create_dir_all(&cdir).unwrap();
    for d in ["datasets", "tests"] {
        std::os::unix::fs::symlink(repo().join(d), tmp.path().join(d)).unwrap();
    }
    let mut seeds: Vec<(String, String)> = vec![];
    for e in std::fs::read_dir(repo().join("configs")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".toml") {
            seeds.push((name, std::fs::read_to_string(e.path()).unwrap()));
        }
    }
    seeds.sort();
    assert!(seeds.len() >= 6, "expected the six study configs, found {}", seeds.len());
    for (name, text) in &seeds {
        let p = replace(&cdir, name, text.as_bytes());
        load_study_config(name, &p).unwrap_or_else(|e| panic!("{name} does not load unmutated: {e:#}"));
    }
    let tally = Tally::default();
    run_cases(8, 6, (any::<Index>(), doc_mut()), |(k, m)| {
        let (name, text) = &seeds[k.index(seeds.len())];
        let (b, desc) = mutate_toml(text, &m);
        let p = replace(&cdir, name, &b);
        check(&tally, &format!("{name}: {desc}"), &p, || load_study_config(name, &p))
    });
    tally.report("study configs");
}

// ---------------------------------------------------------------------------------------------
// JSONL records
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum LineMut {
    /// A JSON mutation of one record.
    Record(Index, Vec<TreeMut>),
    /// Text mutations of the whole file.
    Text(Vec<TextMut>),
    /// A record duplicated (same id) or dropped.
    Duplicate(Index),
    Drop(Index),
}

fn line_mut() -> impl Strategy<Value = LineMut> {
    prop_oneof![
        4 => (any::<Index>(), proptest::collection::vec(tree_mut(), 1..3)).prop_map(|(i, t)| LineMut::Record(i, t)),
        2 => proptest::collection::vec(text_mut(), 1..4).prop_map(LineMut::Text),
        1 => any::<Index>().prop_map(LineMut::Duplicate),
        1 => any::<Index>().prop_map(LineMut::Drop),
    ]
}

fn mutate_jsonl(orig: &str, m: &LineMut) -> (Vec<u8>, String) {
    let mut lines: Vec<String> = orig.lines().map(str::to_string).collect();
    let desc = match m {
        LineMut::Record(i, ts) => {
            let k = i.index(lines.len());
            let mut v: Json = serde_json::from_str(&lines[k]).unwrap();
            let d = mutate_json_tree(&mut v, ts);
            lines[k] = serde_json::to_string(&v).unwrap();
            format!("line {}: {d}", k + 1)
        }
        LineMut::Text(ts) => {
            let mut b = orig.as_bytes().to_vec();
            let d: Vec<String> = ts.iter().map(|t| apply_text(&mut b, t)).collect();
            return (b, d.join("; "));
        }
        LineMut::Duplicate(i) => {
            let k = i.index(lines.len());
            let l = lines[k].clone();
            lines.push(l);
            format!("line {} duplicated", k + 1)
        }
        LineMut::Drop(i) => {
            let k = i.index(lines.len());
            lines.remove(k);
            format!("line {} dropped", k + 1)
        }
    };
    let mut s = lines.join("\n");
    s.push('\n');
    (s.into_bytes(), desc)
}

/// Prompt records (`text::records`), chat and code-template records (`text::chat_jsonl`), each
/// written by the kit's writers, read by every reader that takes them.
#[test]
fn jsonl_records() {
    use interp_kit::text::chat_jsonl::*;
    use interp_kit::text::records::*;
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let prompts: Vec<PromptRecord> = (0..4)
        .map(|i| PromptRecord {
            id: format!("p{i}"),
            prompt: format!("Question number {i}?"),
            meta: PromptMeta { family: "f".into(), style: "direct".into(), ..Default::default() },
        })
        .collect();
    write_jsonl(p("prompts.jsonl"), &prompts).unwrap();
    let chats: Vec<ChatRecord> =
        (0..3).map(|i| ChatRecord::prompt_completion(Some("Be brief."), &format!("Say {i}."), &format!("{i}."))).collect();
    write_chat_jsonl(p("chats.jsonl"), &chats).unwrap();
    let code: Vec<CodePrompt> = (0..3)
        .map(|i| {
            let mut c = CodePrompt::new(format!("Task {i}: add numbers"), "def add(a, b):\n    ## fill\n");
            c.completion = Some("    return a + b\n".into());
            c
        })
        .collect();
    write_code_prompts(p("code.jsonl"), &code).unwrap();
    let seeds: Vec<(&str, String)> =
        ["prompts.jsonl", "chats.jsonl", "code.jsonl"].iter().map(|n| (*n, std::fs::read_to_string(p(n)).unwrap())).collect();
    let read = |kind: usize, path: &Path| -> Result<usize> {
        Ok(match kind {
            0 => read_jsonl(path)?.len(),
            1 => read_chat_jsonl(path)?.iter().map(|c| c.user_prompt().map(|_| 1).unwrap_or(0)).sum(),
            2 => read_code_prompts(path)?.len(),
            _ => read_any_jsonl(path)?.iter().map(|r| r.prompt().map(|_| 1).unwrap_or(0)).sum(),
        })
    };
    for (i, (n, _)) in seeds.iter().enumerate() {
        read(i, &p(n)).unwrap();
        if i > 0 {
            read(3, &p(n)).unwrap();
        }
    }
    let tally = Tally::default();
    let target = p("records.jsonl");
    run_cases(9, 3, (any::<Index>(), line_mut()), |(k, m)| {
        let k = k.index(seeds.len());
        let (b, desc) = mutate_jsonl(&seeds[k].1, &m);
        write(&target, &b);
        let label = format!("{}: {desc}", seeds[k].0);
        check(&tally, &label, &target, || read(k, &target))?;
        check(&tally, &label, &target, || read(3, &target))
    });
    tally.report("JSONL records");
}

// ---------------------------------------------------------------------------------------------
// Parquet results: single tables, sweep parts, run directories
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Row {
    id: i64,
    name: String,
    score: f64,
    flag: bool,
    note: Option<String>,
}

fn rows(n: usize, salt: i64) -> Vec<Row> {
    (0..n as i64)
        .map(|i| Row { id: i + salt, name: format!("row {i}"), score: i as f64 * 0.25, flag: i % 2 == 0, note: (i % 3 == 0).then(|| "n".into()) })
        .collect()
}

fn read_rows(p: &Path) -> Result<Vec<Row>> {
    interp_kit::tables::read_rows(p)
}

/// A Parquet table written by `to_df` + `write_parquet` (footer length, footer, pages, truncation),
/// read back into rows; and a sweep's parts directory (`index.json` and a part file) reopened
/// and collected.
#[test]
fn parquet_tables_and_sweep_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let table = tmp.path().join("table.parquet");
    interp_kit::base::io::write_parquet(&table, &interp_kit::tables::to_df(&rows(6, 0)).unwrap()).unwrap();
    let seed = std::fs::read(&table).unwrap();
    let layout = parquet_layout(&seed);
    assert_eq!(read_rows(&table).unwrap(), rows(6, 0));
    let tally = Tally::default();
    for cut in truncations(&layout, seed.len()) {
        write(&table, &seed[..cut]);
        check(&tally, &format!("table truncated at {cut}"), &table, || read_rows(&table)).unwrap_or_else(|e| panic!("{e}"));
    }
    run_cases(10, 1, bin_muts(), |muts| {
        let mut b = seed.clone();
        let desc = apply_bin(&mut b, &layout, &muts);
        write(&table, &b);
        check(&tally, &format!("table: {desc}"), &table, || read_rows(&table))
    });
    tally.report("parquet tables");

    // A sweep of two finished cells.
    let src = tmp.path().join("parts_src");
    let out = tmp.path().join("results.parquet");
    let grid = CellKey::grid().axis("layer", [1i64, 2]).build();
    let sw: Sweep = Sweep::open(&src, &out).unwrap();
    sw.progress(interp_kit::runs::Progress::Hidden).run(grid, |k| interp_kit::tables::to_df(&rows(3, k.i64("layer")?))).unwrap();
    let parts = tmp.path().join("parts");
    let files: Vec<(String, Vec<u8>)> = {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(files.len(), 3, "two parts and index.json");
    let reset = || {
        let _ = std::fs::remove_dir_all(&parts);
        std::fs::create_dir_all(&parts).unwrap();
        for (n, b) in &files {
            write(&parts.join(n), b);
        }
    };
    let open_collect = || -> Result<usize> {
        let s: Sweep = Sweep::open(&parts, &out)?;
        let _ = s.finished();
        Ok(s.collect()?.height())
    };
    reset();
    assert_eq!(open_collect().unwrap(), 6);
    let tally = Tally::default();
    // A valid Parquet file of another table in place of a part (a part copied from elsewhere).
    let foreign = seed.clone();
    let strat = (any::<Index>(), prop_oneof![6 => bin_muts().prop_map(Ok), 6 => doc_mut().prop_map(Err), 1 => Just(Err(DocMut::Text(vec![])))]);
    // Twice the cases: a third of them (a JSON mutation drawn for a Parquet part) do not apply.
    run_cases(11, 2, strat, |(f, m)| {
        reset();
        let (name, orig) = &files[f.index(files.len())];
        let (b, desc) = match (&m, name.ends_with(".json")) {
            (Err(DocMut::Text(t)), false) if t.is_empty() => (foreign.clone(), "another table's Parquet file".to_string()),
            (Err(dm), true) => mutate_json(orig, dm),
            (Ok(bm), false) => {
                let mut b = orig.clone();
                let d = apply_bin(&mut b, &parquet_layout(orig), bm);
                (b, d)
            }
            (Ok(tm), true) => {
                // Byte mutations of the index text.
                let mut b = orig.clone();
                let whole = BinLayout { meta: 0..b.len(), ..Default::default() };
                let d = apply_bin(&mut b, &whole, tm);
                (b, d)
            }
            (Err(_), false) => return Ok(()),
        };
        let p = parts.join(name);
        write(&p, &b);
        check(&tally, &format!("sweep {name}: {desc}"), &p, open_collect)
    });
    tally.report("sweep parts");
}

// ---------------------------------------------------------------------------------------------
// Regressions: one test per defect the fuzzing found (see also the unit tests in base/gguf.rs,
// model/config.rs)
// ---------------------------------------------------------------------------------------------

/// `Err` whose `{:#}` names `name` (a panic fails the test with its message).
fn err_naming<T>(name: &str, f: impl FnOnce() -> Result<T>) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(p) => panic!("panicked: {}", panic_text(&*p)),
        Ok(Ok(_)) => panic!("loaded, expected an error naming {name}"),
        Ok(Err(e)) => {
            let msg = format!("{e:#}");
            assert!(msg.contains(name), "the error does not name {name}: {msg}");
            msg
        }
    }
}

fn gguf_fixture(arch: &str, file: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("gguf").join(arch).join(file)).unwrap()
}

/// GGUF: a tensor offset near `u64::MAX` overflowed the kit's extent check (`load.rs`, add with
/// overflow), and dimensions whose product overflows panicked in candle's element count.
#[test]
fn regression_gguf_offsets_and_dims_that_overflow() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.gguf");
    let seed = gguf_fixture("gpt2", "model-f16.gguf");
    let layout = gguf_layout(&seed);
    let field = |what: &str| layout.fields.iter().find(|f| f.what == what).unwrap().off;
    let mut b = seed.clone();
    put_int(&mut b, field("tensor offset"), 8, u64::MAX - 1);
    write(&p, &b);
    let e = err_naming("m.gguf", || Model::from_gguf(&p, &Device::Cpu, DType::F32));
    assert!(e.contains("past the end of the file"), "{e}");
    let mut b = seed.clone();
    put_int(&mut b, field("dim"), 8, 1 << 62);
    write(&p, &b);
    let e = err_naming("m.gguf", || Model::from_gguf(&p, &Device::Cpu, DType::F32));
    assert!(e.contains("overflow"), "{e}");
    err_naming("m.gguf", || Tokenizer::from_gguf_file(&p));
    // Two dimensions whose product overflows.
    let mut b = seed.clone();
    let f = layout.fields.iter().position(|f| f.what == "n_dims" && get_int(&b, f.off, 4) == 2).expect("a matrix");
    put_int(&mut b, layout.fields[f + 1].off, 8, 1 << 40);
    put_int(&mut b, layout.fields[f + 2].off, 8, 1 << 40);
    write(&p, &b);
    let e = err_naming("m.gguf", || Model::from_gguf(&p, &Device::Cpu, DType::F32));
    assert!(e.contains("overflow the element count"), "{e}");
}

/// GGUF: `token_embd.weight` without dimensions panicked on `dims()[0]` in `Model::from_gguf`.
#[test]
fn regression_gguf_embedding_without_dimensions() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.gguf");
    let mut b = gguf_fixture("gpt2", "model-f16.gguf");
    let layout = gguf_layout(&b);
    let (_, nd_off, nd) = layout.tensors.iter().find(|(n, ..)| n == "token_embd.weight").cloned().unwrap();
    b.drain(nd_off + 4..nd_off + 4 + 8 * nd);
    put_int(&mut b, nd_off, 4, 0);
    write(&p, &b);
    let e = err_naming("m.gguf", || Model::from_gguf(&p, &Device::Cpu, DType::F32));
    assert!(e.contains("token_embd.weight"), "{e}");
}

/// config.json: implausible sizes (zero heads, 2^40 layers, head_dim 2^32) divided by zero or
/// asked for terabytes before the weights were compared with them; now refused, naming the file.
#[test]
fn regression_config_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, Json)] = &[
        ("qwen2", "num_attention_heads", 0.into()),
        ("qwen2", "num_hidden_layers", (1u64 << 40).into()),
        ("qwen3", "num_key_value_heads", 0.into()),
        ("llama", "num_hidden_layers", (1u64 << 40).into()),
        ("gemma2", "head_dim", (1u64 << 32).into()),
        ("gpt_neox", "hidden_size", (1u64 << 40).into()),
        ("gpt2", "n_layer", (1u64 << 40).into()),
        ("gpt2", "n_head", 0.into()),
    ];
    for (arch, key, v) in cases {
        let d = tmp.path().join(format!("{arch}_{key}"));
        linked_copy(&common::fixture_dir(arch), &d);
        let mut c: Json = serde_json::from_slice(&std::fs::read(common::fixture_dir(arch).join("config.json")).unwrap()).unwrap();
        c[key] = v.clone();
        replace(&d, "config.json", &serde_json::to_vec(&c).unwrap());
        let e = err_naming("config.json", || load_hf(&d));
        assert!(e.contains(key), "{arch} {key}: {e}");
    }
}

/// A shard index naming an empty, missing or non-string shard: the error named the shard path
/// (or the directory itself, for ""), not the index file.
#[test]
fn regression_shard_index_names_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("qwen3");
    linked_copy(&common::fixture_dir("qwen3"), &d);
    let orig: Json = serde_json::from_slice(&std::fs::read(d.join("model.safetensors.index.json")).unwrap()).unwrap();
    for bad in [Json::from(""), "missing.safetensors".into(), 3.into(), "../qwen3/model-00001-of-00004.safetensors".into()] {
        let mut v = orig.clone();
        v["weight_map"]["model.norm.weight"] = bad.clone();
        replace(&d, "model.safetensors.index.json", &serde_json::to_vec(&v).unwrap());
        let e = err_naming("model.safetensors.index.json", || load_hf(&d));
        assert!(e.contains("model.norm.weight") || e.contains("missing.safetensors"), "{bad}: {e}");
    }
}

/// Chat templates that raise, or do not compile: the error did not say which file the template
/// came from.
#[test]
fn regression_template_errors_name_their_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("tok");
    linked_copy(&fixtures().join("byte_chat"), &d);
    let mut cfg: Json = serde_json::from_slice(&std::fs::read(d.join("tokenizer_config.json")).unwrap()).unwrap();
    cfg["chat_template"] = "{{ raise_exception('no chats here') }}".into();
    replace(&d, "tokenizer_config.json", &serde_json::to_vec(&cfg).unwrap());
    let e = err_naming("tokenizer_config.json", || load_tokenizer(&d));
    assert!(e.contains("no chats here"), "{e}");
    replace(&d, "chat_template.jinja", b"{% for m in messages %}");
    let e = err_naming("chat_template.jinja", || load_tokenizer(&d));
    assert!(e.contains("does not compile"), "{e}");
    // A template set by hand names no file.
    let mut t = Tokenizer::from_hf_dir(&d).unwrap();
    t.set_chat_template(Some("{{ raise_exception('mine') }}".into()));
    assert_eq!(t.chat_template_origin(), None);
    let e = format!("{:#}", t.render_chat(&Chat::new().user("Hi"), true).unwrap_err());
    assert!(e.starts_with("chat template failed to render") && e.contains("mine"), "{e}");
}

/// Parquet: polars 0.55's reader panicked on these corrupt footers (an out-of-range slice, a
/// failed assertion, "thrift bool field"); `read_parquet` now returns an error naming the file.
#[test]
fn regression_corrupt_parquet_footer() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("table.parquet");
    interp_kit::base::io::write_parquet(&p, &interp_kit::tables::to_df(&rows(6, 0)).unwrap()).unwrap();
    let seed = std::fs::read(&p).unwrap();
    let cases: [&[(usize, Option<u8>, u8)]; 3] = [
        // (byte offset, set it to this value, or else flip this bit)
        &[(1054, Some(86), 0), (926, None, 0)],
        &[(270, None, 1), (981, None, 0)],
        &[(1005, None, 1)],
    ];
    for muts in cases {
        let mut b = seed.clone();
        for &(at, set, bit) in muts {
            match set {
                Some(v) => b[at] = v,
                None => b[at] ^= 1 << bit,
            }
        }
        write(&p, &b);
        let e = err_naming("table.parquet", || interp_kit::tables::read_rows::<Row>(&p));
        // The caught panic (with the polars of Cargo.lock, these bytes reach it); drop this line if
        // a newer polars returns an error of its own here.
        assert!(e.contains("the Parquet reader failed"), "{muts:?}: {e}");
    }
}

/// GGUF: a tensor with a zero dimension made candle view an empty buffer's dangling pointer as
/// `f32`/blocks (undefined behaviour; debug builds abort the whole process, uncatchable).
#[test]
fn regression_gguf_tensor_without_elements() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("cv.gguf");
    control_vector().export_gguf(&p).unwrap();
    let mut b = std::fs::read(&p).unwrap();
    let dim = gguf_layout(&b).fields.iter().find(|f| f.what == "dim").unwrap().off;
    put_int(&mut b, dim, 8, 0);
    write(&p, &b);
    let e = err_naming("cv.gguf", || ControlVector::import_gguf(&p));
    assert!(e.contains("without elements"), "{e}");
    let p = tmp.path().join("m.gguf");
    let mut b = gguf_fixture("llama", "model-q8_0.gguf");
    let layout = gguf_layout(&b);
    let (_, nd_off, _) = layout.tensors.iter().find(|(n, ..)| n == "blk.0.attn_q.weight").cloned().unwrap();
    put_int(&mut b, nd_off + 4 + 8, 8, 0); // its second dimension (rows)
    write(&p, &b);
    let e = err_naming("m.gguf", || Model::from_gguf(&p, &Device::Cpu, DType::F32));
    assert!(e.contains("without elements"), "{e}");
}

/// tokenizer.json: tokenizers 0.23 panicked (`expect("Helper")`) on a malformed `decoder` entry.
#[test]
fn regression_tokenizer_json_with_a_broken_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("tok");
    linked_copy(&fixtures().join("byte_chat"), &d);
    let orig = std::fs::read_to_string(fixtures().join("byte_chat/tokenizer.json")).unwrap();
    let at = orig.find("\"decoder\"").unwrap();
    let broken_syntax = orig.replacen("\"trim_offsets\": true,\n    \"use_regex\": true\n  },\n  \"model\"", "\"trim_offsets\" true,\n  \"model\"", 1);
    assert_ne!(broken_syntax, orig);
    for text in [&orig[..at + 30], broken_syntax.as_str()] {
        let p = replace(&d, "tokenizer.json", text.as_bytes());
        // The library itself panics on these (with the tokenizers of Cargo.lock; drop this line if
        // a newer one returns an error instead).
        assert!(catch_unwind(|| tokenizers::Tokenizer::from_file(&p)).is_err(), "tokenizers no longer panics here");
        err_naming("tokenizer.json", || Tokenizer::from_hf_dir(&d));
    }
}

/// A sweep part holding another table: the error named the cells' keys but not their files.
#[test]
fn regression_sweep_part_mismatch_names_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let parts = tmp.path().join("parts");
    let out = tmp.path().join("results.parquet");
    let grid = CellKey::grid().axis("layer", [1i64, 2]).build();
    let sw: Sweep = Sweep::open(&parts, &out).unwrap();
    sw.progress(interp_kit::runs::Progress::Hidden).run(grid.clone(), |k| interp_kit::tables::to_df(&rows(3, k.i64("layer")?))).unwrap();
    let foreign = tmp.path().join("foreign.parquet");
    interp_kit::base::io::write_parquet(&foreign, &interp_kit::tables::to_df(&rows(2, 0)).unwrap()).unwrap();
    let sw: Sweep = Sweep::open(&parts, &out).unwrap();
    let last = sw.finished().last().unwrap().file.clone();
    std::fs::copy(&foreign, parts.join(&last)).unwrap();
    let e = err_naming(&last, || sw.collect());
    assert!(e.contains("different columns"), "{e}");
}

/// PEFT: an `r` or `target_modules` in adapter_config.json that disagrees with the weights gave an
/// error naming only the weights file.
#[test]
fn regression_peft_config_mismatch_names_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny("qwen2");
    let d = tmp.path().join("ad");
    linked_copy(&fixtures().join("peft/qv"), &d);
    let orig: Json = serde_json::from_slice(&std::fs::read(d.join("adapter_config.json")).unwrap()).unwrap();
    let mut v = orig.clone();
    v["r"] = 7.into();
    replace(&d, "adapter_config.json", &serde_json::to_vec(&v).unwrap());
    let e = err_naming("adapter_config.json", || LoraAdapter::load(&d, &model));
    assert!(e.contains("r = 7"), "{e}");
    let mut v = orig.clone();
    v["target_modules"] = serde_json::json!(["q_proj"]);
    replace(&d, "adapter_config.json", &serde_json::to_vec(&v).unwrap());
    let e = err_naming("adapter_config.json", || LoraAdapter::load(&d, &model));
    assert!(e.contains("v_proj is not targeted") && !e.contains("  "), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The user-facing examples on a corrupt model: exit 1 with one line, not a panic
// ---------------------------------------------------------------------------------------------

// The examples' own code, compiled into this test: each has `run(args) -> Result<()>`, which its
// `main` calls and turns into `eprintln!("{name}: {e:#}")` + exit status 1.
#[allow(dead_code)]
#[path = "../interp_kit/examples/dump.rs"]
mod dump_example;
#[allow(dead_code)]
#[path = "../interp_kit/examples/introspect.rs"]
mod introspect_example;
#[allow(dead_code)]
#[path = "../interp_kit/examples/judge_code.rs"]
mod judge_code_example;

/// Corrupt models (a truncated GGUF, an HF directory with a truncated config.json) and the
/// argument lists that make each example load them; with the file each error must name.
fn corrupt_model_runs(tmp: &Path) -> Vec<(&'static str, Vec<String>, &'static str)> {
    let gguf = tmp.join("broken.gguf");
    write(&gguf, &gguf_fixture("gpt2", "model-f16.gguf")[..5000]);
    let hf = tmp.join("broken_hf");
    linked_copy(&common::fixture_dir("gpt2"), &hf);
    replace(&hf, "config.json", br#"{"model_type": "gpt2", "n_embd": "#);
    let jsonl = tmp.join("records.jsonl");
    write(&jsonl, "{\"messages\":[{\"role\":\"user\",\"content\":\"Write add.\"},{\"role\":\"assistant\",\"content\":\"def add(a, b): return a + b\"}]}\n");
    let mut runs = vec![];
    for (model, file) in [(gguf.display().to_string(), "broken.gguf"), (hf.display().to_string(), "config.json")] {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        runs.push(("dump", s(&["dump", "--model", &model, "--user", "Hi"]), file));
        let out = tmp.join("out.json").display().to_string();
        runs.push(("introspect", s(&["introspect", "--model", &model, "--random-vector", "1", "--out", &out]), file));
        runs.push(("judge_code", s(&["judge_code", &jsonl.display().to_string(), "--llm", "--model", &model]), file));
    }
    runs
}

/// In process: each example's `run` returns an error (no panic) that is one line naming the file.
#[test]
fn examples_fail_with_one_line_on_a_corrupt_model() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, args, file) in corrupt_model_runs(tmp.path()) {
        let run = match name {
            "dump" => dump_example::run,
            "introspect" => introspect_example::run,
            _ => judge_code_example::run,
        };
        let e = err_naming(file, || run(args.clone()));
        assert!(!e.contains('\n'), "{name} {args:?}: the error is not one line: {e}");
    }
}

/// The built example binaries: exit status 1 (not a panic's 101) and exactly one line on stderr,
/// naming the file. `cargo test --workspace` (scripts/test.sh) builds the examples before running
/// tests; `cargo test --test fuzz_loaders` alone does not, and then (or when a binary is older
/// than the kit's sources) this test says so and checks nothing: the in-process test above covers
/// the same code.
#[test]
fn example_binaries_exit_1_on_a_corrupt_model() {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).map(|d| d.join("examples")).unwrap();
    let newest_source = newest_mtime(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"));
    let tmp = tempfile::tempdir().unwrap();
    let mut skipped = std::collections::BTreeSet::new();
    for (name, args, file) in corrupt_model_runs(tmp.path()) {
        let bin = dir.join(name);
        let Ok(meta) = std::fs::metadata(&bin) else {
            if skipped.insert(name) {
                println!("SKIP {name}: {} is not built (cargo test --workspace builds the examples)", bin.display());
            }
            continue;
        };
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.rs"));
        let built = meta.modified().unwrap();
        if built < newest_source.max(std::fs::metadata(&src).unwrap().modified().unwrap()) {
            if skipped.insert(name) {
                println!("SKIP {name}: {} is older than the kit's sources (rebuild the examples)", bin.display());
            }
            continue;
        }
        let out = std::process::Command::new(&bin).args(&args[1..]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name} {args:?}: exit status {:?}, stderr:\n{err}", out.status);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name} {args:?}: stderr is not one line:\n{err}");
        assert!(lines[0].starts_with(&format!("{name}: ")) && lines[0].contains(file), "{name}: {err}");
    }
}

fn newest_mtime(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = if e.file_type().unwrap().is_dir() { newest_mtime(&e.path()) } else { e.metadata().unwrap().modified().unwrap() };
        newest = newest.max(t);
    }
    newest
}
