//! glibc's malloc settings for a process that allocates a fresh buffer for every tensor op.
//!
//! candle allocates each op's output anew and frees it soon after. With glibc's defaults, freed
//! memory at the top of the heap above a few MiB goes back to the kernel (and buffers over the
//! dynamic mmap threshold are mmapped and unmapped each time), so the next op faults the same pages
//! in again: a LoRA step on the embedded model (4 × 64 tokens) spent about a quarter of its CPU
//! time in the kernel. [`tune`] keeps up to 1 GiB of freed heap (`M_TRIM_THRESHOLD`), grows the
//! heap in 64 MiB steps (`M_TOP_PAD`) and fixes the mmap threshold at its 32 MiB maximum
//! (`M_MMAP_THRESHOLD`). Measured in `BENCHMARKS.md` ("malloc settings"): the LoRA step ~12 %
//! faster, system time halved, peak RSS 30-150 MiB higher; the forward pass unchanged.
//!
//! [`Model`](crate::model::Model) construction calls it once per process. It changes nothing when
//! `INTERP_KIT_MALLOC=default` or when the user already set glibc's own knobs
//! (`MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`, `MALLOC_MMAP_THRESHOLD_`, `GLIBC_TUNABLES`), nor
//! on targets without glibc.
//!
//! On a CUDA device the tensors live in GPU memory (candle's CUDA allocator); these settings then
//! only shape the host heap (tokenization, sampling buffers, results tables) and are kept as they
//! are: they cost at most the retained 1 GiB of freed host memory and change no result.

/// What [`tune`] did in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malloc {
    /// The settings above are in force.
    Tuned,
    /// Left as it was: `INTERP_KIT_MALLOC=default` or the user's own glibc settings.
    LeftAlone,
    /// Not glibc (or glibc refused a setting).
    Unsupported,
}

/// glibc's own settings; when any is set, [`tune`] leaves the allocator to them.
pub const GLIBC_ENV: [&str; 4] = ["MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"];

const TRIM_THRESHOLD: i32 = 1 << 30;
const TOP_PAD: i32 = 64 << 20;
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Applies the settings once per process (later calls return the first call's outcome).
pub fn tune() -> Malloc {
    static DONE: std::sync::OnceLock<Malloc> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        let user_set = GLIBC_ENV.iter().any(|k| std::env::var_os(k).is_some());
        if user_set || std::env::var("INTERP_KIT_MALLOC").is_ok_and(|v| v == "default") {
            return Malloc::LeftAlone;
        }
        apply()
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> Malloc {
    // SAFETY: mallopt only changes allocator parameters; glibc serialises it with allocation.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
    };
    if ok { Malloc::Tuned } else { Malloc::Unsupported }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Malloc {
    let _ = (TRIM_THRESHOLD, TOP_PAD, MMAP_THRESHOLD);
    Malloc::Unsupported
}
