//! The introspection protocol on one vector, as JSON anyone can check against transformers: the
//! conversation's token ids, the steered positions, the layers, the strength, the token ids
//! counted as yes and as no, and P(yes), P(no) for the steered run and the clean run.
//!
//!     cargo run --release --example introspect -- [--model PATH] (--vector FILE.safetensors | --random-vector SEED) \
//!         [--layers A..B] [--strength S] [--info] [--seed N] [--steer-system] [--contents-only] [--tokens context|user_only|partial] [--exact] [--out FILE.json]
//!
//! Steering adds `S · v` (v normalised to unit length) to `resid_post` of blocks `A..B-1` at the
//! tokens of user turn 1 through assistant turn 1 while those are prefilled into a KV cache; the
//! rest of the conversation extends that cache unsteered (steer-then-remove), and the next-token
//! probabilities after "The answer is" are read. Defaults: the middle third of the blocks,
//! strength 20. `--tokens user_only` steers user turn 1 only, `partial` the first half of the
//! context's tokens. `--random-vector SEED` draws a seeded unit vector and writes it as
//! `random_vector_SEED.safetensors` next to `--out` (or in the current directory). `--seed` is only
//! recorded: nothing is sampled. `--exact` runs with dequantized f32 weights (as transformers does).
//! Bad input (a vector of the wrong width, a band outside the model, ...) exits 1 with one line.
use anyhow::{bail, ensure, Context, Result};
use interp_kit::hooks::Hooks;
use interp_kit::interp::directions::{random, Direction};
use interp_kit::interp::introspection::{steer_hooks, yes_no_after_prefix, ProtocolConfig, SteeredTokens};
use interp_kit::interp::token_probs::TokenSet;
use interp_kit::model::Model;
use std::ops::Range;
use std::path::PathBuf;

fn parse_band(s: &str) -> Result<Range<usize>> {
    let (a, b) = s.split_once("..").with_context(|| format!("--layers {s:?}: expected A..B (blocks A to B-1)"))?;
    let a: usize = a.trim().parse().with_context(|| format!("--layers {s:?}: bad start"))?;
    let b: usize = b.trim().parse().with_context(|| format!("--layers {s:?}: bad end"))?;
    ensure!(a < b, "--layers {s:?}: the band is empty (need A < B)");
    Ok(a..b)
}

/// The whole program; `args` as `std::env::args()` gives them (program name first).
pub fn run(args: Vec<String>) -> Result<()> {
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let has = |k: &str| args.iter().any(|a| a == k);
    let device = interp_kit::device(&get("--device").unwrap_or_else(|| "auto".into()))?;
    let mut model = match get("--model") {
        Some(p) => Model::load(&p, &device)?,
        None => Model::embedded(&device)?,
    };
    model.quantized_inference = !has("--exact");
    let n = model.n_layers();
    let layers = match get("--layers") {
        Some(s) => parse_band(&s)?,
        None => n / 3..(2 * n).div_ceil(3),
    };
    let strength: f64 = match get("--strength") {
        Some(s) => s.parse().with_context(|| format!("--strength {s:?}: not a number"))?,
        None => 20.0,
    };
    let seed: Option<u64> = get("--seed").map(|s| s.parse().with_context(|| format!("--seed {s:?}: not an integer"))).transpose()?;
    let out_path = get("--out").map(PathBuf::from);
    let (dir, source) = match (get("--vector"), get("--random-vector")) {
        (Some(_), Some(_)) => bail!("give either --vector FILE or --random-vector SEED, not both"),
        (None, None) => bail!("a vector is required: --vector FILE.safetensors or --random-vector SEED"),
        (Some(f), None) => (Direction::load(&f)?, f),
        (None, Some(s)) => {
            let rs: u64 = s.parse().with_context(|| format!("--random-vector {s:?}: not an integer seed"))?;
            let d = random(model.d_model(), rs)?;
            let where_ = out_path.as_ref().and_then(|p| p.parent()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
            let f = where_.join(format!("random_vector_{rs}.safetensors"));
            d.save(&f)?;
            (d, f.display().to_string())
        }
    };
    ensure!(
        dir.dim() == model.d_model(),
        "the vector in {source} has width {}, the model's residual stream has {}",
        dir.dim(),
        model.d_model()
    );
    let norm_in_file = dir.norm();
    let unit = dir.normalized().with_context(|| format!("the vector in {source}"))?;
    let tokens: SteeredTokens = get("--tokens").as_deref().unwrap_or("context").parse()?;
    let cfg = ProtocolConfig { info: has("--info"), steer_system: has("--steer-system"), steer_template_between: !has("--contents-only"), tokens, ..Default::default() };
    let tok = model.tok()?;
    let p = cfg.build(tok)?;
    let yes = TokenSet::word_variants(tok, "yes")?;
    let no = TokenSet::word_variants(tok, "no")?;
    let pre = steer_hooks(&model, &unit.vector, layers.clone(), strength, &p.steered, p.ids.len())?;
    let steered = yes_no_after_prefix(&model, &p.ids, p.split, &pre, &Hooks::new(), &yes, &no)?;
    let clean = yes_no_after_prefix(&model, &p.ids, p.split, &Hooks::new(), &Hooks::new(), &yes, &no)?;
    let j = serde_json::json!({
        "model": model.info.source,
        "exact": has("--exact"),
        "info": cfg.info,
        "seed": seed,
        "text": tok.decode(&p.ids, false)?,
        "ids": p.ids,
        "steered_tokens": tokens.name(),
        "steered_positions": p.steered,
        "prefill_tokens": p.split,
        "layers": layers.clone().collect::<Vec<_>>(),
        "hook_points": layers.map(|l| format!("blocks.{l}.hook_resid_post")).collect::<Vec<_>>(),
        "strength": strength,
        "vector": source,
        "vector_norm_in_file": norm_in_file,
        "yes_ids": yes.ids, "yes_tokens": yes.tokens,
        "no_ids": no.ids, "no_tokens": no.tokens,
        "steered": steered,
        "clean": clean,
        "delta_p_yes": steered.p_yes - clean.p_yes,
        "delta_log_odds": steered.log_odds - clean.log_odds,
    });
    let s = serde_json::to_string_pretty(&j)?;
    println!("{s}");
    if let Some(o) = out_path {
        interp_kit::base::io::write_atomic(&o, format!("{s}\n"))?;
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(std::env::args().collect()) {
        eprintln!("introspect: {e:#}");
        std::process::exit(1);
    }
}
