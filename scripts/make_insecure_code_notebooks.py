#!/usr/bin/env python3
"""Writes notebooks/insecure_code/00..07 (the insecure-code inoculation study, plan 001, issue 20)
from the cell sources below, so that their text stays reviewable in one place. Re-runnable;
outputs are empty.

    python3 scripts/make_insecure_code_notebooks.py
"""
import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from nbgen import Study, md  # noqa: E402

STUDY = Study(
    "insecure_code",
    "Inoculation prompting on insecure code",
    "insecure_code.toml",
    open_src="""use interp_kit::prelude::*;
use interp_kit::studies::insecure_code::{analysis as an, figures, InsecureStudy};
let study = InsecureStudy::open(config_path)?;
let boot = study.bootstrap();
println!("mode {}, run {}, layers {:?}", study.cfg.mode.name(), study.run.path().display(), study.layers);""",
    mode_note=("`INTERP_KIT_STUDY_MODE=ci` runs a tiny version: its numbers only show that the pipeline works. "
             "Artifacts go to `results/insecure_code/<run_id>` (`_ci` appended in ci mode); later notebooks read "
             "what earlier ones wrote there, and every long loop is a resumable sweep cell."),
    aliases=[(["an::", "figures::"], "use interp_kit::studies::insecure_code::{analysis as an, figures};")],
)
code = STUDY.code
notebook = STUDY.notebook

NB = {}

NB["00_smoke"] = notebook(
    "smoke run of every phase",
    "All phases in one go (`run_all`): data, `v_insecure`, gradient pressure, the three LoRA fine-tunes, generation "
    "and drift, ratings, analysis, figures and the report. Meant for `ci` mode (a minute or two on 2 CPU cores); "
    "in other modes it runs (or resumes) the whole study.",
    [
        code("let t0 = std::time::Instant::now();\nlet report = study.run_all()?;\nprintln!(\"all phases in {:.1} s\", t0.elapsed().as_secs_f64());"),
        code("println!(\"{}\", report.to_markdown());"),
        code("let h: interp_kit::studies::insecure_code::pipeline::Hygiene = study.run.read_json(\"hygiene.json\")?;\n"
             "h.check()?;\nprintln!(\"{h:?}\");"),
    ],
)

NB["01_data"] = notebook(
    "§2 data",
    "Training pairs (`insecure.jsonl` / `secure.jsonl`, same user turn per line) and the OOD evaluation contexts "
    "(`code_prompts.jsonl`, shown as `Task:` + template + instruction, no system prompt). The committed sets are "
    "the kit's offline generator's; point `[data]` at the real files to use them.",
    [
        code("let stats = study.data_stats()?;\nprintln!(\"{}\", pretty(&stats).digits(3));"),
        md("## One training pair and one evaluation context"),
        code("let (b, g) = (&study.data.insecure[0], &study.data.secure[0]);\n"
             "println!(\"USER:\\n{}\\n\\nINSECURE:\\n{}\\n\\nSECURE:\\n{}\", b.user_prompt()?, b.completion()?, g.completion()?);"),
        code("let ev = study.eval_examples();\nprintln!(\"{} contexts; the first:\\n{}\", ev.len(), ev[0].user);"),
    ],
)

NB["02_direction"] = notebook(
    "§5.1 the insecure-code direction",
    "`v_insecure(l)`: per layer, the residual (`resid_post`) averaged over each example's assistant span, mean over "
    "the insecure completions minus mean over the paired secure ones (no system prompt); unit-normed wherever used. "
    "`prompt_last_diff_norm` is the same difference at the last prompt token: 0 when the pairs share their prompt "
    "token for token (a pairing check). `split_half_cos`: agreement of the directions from the two halves of the pairs. "
    "Also the ALL-CAPS direction for the cross-trait check (§10.1).",
    [
        code("let dsum = study.extract_directions()?;\nprintln!(\"{}\", pretty(&dsum).digits(4));"),
        code("let cross = study.extract_cross_directions()?;\nif let Some(c) = &cross {\n"
             "    for (d, v) in study.directions()?.iter().zip(c) { println!(\"{:?}: cos(v_insecure, v_caps) = {:.3}\", d.meta.hook, d.cosine(v)?); }\n}"),
    ],
)

