//! Generates the steering-reliability prompt sets (plan 004 §5, §12), or converts a CSV / JSON /
//! JSONL prompt file to the kit's JSONL.
//!
//!     cargo run -p interp_kit --example make_prompts -- --out_dir datasets/steering_reliability \
//!         --n_train 150 --n_test 150 --n_benign 200 --seed 0
//!     cargo run -p interp_kit --example make_prompts -- --ingest my_prompts.csv --out my.jsonl [--id_prefix my]
//!
//! The first form writes `harm_train.jsonl`, `harm_test.jsonl`, `benign.jsonl` and `README.md`
//! (seed and counts) into `--out_dir`; the same arguments always give the same bytes.
use anyhow::{bail, Context, Result};
use interp_kit::base::io::write_atomic;
use interp_kit::studies::steering_reliability::data::{generate_split, generator_readme, Split};
use interp_kit::text::records::{ingest, write_jsonl};
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `/work/kitbuild.sh run ... -- ARGS` appends cargo's `--target HOST` to ARGS: ignore it.
    if let Some(i) = args.iter().position(|a| a == "--target") {
        args.drain(i..(i + 2).min(args.len()));
    }
    let known = ["--out_dir", "--n_train", "--n_test", "--n_benign", "--seed", "--ingest", "--out", "--id_prefix"];
    for a in args.iter().step_by(2) {
        if !known.contains(&a.as_str()) {
            bail!("unknown argument {a:?}; expected one of {known:?} (each followed by a value)");
        }
    }
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let num = |k: &str, d: u64| -> Result<u64> {
        get(k).map(|s| s.parse::<u64>().with_context(|| format!("{k} {s:?} is not a number"))).transpose().map(|v| v.unwrap_or(d))
    };
    if let Some(input) = get("--ingest") {
        let out = get("--out").context("--ingest needs --out FILE.jsonl")?;
        let prefix = get("--id_prefix").unwrap_or_else(|| "prompt".into());
        let recs = ingest(&input, &prefix)?;
        write_jsonl(&out, &recs)?;
        println!("{}: {} prompts -> {out}", input, recs.len());
        return Ok(());
    }
    let out_dir = PathBuf::from(get("--out_dir").unwrap_or_else(|| "datasets/steering_reliability".into()));
    let seed = num("--seed", 0)?;
    let sizes = [(Split::HarmTrain, num("--n_train", 150)?), (Split::HarmTest, num("--n_test", 150)?), (Split::Benign, num("--n_benign", 200)?)];
    let mut sets = Vec::new();
    for (split, n) in sizes {
        let recs = generate_split(split, n as usize, seed)?;
        let path = out_dir.join(format!("{}.jsonl", split.name()));
        write_jsonl(&path, &recs)?;
        println!("{split}: {} prompts -> {}", recs.len(), path.display());
        sets.push((split, recs));
    }
    write_atomic(out_dir.join("README.md"), generator_readme(&sets, seed).as_bytes())?;
    Ok(())
}
