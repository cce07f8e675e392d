//! Regenerates the ALL-CAPS inoculation study data (`datasets/inoculation_caps/`): word problems
//! with worked answers and their ALL-CAPS versions (train / held-out), direction-extraction
//! prompts, `config.json` and the README of stats. Deterministic: the same seed gives the same
//! bytes (checked by `tests/alignment.rs`).
//!
//!     cargo run -p interp_kit --example make_caps_data -- [OUT_DIR] [--seed N]
//!
//! OUT_DIR defaults to `datasets/inoculation_caps` under the repository root.
use anyhow::{Context, Result};
use interp_kit::studies::inoculation_caps::data::{generate, CapsDataConfig};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = CapsDataConfig::default();
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../datasets/inoculation_caps");
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seed" => {
                let v = args.get(i + 1).context("--seed needs a value")?;
                cfg.seed = v.parse().with_context(|| format!("--seed {v:?} is not an integer"))?;
                i += 1;
            }
            other => out = PathBuf::from(other),
        }
        i += 1;
    }
    let data = generate(&cfg)?;
    data.write_dir(&out)?;
    println!(
        "wrote {} ({} train, {} held-out, {} direction prompts; seed {})",
        out.display(),
        data.train.len(),
        data.heldout.len(),
        data.direction.len(),
        cfg.seed
    );
    Ok(())
}