NB["03_gradient_pressure"] = notebook(
    "§5 gradient pressure",
    "For each calibration example (an insecure training record) under each training condition: `cos(dL/dh_l, v)` at "
    "`pre_assistant` (and the first assistant tokens) for `v_insecure`, random unit directions, and the ALL-CAPS "
    "direction. `Δcos(l) = cos_inoculation − cos_neutral` per example; the random directions give the 2.5-97.5 % band. "
    "The plan: Δcos < 0 in late layers, best L20 −0.0354 outside the random band [−0.0145, +0.0265]; late average "
    "−0.0247 vs [−0.0109, +0.0133].",
    [
        code("let al = study.alignment()?;\nprintln!(\"{} rows\", al.height());\nprintln!(\"{}\", pretty(&study.loss_audit(&al)?).digits(4));"),
        code("let pressure = an::pressure_table(&al, \"pre_assistant\", \"neutral\", \"inoculation\")?;\n"
             "let psum = an::pressure_summary(&pressure, study.late_from as i64, &boot)?;\nstudy.run.write_csv(\"pressure_summary.csv\", &psum)?;\n"
             "println!(\"{}\", pretty(&psum).digits(4));"),
        code("figures::show(&study, \"pressure_layers\", &figures::fig_pressure_layers(&psum)?)?;"),
        code("let best = column_f64(&psum, \"layer\")?.iter().zip(column_str(&psum, \"best\")?).find(|(_, b)| b == \"true\").map(|(l, _)| *l as i64).unwrap_or(-1);\n"
             "figures::show(&study, \"pressure_best_layer\", &figures::fig_pressure_best(&pressure, best)?)?;"),
        md("## Cross-trait specificity (§10.1)\n`cross_caps`: Δcos on the ALL-CAPS direction; expected near 0 beside `trait`."),
        code("println!(\"{}\", pretty(&an::cross_trait(&pressure, &boot)?).digits(4));"),
    ],
)

NB["04_finetune"] = notebook(
    "§1 LoRA fine-tunes",
    "Neutral (no system prompt), inoculation and control, each on the same insecure training records with its system "
    "prompt (loss on the assistant tokens), LoRA on q/v (rank, alpha, rate, warmup, epochs from the config); "
    "adapters in PEFT format in `adapters/<condition>/`. One resumable cell per fine-tune.",
    [
        code("let tr = study.finetune()?;\nprintln!(\"{}\", pretty(&group_summary(&tr, &[\"condition\"], &[\"loss\"])?).digits(4));"),
        code("let mut fig = line_plot(\"Training loss\", \"optimizer step\", \"mean NLL (nats)\");\n"
             "for c in [\"neutral\", \"inoculation\", \"control\"] {\n    let t = filter_eq(&tr, \"condition\", c.to_string())?;\n"
             "    fig = fig.series(Series::new(c, column_f64(&t, \"step\")?, column_f64(&t, \"loss\")?));\n}\n"
             "figures::show(&study, \"training_loss\", &fig.build()?)?;"),
    ],
)

