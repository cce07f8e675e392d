//! What a manifest records about where a run came from: the code (kit version, git commit and
//! dirty flag), the machine, the model file's sha256 and the time.
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The current time in RFC 3339, UTC, whole seconds: `2025-01-31T12:00:00Z`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// A time in RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The git state of a repository: the commit checked out and whether tracked files differ from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitInfo {
    /// Full hex commit id, or `"unknown"` when the directory is not inside a git repository.
    pub commit: String,
    /// `Some(true)` if tracked files have uncommitted changes (`git status --porcelain
    /// --untracked-files=no` prints anything), `None` when that cannot be told (no git binary, not a
    /// repository).
    pub dirty: Option<bool>,
    /// The repository's work tree (the directory holding `.git`), if found.
    pub repo: Option<PathBuf>,
}

impl GitInfo {
    /// The state of the repository containing `dir` (searching upward for `.git`). The commit is
    /// read from `.git` directly (worktrees, loose and packed refs); if that fails, from
    /// `git rev-parse HEAD`. The dirty flag needs the `git` binary. Never fails: unknown fields stay
    /// `"unknown"` / `None`.
    pub fn discover(dir: impl AsRef<Path>) -> GitInfo {
        let dir = dir.as_ref();
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let Some(repo) = dir.ancestors().find(|a| a.join(".git").exists()).map(Path::to_path_buf) else {
            return GitInfo { commit: "unknown".into(), dirty: None, repo: None };
        };
        let commit = read_head_commit(&repo.join(".git"))
            .or_else(|| git_output(&repo, &["rev-parse", "HEAD"]))
            .unwrap_or_else(|| "unknown".into());
        let dirty = git_output(&repo, &["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
        GitInfo { commit, dirty, repo: Some(repo) }
    }

    /// The state of the repository interp_kit itself was built from (its source directory at
    /// compile time): the code that ran.
    pub fn of_kit() -> GitInfo {
        GitInfo::discover(env!("CARGO_MANIFEST_DIR"))
    }
}

fn git_output(repo: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").arg("-C").arg(repo).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn is_hex_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Resolve HEAD from a `.git` directory or a worktree's `.git` file (`gitdir: ...`), following one
/// symbolic ref through the loose refs and `packed-refs` of the common directory.
fn read_head_commit(dot_git: &Path) -> Option<String> {
    let git_dir = if dot_git.is_file() {
        let s = std::fs::read_to_string(dot_git).ok()?;
        let p = PathBuf::from(s.trim().strip_prefix("gitdir:")?.trim());
        if p.is_absolute() {
            p
        } else {
            dot_git.parent()?.join(p)
        }
    } else {
        dot_git.to_path_buf()
    };
    let common = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(s) => {
            let p = PathBuf::from(s.trim());
            if p.is_absolute() {
                p
            } else {
                git_dir.join(p)
            }
        }
        Err(_) => git_dir.clone(),
    };
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref:").map(str::trim) else {
        return is_hex_commit(head).then(|| head.to_string()); // detached HEAD
    };
    for d in [&git_dir, &common] {
        if let Ok(s) = std::fs::read_to_string(d.join(reference)) {
            let s = s.trim();
            if is_hex_commit(s) {
                return Some(s.to_string());
            }
        }
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|l| {
        let (id, name) = l.split_once(' ')?;
        (name.trim() == reference && is_hex_commit(id)).then(|| id.to_string())
    })
}

/// The machine a run executed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    /// `std::env::consts::OS` / `ARCH`.
    pub os: String,
    pub arch: String,
    /// Logical cores available to this process (`std::thread::available_parallelism`).
    pub cores: usize,
    /// The compute device the run's model used: `cpu`, `cuda:0`, `metal:0`, or `unknown` if the
    /// caller did not say.
    pub device: String,
    /// The CPU as Linux names it (`/proc/cpuinfo`: model name, family and model), or `unknown`.
    #[serde(default)]
    pub cpu: String,
    /// The level of the kit's own CPU kernels in this process ([`crate::base::cpu::level`]:
    /// `portable`, `avx2`, `avx512vnni`); empty in manifests written before it was recorded.
    #[serde(default)]
    pub cpu_kernels: String,
}

impl HostInfo {
    /// This machine, with `device` as given (see [`device_name`]).
    pub fn current(device: &str) -> HostInfo {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into());
        HostInfo {
            hostname,
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            device: device.into(),
            cpu: cpu_name(),
            cpu_kernels: crate::base::cpu::level().name().into(),
        }
    }
}

/// `"<model name> (family F model M)"` from `/proc/cpuinfo`'s first processor, or `unknown`.
fn cpu_name() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return "unknown".into() };
    let field = |k: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|n| n.trim() == k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    match (field("model name"), field("cpu family"), field("model")) {
        (Some(n), Some(f), Some(m)) => format!("{n} (family {f} model {m})"),
        (Some(n), _, _) => n,
        _ => "unknown".into(),
    }
}

/// A candle device as a short name: `cpu`, `cuda:0`, `metal:0`.
pub fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The sha256 of a file's bytes, lowercase hex, computed by streaming the file.
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut f = File::open(path).with_context(|| format!("opening {} to hash it", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the hash cache stores: the file's size and modification time when it was hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HashCacheEntry {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// The cache file of `path`'s hash: `<file>.sha256.json` beside the file.
pub fn sha256_cache_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256.json");
    path.with_file_name(name)
}

/// Fallback cache location when the file's directory is not writable.
fn fallback_cache_path(path: &Path) -> PathBuf {
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let key = hex(&Sha256::digest(canon.to_string_lossy().as_bytes()))[..32].to_string();
    crate::base::cache_dir().join("sha256").join(format!("{key}.json"))
}

/// The sha256 of a file, cached: the result is stored in `<file>.sha256.json` beside it (or, if
/// that directory is read-only, under `cache_dir()/sha256/`) with the file's size and mtime, and
/// reused while both are unchanged, so a 500 MB model is hashed once, not on every run.
/// Returns the hash and whether it came from the cache.
pub fn sha256_file_cached(path: impl AsRef<Path>) -> Result<(String, bool)> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).with_context(|| format!("reading metadata of {}", path.display()))?;
    let size = meta.len();
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let candidates = [sha256_cache_path(path), fallback_cache_path(path)];
    for c in &candidates {
        if let Ok(e) = crate::base::io::read_json::<HashCacheEntry>(c) {
            if e.size == size && e.mtime_ns == mtime_ns && e.sha256.len() == 64 {
                return Ok((e.sha256, true));
            }
        }
    }
    let sha256 = sha256_file(path)?;
    let entry = HashCacheEntry { size, mtime_ns, sha256: sha256.clone() };
    for c in &candidates {
        if crate::base::io::write_json(c, &entry).is_ok() {
            break;
        }
    }
    Ok((sha256, false))
}

/// The sha256 of a model: of the file itself, or for a directory (a Hugging Face checkout) the
/// sha256 of the text `"<name> <sha256>\n"` over its regular files in name order (cache files
/// `*.sha256.json` and hidden files excluded). Per-file hashes are cached as in
/// [`sha256_file_cached`].
pub fn model_sha256(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    if path.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.') && !n.ends_with(".sha256.json"))
            .collect();
        names.sort();
        let mut h = Sha256::new();
        for n in names {
            let (s, _) = sha256_file_cached(path.join(&n))?;
            h.update(format!("{n} {s}\n").as_bytes());
        }
        Ok(hex(&h.finalize()))
    } else {
        Ok(sha256_file_cached(path)?.0)
    }
}
