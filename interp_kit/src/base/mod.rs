//! The bottom layer: atomic file IO, the checked GGUF reader, the seeded RNG, device choice, CPU kernel levels, vectorized
//! elementwise math, malloc tuning and the kit's paths (cache directory, embedded model). It imports nothing from the rest of the kit.
pub mod cpu;
pub mod device;
pub mod fault;
pub mod gguf;
pub mod io;
pub mod malloc;
pub mod rng;
pub mod vmath;

use anyhow::{bail, Result};
use std::path::PathBuf;

/// File name of the embedded default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF).
pub const EMBEDDED_MODEL_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// The cache directory: `$INTERP_KIT_CACHE`, else `~/.cache/interp_kit`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("INTERP_KIT_CACHE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/interp_kit"),
    }
}

/// Path of the embedded model, or an error naming the command that fetches it.
pub fn embedded_model_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("INTERP_KIT_MODEL") {
        return Ok(PathBuf::from(p));
    }
    let p = cache_dir().join("models").join(EMBEDDED_MODEL_FILE);
    if !p.exists() {
        bail!(
            "the embedded model is not at {}: run `scripts/fetch_model.sh` (or scripts/setup.sh) from the repository root",
            p.display()
        );
    }
    Ok(p)
}