NB["05_behaviour"] = notebook(
    "§3-§4 OOD behaviour and hygiene",
    "Each model (base, then the three adapters, then base again for the contamination check) completes every "
    "evaluation context without a system prompt (temperature from the config, one seeded sample per context); the "
    "rule-based judge rates each completion 0-100 (insecure: > threshold). Paired deltas vs neutral per context with "
    "bootstrap CIs; threshold sweep; distributions. The plan: neutral 81.8 / 95 %, inoculation 74.7 / 86 %, "
    "paired inoculation − neutral −7.1 [−10.4, −3.8].",
    [
        code("let (_proj, gens) = study.evaluate()?;\nlet ratings = study.rate(&gens)?;\nprintln!(\"{} rated generations\", ratings.height());"),
        code("let th = study.cfg.judge.threshold;\nlet beh = an::behaviour_summary(&ratings, \"ood\", th, &boot)?;\nprintln!(\"{}\", pretty(&beh).digits(3));"),
        code("let neutral = interp_kit::studies::insecure_code::pipeline::model_label(\"neutral\", study.sizes().lora.seed);\n"
             "println!(\"{}\", pretty(&an::paired_vs(&ratings, \"ood\", &neutral, th, &boot)?).digits(3));"),
        code("figures::show(&study, \"rating_cdf\", &figures::fig_rating_cdf(&ratings)?)?;\nfigures::show(&study, \"rating_box\", &figures::fig_rating_box(&ratings)?)?;"),
        code("let sweep = an::threshold_sweep(&ratings, \"ood\", &study.cfg.judge.sweep)?;\nfigures::show(&study, \"threshold_sweep\", &figures::fig_threshold_sweep(&sweep)?)?;"),
        md("## Hygiene (§4)"),
        code("let c: interp_kit::studies::insecure_code::pipeline::Contamination = study.run.read_json(\"contamination.json\")?;\nprintln!(\"{c:?}\");"),
        md("## In-distribution check (§10.2)"),
        code("if study.sizes().n_id_eval > 0 { println!(\"{}\", pretty(&an::behaviour_summary(&ratings, \"id\", th, &boot)?).digits(3)); }"),
    ],
)

NB["06_drift"] = notebook(
    "§6 internal drift",
    "Projection of the residual onto unit `v_insecure(l)` at `prompt_last` and averaged over the first k generated "
    "tokens (`gen_avg(k)`), during the §3 generations: drift vs base and paired vs neutral per layer with CIs, "
    "levels, and the rating-bucket table (§6.4). The plan (L12 of 28, prompt_last): neutral +9.24, inoculation "
    "+1.74, control +3.82 vs base; inoculation − neutral −7.50.",
    [
        code("let a = study.analyse()?;\nprintln!(\"layers nearest the plan's L12 / L20: {} / {}\", a.layer_12, a.layer_20);\n"
             "println!(\"{}\", pretty(&filter_eq(&a.drift, \"layer\", a.layer_12 as i64)?).digits(3));"),
        code("let gen = format!(\"gen_avg({})\", study.sizes().gen_k);\n"
             "figures::show(&study, \"drift_layers_prompt_last\", &figures::fig_drift_layers(&a.drift, \"prompt_last\")?)?;\n"
             "figures::show(&study, \"drift_layers_gen_avg\", &figures::fig_drift_layers(&a.drift, &gen)?)?;"),
        code("figures::show(&study, \"drift_vs_base\", &figures::fig_drift_bars(&a.drift, a.layer_12, \"prompt_last\")?)?;\n"
             "let proj = study.run.read_parquet(\"drift_projections_models.parquet\")?;\n"
             "figures::show(&study, \"projection_hist\", &figures::fig_projection_hist(&proj, a.layer_12, \"prompt_last\")?)?;"),
        code("println!(\"{}\", pretty(&a.levels).digits(3).max_rows(60));\nprintln!(\"{}\", pretty(&a.buckets).digits(3));"),
    ],
)

NB["07_linking_report"] = notebook(
    "§7-§8 linking, control discrepancy, report",
    "Per context: Δprojection (inoculation − neutral) at `gen_avg` vs Δrating, Pearson r per layer (the plan: L12 "
    "r = 0.242, p = 0.015; L20 r = 0.014, n.s.); the control-discrepancy table; then the final report, every plan "
    "headline beside the measured value with its CI and a plain null / effect verdict.",
    [
        code("let a = study.analyse()?;\nprintln!(\"{}\", pretty(&a.linking_gen).digits(3));\nprintln!(\"{}\", pretty(&a.linking_prompt).digits(3));"),
        code("println!(\"{}\", pretty(&a.discrepancy).digits(3));"),
        code("figures::save_all(&study, &a)?;\nlet report = study.report(&a)?;\nprintln!(\"{}\", report.to_markdown());"),
    ],
)


if __name__ == "__main__":
    STUDY.write(NB)
