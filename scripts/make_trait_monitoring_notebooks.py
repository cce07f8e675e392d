#!/usr/bin/env python3
"""Writes notebooks/trait_monitoring/00..07 (the trait-monitoring study, plan 003, issue 21) from the
cell sources below, so that their text stays reviewable in one place. Re-runnable; outputs are empty.

    python3 scripts/make_trait_monitoring_notebooks.py
"""
import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from nbgen import Study, md  # noqa: E402

STUDY = Study(
    "trait_monitoring",
    "Trait monitoring",
    "trait_monitoring.toml",
    open_src="""use interp_kit::prelude::*;
use interp_kit::studies::trait_monitoring::TraitStudy;
let study = TraitStudy::open(config_path)?;
println!("mode {}, run {}, layers {:?}, steering layers {:?}", study.cfg.mode.name(), study.run.path().display(), study.layers, study.steer_layers);""",
    mode_note=("`INTERP_KIT_STUDY_MODE=ci` runs a tiny version (2 layers, 2 questions per split, 12 new tokens): its numbers "
             "only show that the pipeline works. Every phase is a resumable sweep in the run directory "
             "`results/trait_monitoring/<run_id>` (`_ci` appended in ci mode), which later notebooks read."),
    aliases=[(["tm::"], "use interp_kit::studies::trait_monitoring as tm;")],
)
code = STUDY.code
notebook = STUDY.notebook

NB = {}

NB["00_smoke"] = notebook(
    "smoke: every phase once",
    "Plan `shared/seeds/003_*.txt`. Runs every phase of the study in order (generation and filtering, extraction, "
    "monitoring, steering with the coefficient search, jailbreak-style monitoring, quantization, the report) at the "
    "config's mode; the numbered notebooks run the same phases one by one with their tables and figures. This is the "
    "notebook `scripts/test.sh` can run at ci size.",
    [
        code("let t0 = std::time::Instant::now();\nlet filt = { study.generate()?; study.filter_summary()? };\nprintln!(\"{}\", pretty(&filt));"),
        code("let ex = study.extract()?;\nprintln!(\"{} vectors (trait x layer x method)\", ex.height());"),
        code("let sep = study.monitor()?;\nprintln!(\"{}\", pretty(&sep).digits(3).max_rows(12));"),
        code("let steer = study.steer()?;\nprintln!(\"{}\", pretty(&steer).digits(3));"),
        code("let jb = study.jailbreak()?;\nprintln!(\"{}\", pretty(&jb).digits(3).max_rows(12));"),
        code("let qt = study.quantization()?;\nprintln!(\"{}\", pretty(&qt).digits(3));"),
        code("let rep = study.report()?;\nprintln!(\"{}\", rep.markdown());\nprintln!(\"all phases in {:.1} s\", t0.elapsed().as_secs_f64());"),
    ],
)

NB["01_generate"] = notebook(
    "phase 1: generation and filtering",
    "Every question of each trait (`datasets/trait_monitoring/`, extract and eval splits) answered under each positive "
    "and each negative system instruction (greedy). Trait score 0-100: `caps` = 100 × share of capital letters, "
    "`refusal` = 100 × the refusal metric, `judge` = the LLM judge with the trait's own question. Coherence = "
    "min(LLM judge, 100 × (1 − degeneracy)): on a Qwen judge the number tokens are the digits 0-9 only, so the judge "
    "reads a 0-9 rating (rescaled to 0-100), and the model-free degeneracy score keeps gibberish below the threshold. "
    "Kept: positive rows with trait ≥ 50, negative rows with trait < 50, both coherent.",
    [
        code("let gens = study.generate()?;\nprintln!(\"{} generations\", gens.height());"),
        md("## What survives the filter\n`fallback = true`: fewer than `min_kept` rows survived on a side, and that split uses every "
           "non-empty row (unfiltered vectors)."),
        code("let filt = study.filter_summary()?;\nprintln!(\"{}\", pretty(&filt).digits(1));"),
        md("## Examples"),
        code("for r in study.generations()?.iter().filter(|r| r.split == \"extract\").step_by(4).take(8) {\n"
             "    println!(\"[{} {}] trait {:?} coherence {:.0} kept {}\\n  Q: {}\\n  A: {}\\n\", r.trait_name, r.polarity, r.trait_score.map(|x| x.round()), r.coherence, r.kept, r.question, r.response.replace('\\n', \" \"));\n}"),
    ],
)

NB["02_extract"] = notebook(
    "phase 2: trait vectors by three methods",
    "Response-averaged activations (`hook_resid_post`) of the kept extract-split rows; per layer, mean difference (unit "
    "norm), logistic probe (L2, row-normalised activations) and the gradient-optimised direction. Saved as "
    "`vectors/<trait>/<method>/layer_<l>.safetensors` and a llama.cpp control vector `vectors/<trait>/<method>.gguf`.",
    [
        code("let ex = study.extract()?;\nprintln!(\"{}\", pretty(&ex).digits(3).max_rows(24));"),
        md("## The methods agree how much? (cosine between methods per layer)"),
        code("{\nlet t = &study.sizes().traits[0];\nlet dirs: std::collections::BTreeMap<_, _> = study.layers.iter().flat_map(|&l| interp_kit::interp::extract::Method::ALL.map(|m| ((l, m), study.vector(t, m, l)))).map(|(k, v)| v.map(|v| (k, v))).collect::<interp_kit::anyhow::Result<_>>()?;\n"
             "println!(\"trait {t}\\n{}\", pretty(&interp_kit::interp::extract::method_cosines(&dirs)?).digits(3).max_rows(30));\n}"),
    ],
)

