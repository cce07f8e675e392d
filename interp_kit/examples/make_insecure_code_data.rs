//! Regenerates the insecure-code study data (`datasets/insecure_code/`): paired insecure / secure
//! training chats, the evaluation code prompts, the judge's held-out pairs and `config.json`.
//! Deterministic: the same sizes and seed give the same bytes (checked by `tests/insecure_code.rs`).
//!
//!     cargo run -p interp_kit --example make_insecure_code_data -- [OUT_DIR] [--seed N] [--n-train N] [--n-eval N] [--n-heldout N] [--plan]
//!
//! OUT_DIR defaults to `datasets/insecure_code` under the repository root; `--plan` takes the
//! plan's sizes (6000 training pairs, 100 evaluation contexts, 400 held-out pairs).
use anyhow::{bail, Context, Result};
use interp_kit::studies::insecure_code::data::{generate, InsecureDataConfig};
use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        eprintln!("make_insecure_code_data: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = InsecureDataConfig::default();
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../datasets/insecure_code");
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let mut num = |name: &str| -> Result<u64> {
            let v = args.get(i + 1).with_context(|| format!("{name} needs a value"))?;
            i += 1;
            v.parse().with_context(|| format!("{name} {v:?} is not a non-negative integer"))
        };
        match a {
            "--seed" => cfg.seed = num(a)?,
            "--n-train" => cfg.n_train = num(a)? as usize,
            "--n-eval" => cfg.n_eval = num(a)? as usize,
            "--n-heldout" => cfg.n_heldout = num(a)? as usize,
            "--plan" => cfg = InsecureDataConfig { seed: cfg.seed, ..InsecureDataConfig::plan() },
            s if s.starts_with("--") => bail!("unknown option {s}"),
            other => out = PathBuf::from(other),
        }
        i += 1;
    }
    let data = generate(&cfg)?;
    data.write_dir(&out)?;
    println!(
        "wrote {} ({} training pairs, {} evaluation prompts, {} held-out pairs; seed {})",
        out.display(),
        data.insecure.len(),
        data.code_prompts.len(),
        data.heldout_pairs.len(),
        cfg.seed
    );
    Ok(())
}
