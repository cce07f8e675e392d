#!/usr/bin/env python3
"""Writes notebooks/introspection/00..05 (the introspection fine-tuning study, plan 002, issue 19) from
the cell sources below, so that their text stays reviewable in one place. Re-runnable; outputs are empty.

    python3 scripts/make_introspection_notebooks.py
"""
import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from nbgen import Study, md  # noqa: E402

STUDY = Study(
    "introspection",
    "Introspection fine-tuning",
    "introspection.toml",
    open_src="""use interp_kit::prelude::*;
use interp_kit::studies::introspection::IntrospectionStudy;
let study = IntrospectionStudy::open(config_path)?;
println!("mode {}, run {}, {} blocks, yes {:?}, no {:?}", study.mode().name(), study.run.path().display(), study.model.n_layers(), study.yes.tokens, study.no.tokens);""",
    mode_note=("`INTERP_KIT_STUDY_MODE=ci` runs a tiny version (one vector per tier, one training step, 4 new tokens per "
               "task answer): its numbers only show that the pipeline works. Every phase is a resumable sweep in the run "
               "directory `results/introspection/<run_id>` (`_ci` appended in ci mode), which later notebooks read."),
    aliases=[(["intro::"], "use interp_kit::studies::introspection as intro;")],
)
code = STUDY.code
notebook = STUDY.notebook

NB = {}

NB["00_baseline"] = notebook(
    "phase 0: vectors and the base model's baseline",
    "Plan `shared/seeds/002_*.txt`. Steer-then-remove: user turn 1 and assistant turn 1 are prefilled into the KV cache "
    "with `strength · v` added to `resid_post` of a band of blocks; the detection question and \"The answer is\" extend "
    "the cache unsteered, and the next token gives P(yes) and P(no). Random unit vectors (train / held-out ids) and "
    "concept vectors (`datasets/introspection/concepts.txt`, repeng-style PCA over reply openings) are written once. "
    "The baseline reads the base model with and without the info paragraph, unsteered and steered at each band × "
    "strength (strength 0 is the clean run: a law row), and on control questions whose answer is no.",
    [
        code("let vt = study.vectors()?;\nprintln!(\"{}\", pretty(&vt).max_rows(12));"),
        code("let acc = study.baseline()?;\nprintln!(\"{}\", pretty(&acc).digits(3));"),
        md("## P(yes) and its change per tier, band and strength\n`mean_delta_p_yes` and `mean_delta_log_odds` are "
           "against the same conversation unsteered (log-odds with probabilities clipped at 1e-7)."),
        code("let sm = study.run.read_csv(\"baseline_summary.csv\")?;\nprintln!(\"{}\", pretty(&sm).digits(3).max_rows(60));"),
        code("intro::figures::show(&study, \"baseline_delta_log_odds\", &intro::figures::fig_baseline(&intro::summarize(&study.baseline_rows()?))?)?;"),
        md("## False positives: unsteered detection rows saying yes"),
        code("let rows = study.baseline_rows()?;\nfor info in [false, true] {\n"
             "    let clean: Vec<_> = rows.iter().filter(|r| r.info == info && r.question == \"detect\" && r.tier == \"unsteered\").collect();\n"
             "    let p = intro::rate(clean.iter().filter(|r| r.says_yes).count(), clean.len());\n"
             "    println!(\"info {info}: FPR {:.3} [{:.3}, {:.3}] over {} conversations\", p.estimate, p.lo, p.hi, p.n);\n}"),
    ],
)

NB["01_experiment1"] = notebook(
    "phase 1: training on random vectors",
    "Training set: `n_examples` conversations, `steered_ratio` of them steered by a random train vector at a drawn "
    "strength and band; LoRA on the answer token (\" yes\" / \" no\" after \"The answer is\") with the steered prefix "
    "fixed in the KV cache, so the gradient only flows through the question (`lora::train_lora_prefixed`). Every "
    "variant of the config's sweep (one factor at a time from the base setup) is one resumable cell. Three tiers: train "
    "vectors, held-out random vectors, concept vectors; the accuracy is over each steered row with the clean run of its "
    "conversation (balanced), with Wilson intervals; FPR on the unsteered runs; the yes-bias check is the share of control "
    "questions answered yes.",
    [
        code("let acc = study.experiment1()?;\nprintln!(\"{}\", pretty(&acc).digits(3).max_rows(60));"),
        code("intro::figures::show(&study, \"exp1_tiers\", &intro::figures::fig_tiers(\"Experiment 1: trained on random vectors\", &intro::tier_accuracy(&study.experiment_rows(\"exp1\")?))?)?;"),
        md("## Training logs"),
        code("for v in study.variants() {\n    let log = study.train_log(\"exp1\", &v.name)?;\n"
             "    let first = log.steps.first().map(|s| s.loss).unwrap_or(f64::NAN);\n    let last = log.steps.last().map(|s| s.loss).unwrap_or(f64::NAN);\n"
             "    println!(\"{:<24} {} examples ({} steered), {} steps, loss {first:.3} -> {last:.3}\", v.name, log.n_examples, log.n_steered, log.steps.len());\n}"),
        md("## Before vs after, per tier, band and strength"),
        code("let sm = study.run.read_csv(\"exp1_summary.csv\")?;\nprintln!(\"{}\", pretty(&sm).digits(3).max_rows(80));"),
    ],
)