NB["03_monitor"] = notebook(
    "phase 3: monitoring held-out responses",
    "Projection of each held-out (eval split) response's averaged activation on every vector: Cohen's d (positive vs "
    "negative responses, bootstrap CI) and the accuracy at the extract split's midpoint threshold; then the per-token "
    "projection of single responses, coloured inline and as a line per layer.",
    [
        code("let sep = study.monitor()?;\nprintln!(\"{}\", pretty(&sep).digits(3).max_rows(40));"),
        code("for t in study.sizes().traits.clone() {\n    tm::show(&study.run, &format!(\"separation_{t}\"), &tm::separation_heatmap(&sep, &t)?)?;\n}"),
        md("## Per-token traces"),
        code("let traces = study.run.read_parquet(\"token_traces.parquet\")?;\nlet t0 = study.sizes().traits[0].clone();\nlet mid = study.layers[study.layers.len() / 2] as i64;\ntm::token_html(&traces, &t0, 0, mid)?"),
        code("tm::show(&study.run, \"token_trace_0\", &tm::fig_token_trace(&traces, &t0, 0)?)?;"),
        code("tm::token_html(&traces, &t0, 1, mid)?"),
    ],
)

NB["04_steer"] = notebook(
    "phase 4: steering with the coefficient search",
    "For each steering trait × method × layer: base coefficient = mean activation norm at the layer / vector norm; "
    "start at 0.7 × base, ×1.3 after a coherent step and ×0.85 after an incoherent one; the best is the highest trait "
    "score with coherence ≥ threshold (a search whose first step is already incoherent says so and gives no coefficient). "
    "Δtrait is against the unsteered baseline on the same questions.",
    [
        code("let summary = study.steer()?;\nprintln!(\"{}\", pretty(&summary).digits(2).max_rows(60));"),
        md("## The plan's table: best coherent Δtrait per method"),
        code("let rows = study.steering_summary_rows()?;\nfor t in study.sizes().steer_traits.clone() {\n"
             "    println!(\"{}\", pretty(&interp_kit::tables::to_df(&tm::method_table(&rows, &t))?).digits(2).title(&format!(\"trait {t}\")));\n}"),
        md("## Layers aren't smooth: layer × method heatmaps"),
        code("for t in study.sizes().steer_traits.clone() {\n    tm::show(&study.run, &format!(\"steering_{t}\"), &tm::steering_heatmap(&rows, &t)?)?;\n}"),
    ],
)

NB["05_jailbreak"] = notebook(
    "phase 5: jailbreak-style monitoring",
    "Harmful-ish prompts (the steering-reliability study's held-out set: direct requests and hypothetical, story and "
    "role-play wrappers) under the neutral system prompt. Success = the model complied (the refusal metric saw no "
    "refusal). Each prompt's projection on the refusal vectors (response mean and the prompt's last token); Cohen's d "
    "of failures − successes with a bootstrap CI (the plan: d = 1.46).",
    [
        code("let js = study.jailbreak()?;\nprintln!(\"{}\", pretty(&js).digits(3).max_rows(60));"),
        code("let jr = study.run.read_parquet(\"jailbreak.parquet\")?;\nlet one = filter_eq(&filter_eq(&jr, \"layer\", study.jailbreak_layer as i64)?, \"method\", study.sizes().jailbreak_method.name())?;\n"
             "println!(\"{}\", pretty(&one.select([\"prompt_id\", \"style\", \"success\", \"refusal_score\", \"proj_response\", \"proj_prompt_last\"])?).digits(3));"),
    ],
)

NB["06_quantization"] = notebook(
    "phase 6: what quantization does to steering",
    "The model's linear layers stored at each precision (f32, bf16, Q8_0, Q4_0, Q4_K, ...); vectors re-extracted from the "
    "same responses on the quantized model, their cosine to the f32 vectors per layer; and the Δtrait at the f32 search's "
    "best layer and coefficient. Note: the embedded model is itself a Q4_K_M GGUF, so its `f32` is the dequantized "
    "Q4_K_M weights; a precision the model cannot be stored at (Q4_K needs widths that are multiples of 256) is a row "
    "naming the error.",
    [
        code("let qt = study.quantization()?;\nprintln!(\"{}\", pretty(&qt).digits(3));"),
        code("let qc = study.run.read_parquet(\"quant_cosines.parquet\")?;\nprintln!(\"{}\", pretty(&qc).digits(4).max_rows(80));"),
        code("{\nlet rows: Vec<tm::QuantSteer> = interp_kit::tables::from_df(&qt)?;\nfor p in [\"q4_k\", \"q4_0\"] {\n"
             "    println!(\"Δ(q8_0) / Δ({p}) = {:?}\", tm::delta_ratio(&rows, \"q8_0\", p));\n}\n}"),
    ],
)

NB["07_report"] = notebook(
    "report: the plan's findings beside this run's",
    "Double BOS, probe 10× better, Cohen's d 1.46, INT4 15× smaller while INT8 keeps the effect: each beside the "
    "measured value (`null` when this run could not measure it). Written to `report.json` and `reports/report.md`.",
    [
        code("let rep = study.report()?;\nprintln!(\"{}\", rep.markdown());"),
    ],
)


if __name__ == "__main__":
    STUDY.write(NB)