NB["02_experiment2"] = notebook(
    "phase 2: training on concept vectors",
    "The base training setup on the concept vectors' train split; evaluated on train concepts, held-out concepts and "
    "held-out random vectors. The comparison table puts each trained model's accuracy on what it saw, on held-out "
    "vectors of its kind, and on the other kind side by side.",
    [
        code("let acc = study.experiment2()?;\nprintln!(\"{}\", pretty(&acc).digits(3));"),
        code("intro::figures::show(&study, \"exp2_tiers\", &intro::figures::fig_tiers(\"Experiment 2: trained on concept vectors\", &intro::tier_accuracy(&study.experiment_rows(\"exp2\")?))?)?;"),
        code("let g = study.generalisation()?;\nprintln!(\"{}\", pretty(&g).digits(3));"),
    ],
)

NB["03_tasks"] = notebook(
    "phase 3: localisation tasks (experiments 3-6)",
    "Sentence localisation (ten numbered sentences, one to three steered; answer \"Sentences 3, 7\"), layer localisation "
    "(early / middle / late), concept identification (four options) and magnitude (weak / moderate / strong), answered "
    "in free text after \"Answer:\" and read by tolerant parsers; unparseable answers count as wrong and are reported as "
    "such. Chance is the accuracy of a uniform guess. `base_model` is the untrained model; with `task_train_examples` > 0, "
    "`trained` is a LoRA per task trained on the right answers (train-split vectors, steered prefix fixed in the cache) "
    "and evaluated on held-out vectors.",
    [
        code("let ts = study.tasks()?;\nprintln!(\"{}\", pretty(&ts).digits(3));"),
        code("for r in study.task_rows()?.iter().take(12) {\n"
             "    println!(\"[{}] truth {:?}, answer {:?} -> {:?} (correct {})\", r.task, r.truth, r.answer, r.parsed, r.correct);\n}"),
    ],
)

NB["04_analysis"] = notebook(
    "phase 4: attention, LoRA weights and the logit lens",
    "Attention mass per head from the question's positions onto the steered positions (one forward steered at those "
    "positions only, which equals steer-then-remove), steered vs clean, base model vs experiment 1's adapter; the "
    "Frobenius norm of each LoRA module's ΔW; and P(yes) read by the logit lens from every block at the answer position.",
    [
        code("let att = study.analysis()?;\nprintln!(\"{}\", pretty(&att).digits(4).max_rows(40));"),
        md("## The heads that attend most more to the steered positions when steered"),
        code("{\nlet mut rows: Vec<intro::AttnSummary> = interp_kit::tables::from_df(&att)?;\nrows.sort_by(|a, b| b.diff.total_cmp(&a.diff));\n"
             "println!(\"{}\", pretty(&interp_kit::tables::to_df(&rows[..rows.len().min(15)])?).digits(4));\n}"),
        md("## Which layers did LoRA change most?"),
        code("if study.run.exists(\"lora_norms.csv\") {\n    let n = study.run.read_csv(\"lora_norms.csv\")?;\n"
             "    println!(\"{}\", pretty(&group_mean(&n, &[\"adapter\", \"layer\"], &[\"delta_norm\"])?).digits(4).max_rows(60));\n}"),
        md("## Logit lens: P(yes) per block at the answer position"),
        code("let lens = study.run.read_csv(\"lens_summary.csv\")?;\nprintln!(\"{}\", pretty(&lens).digits(4).max_rows(100));"),
    ],
)

NB["05_report"] = notebook(
    "report: the plan's key predictions beside this run's",
    "Training accuracy > 90 %, held-out random 70-85 %, concept vectors 50-70 %, low rank generalises better, magnitude "
    "correlates with detection, middle layers hardest, token localisation ~60 %: each beside the measured value with its "
    "Wilson interval (`null` with the reason when this mode cannot measure it). Written to `report.json` and "
    "`reports/report.md`.",
    [
        code("let rep = study.report()?;\nprintln!(\"{}\", rep.markdown());"),
    ],
)

# Not numbered: `scripts/run_notebooks.sh --all` runs the numbered phases; `scripts/test.sh` runs this
# one at ci size (every phase after one kernel start).
NB["smoke"] = notebook(
    "smoke: every phase once",
    "Runs every phase in order (vectors and baseline, experiments 1 and 2, the localisation tasks, the analysis, the "
    "report) at the config's mode; the numbered notebooks run the same phases one by one with their tables. This is "
    "the notebook `scripts/test.sh` runs at ci size.",
    [
        code("let t0 = std::time::Instant::now();\nstudy.vectors()?;\nprintln!(\"{}\", pretty(&study.baseline()?).digits(3));"),
        code("println!(\"{}\", pretty(&study.experiment1()?).digits(3));\nprintln!(\"{}\", pretty(&study.experiment2()?).digits(3));"),
        code("println!(\"{}\", pretty(&study.tasks()?).digits(3));\nprintln!(\"{} analysis rows\", study.analysis()?.height());"),
        code("let rep = study.report()?;\nprintln!(\"{}\", rep.markdown());\nprintln!(\"all phases in {:.1} s\", t0.elapsed().as_secs_f64());"),
    ],
)


if __name__ == "__main__":
    STUDY.write(NB)
