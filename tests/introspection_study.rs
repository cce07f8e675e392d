//! The introspection study (issue 19): its config in every mode and its errors, and every phase on
//! the tiny Qwen2 fixture with the byte-level chat tokenizer (random weights: the numbers are
//! noise; the laws between the tables are not): row counts, a steered row against the protocol
//! run directly, strength 0 against the clean run, Wilson intervals against a hand computation,
//! the logit lens's last layer against the readout, and a rerun that recomputes nothing.
mod common;
use interp_kit::hooks::Hooks;
use interp_kit::interp::introspection::{generate_after_prefix, steer_hooks, yes_no_after_prefix, SteeredRow, SteeredTokens};
use interp_kit::interp::vector_sets::Split;
use interp_kit::runs::config::Mode;
use interp_kit::studies::introspection::data::{Conversation, Question};
use interp_kit::studies::introspection::tasks::{self, Task};
use interp_kit::studies::introspection::*;
use interp_kit::tables::from_df;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn config_text() -> String {
    std::fs::read_to_string(root().join("configs/introspection.toml")).unwrap()
}

fn parse(text: &str) -> anyhow::Result<IntrospectionConfig> {
    IntrospectionConfig::from_toml(text, root().join("configs"))
}

#[test]
fn every_mode_loads_and_bad_configs_name_the_field() {
    let cfg = IntrospectionConfig::load(root().join("configs/introspection.toml")).unwrap();
    let data = data::StudyData::load(root().join("datasets/introspection")).unwrap();
    assert!(data.concepts.len() >= 100, "the plan asks for 100+ concepts");
    for m in [Mode::Ci, Mode::Fast, Mode::Full] {
        let s = cfg.sizes_of(m);
        assert!(s.n_concepts <= data.concepts.len() && s.n_conversations <= data.replies.len() && s.n_controls <= data.controls.len(), "{m:?}");
    }
    // ci is one training cell, fast a small slice, full the plan's sweep one factor at a time
    assert_eq!(cfg.sizes_of(Mode::Ci).sweep.variants(&cfg.sizes_of(Mode::Ci).train).len(), 1);
    let fast = cfg.sizes_of(Mode::Fast);
    let fv: Vec<String> = fast.sweep.variants(&fast.train).into_iter().map(|v| v.name).collect();
    assert_eq!(fv, vec!["base", "rank=16"]);
    let full = cfg.sizes_of(Mode::Full);
    let v = full.sweep.variants(&full.train);
    assert_eq!(v.len(), 1 + 4 + 1 + 2 + 2 + 2 + 2 + 3 + 2 + 2 + 2 + 2 + 2 + 4);
    let q2 = v.iter().find(|v| v.name == "question=2").unwrap();
    assert_eq!((q2.train.question, q2.train.tokens, q2.train.rank), (2, SteeredTokens::Context, full.train.rank));
    assert!(v.iter().any(|v| v.name == "tokens=user_only" && v.train.tokens == SteeredTokens::UserOnly));
    let r4 = v.iter().find(|v| v.name == "rank=4").unwrap();
    assert_eq!((r4.train.rank, r4.train.lr, r4.train.targets.as_str()), (4, full.train.lr, "qkvo"));
    assert!(v.iter().any(|v| v.name == "bands=[single]" && v.train.bands == vec!["single".to_string()]));
    assert_eq!(full.train.n_examples, 10_000);

    let text = config_text();
    let bad = |from: &str, to: &str| -> String {
        assert!(text.contains(from), "{from:?} is not in the config");
        format!("{:#}", parse(&text.replacen(from, to, 1)).unwrap_err())
    };
    let e = bad("eval_vectors = 1\n", "eval_vectors = 0\n");
    assert!(e.contains("[modes.ci]") && e.contains("eval_vectors"), "{e}");
    let e = bad("eval_vectors = 4\n", "eval_vectors = 4\nbogus = 1\n");
    assert!(e.contains("bogus"), "{e}");
    let e = bad("eval_bands = [\"middle\"]", "eval_bands = [\"centre\"]");
    assert!(e.contains("[modes.ci]") && e.contains("centre"), "{e}");
    let e = bad("targets = \"qkvo\"", "targets = \"everything\"");
    assert!(e.contains("[modes.ci]") && e.contains("everything"), "{e}");
    let e = bad("rank = [16]", "rank = [0]");
    assert!(e.contains("[modes.fast]") && e.contains("rank=0") && e.contains("rank"), "{e}");
    let e = bad("n_suffixes = 2", "n_suffixes = 1");
    assert!(e.contains("[modes.ci]") && e.contains("n_suffixes"), "{e}");
    let e = bad("steered_ratio = 0.5", "steered_ratio = 1.5");
    assert!(e.contains("[modes.ci]") && e.contains("steered_ratio"), "{e}");
    let e = bad("yes = \" yes\"", "yes = \" no\"");
    assert!(e.contains("protocol.yes"), "{e}");
    let e = bad("[run]", "[run]\nextra = 2");
    assert!(e.contains("extra"), "{e}");
}

fn part_files(dir: &Path) -> BTreeMap<PathBuf, std::time::SystemTime> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(part_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.insert(p.clone(), std::fs::metadata(&p).unwrap().modified().unwrap());
        }
    }
    out
}

/// Wilson's 95 % interval written out independently of the kit.
fn hand_wilson(k: usize, n: usize) -> (f64, f64) {
    let z = 1.959_963_984_540_054f64;
    let (p, nf) = (k as f64 / n as f64, n as f64);
    let d = 1.0 + z * z / nf;
    let c = (p + z * z / (2.0 * nf)) / d;
    let h = z / d * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt();
    (c - h, c + h)
}

#[test]
fn tiny_qwen2_every_phase_and_a_rerun_recomputes_nothing() {
    let mut cfg = IntrospectionConfig::load(root().join("configs/introspection.toml")).unwrap();
    cfg.mode = Mode::Ci;
    // the byte-level tokenizer has single tokens for letters only
    cfg.protocol.yes = "y".into();
    cfg.protocol.no = "n".into();
    {
        // the ci sizes with two conversations (so clean runs differ) and a strength-0 law row
        let s = &mut cfg.modes.ci;
        s.n_train_vectors = 2;
        s.n_heldout_vectors = 2;
        s.n_concepts = 4;
        s.concept_heldout_every = 2;
        s.n_conversations = 2;
        s.n_controls = 1;
        s.baseline_vectors = 1;
        s.baseline_bands = vec!["middle".into()];
        s.baseline_strengths = vec![0.0, 20.0];
        s.info = vec![false, true];
        s.eval_vectors = 1;
        s.eval_bands = vec!["middle".into()];
        s.eval_strengths = vec![20.0];
        s.eval_info = vec![false];
        s.task_examples = 1;
        s.task_train_examples = 2;
        s.analysis_rows = 1;
        s.train.n_examples = 2;
        s.train.n_vectors = 2;
        s.train.max_steps = Some(1);
        // a step large enough to move a random model visibly
        s.train.lr = 1e-2;
    }
    let tmp = tempfile::tempdir().unwrap();
    let study = IntrospectionStudy::with_model(cfg, common::tiny_long_qwen2(tmp.path()), tmp.path()).unwrap();
    let m = &study.model;
    let tok = m.tok().unwrap();

    // 0. vectors: seeded random unit vectors and unit concept vectors, both with splits
    let vt = study.vectors().unwrap();
    assert_eq!(vt.height(), 4 + 4);
    let concepts = study.concept_vectors().unwrap();
    assert_eq!(concepts.ids(Split::HeldOut), vec![1, 3]);
    for v in &concepts.vectors {
        assert!((v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt() - 1.0).abs() < 1e-5);
    }

    // 0. baseline: per info setting, 2 clean + 1 vector x 2 strengths + 1 control unsteered and
    // steered (random cell) and 1 concept vector x 2 strengths (concept cell)
    let acc0: Vec<TierRow> = from_df(&study.baseline().unwrap()).unwrap();
    let rows = study.baseline_rows().unwrap();
    assert_eq!(rows.len(), 2 * (2 + 2 + 2 + 2));
    for info in [false, true] {
        let clean = |conv: i64| rows.iter().find(|r| r.info == info && r.question == "detect" && r.tier == "unsteered" && r.conversation == conv).unwrap();
        for r in rows.iter().filter(|r| r.info == info && r.question == "detect" && r.tier != "unsteered") {
            let c = clean(r.conversation);
            assert_eq!(r.clean_p_yes, c.p_yes);
            assert!((r.delta_p_yes - (r.p_yes - c.p_yes)).abs() < 1e-12);
            if r.strength == 0.0 {
                // law: strength 0 is the clean run (up to the padding of a different batch)
                assert!(!r.steered && (r.p_yes - c.p_yes).abs() < 1e-5 && (r.log_odds - c.log_odds).abs() < 1e-4, "{r:?} vs {c:?}");
            } else {
                assert!(r.steered);
                assert_eq!(r.correct, r.says_yes);
            }
        }
    }
    // a steered row equals the protocol run alone
    let r = rows.iter().find(|r| r.info && r.tier == "random" && r.strength == 20.0 && r.question == "detect").unwrap();
    let p = Conversation::detect(r.conversation as usize, true).build(&study.data, tok, &study.protocol_base(SteeredTokens::Context)).unwrap();
    let v = study.random_vectors().unwrap();
    let pre = steer_hooks(m, v.get(r.vector_id as u32).unwrap(), r.layer_start as usize..r.layer_end as usize, 20.0, &p.steered, p.ids.len()).unwrap();
    let direct = yes_no_after_prefix(m, &p.ids, p.split, &pre, &Hooks::new(), &study.yes, &study.no).unwrap();
    assert!((direct.p_yes - r.p_yes).abs() < 1e-5 && (direct.p_no - r.p_no).abs() < 1e-5, "{direct:?} vs {r:?}");
    assert_eq!((r.layer_start, r.layer_end), (1, 2), "middle band of 3 blocks");
    assert!((r.p_yes - r.clean_p_yes).abs() > 1e-7, "steering changed nothing");
    // accuracies with Wilson intervals recomputed by hand
    for a in &acc0 {
        let steered: Vec<&ReadoutRow> = rows.iter().filter(|x| x.info == a.info && x.question == "detect" && x.steered && x.tier == a.tier).collect();
        let clean = |c: i64| rows.iter().find(|x| x.info == a.info && x.question == "detect" && x.tier == "unsteered" && x.conversation == c).unwrap();
        let k: usize = steered.iter().map(|s| s.correct as usize + clean(s.conversation).correct as usize).sum();
        let n = 2 * steered.len();
        let (lo, hi) = hand_wilson(k, n);
        assert!((a.accuracy - k as f64 / n as f64).abs() < 1e-12);
        assert!((a.acc_lo - lo.max(0.0)).abs() < 1e-9 && (a.acc_hi - hi.min(1.0)).abs() < 1e-9, "{a:?} vs ({lo}, {hi})");
    }
    assert_eq!(acc0.len(), 2 * 2);

    // 1. experiment 1: the base model and the trained adapter, 2 clean + 3 tiers + 2 controls each
    let acc1: Vec<TierRow> = from_df(&study.experiment1().unwrap()).unwrap();
    let e1 = study.experiment_rows("exp1").unwrap();
    assert_eq!(e1.len(), 2 * (2 + 3 + 2));
    assert_eq!(acc1.len(), 2 * 3);
    let log = study.train_log("exp1", "base").unwrap();
    assert_eq!((log.n_examples, log.n_steered, log.steps.len()), (2, 1, 1));
    let (ex, steers) = study.training_examples(&study.sizes().train, false, 5).unwrap();
    for (e, s) in ex.iter().zip(&steers) {
        let target = e.suffix[*e.targets.last().unwrap()];
        assert_eq!(target, if s.is_active() { study.yes_id } else { study.no_id });
        assert_eq!(e.targets, vec![e.suffix.len() - 1]);
        assert!(s.positions.iter().all(|&i| i < e.prefix.len()));
    }
    let base_rows: Vec<&ReadoutRow> = e1.iter().filter(|r| r.model == "base_model" && r.tier != "unsteered").collect();
    let trained = |b: &ReadoutRow| e1.iter().find(|r| r.model != b.model && r.tier == b.tier && r.question == b.question && r.conversation == b.conversation && r.vector_id == b.vector_id).unwrap().p_yes;
    assert!(base_rows.iter().any(|b| (trained(b) - b.p_yes).abs() > 1e-7), "training changed nothing");
    // the trained adapter's readout equals the protocol run alone with the adapter on both passes
    let a = study.adapter("exp1", "base").unwrap().unwrap();
    let tr = e1.iter().filter(|r| r.model == "base").find(|r| r.tier == "random_heldout" && r.question == "detect").unwrap();
    let p = Conversation::detect(tr.conversation as usize, false).build(&study.data, tok, &study.protocol_base(SteeredTokens::Context)).unwrap();
    let pre = steer_hooks(m, v.get(tr.vector_id as u32).unwrap(), tr.layer_start as usize..tr.layer_end as usize, tr.strength, &p.steered, p.ids.len()).unwrap().lora(&a);
    let direct = yes_no_after_prefix(m, &p.ids, p.split, &pre, &Hooks::new().lora(&a), &study.yes, &study.no).unwrap();
    assert!((direct.p_yes - tr.p_yes).abs() < 1e-5, "{direct:?} vs {tr:?}");

    // 2. experiment 2 and the comparison
    let acc2: Vec<TierRow> = from_df(&study.experiment2().unwrap()).unwrap();
    assert_eq!(acc2.len(), 2 * 3);
    assert!(acc2.iter().any(|r| r.model == "concept_base" && r.tier == "concept_heldout"));
    let g = study.generalisation().unwrap();
    assert_eq!(g.height(), 6);

    // 3. tasks: one answer per task by the base model and by the task's LoRA, parsed by the
    // task's parser; the LoRA learnt the answer tokens after "Answer:" with the prefix steered
    let ts: Vec<TaskSummary> = from_df(&study.tasks().unwrap()).unwrap();
    assert_eq!(ts.len(), 4 * 2);
    let trows = study.task_rows().unwrap();
    assert_eq!(trows.len(), 4 * 2);
    for task in Task::ALL {
        let (ex, steers) = study.task_training_examples(task).unwrap();
        let train = study.task_train_examples(task).unwrap();
        assert_eq!(ex.len(), 2);
        for ((e, s), t) in ex.iter().zip(&steers).zip(&train) {
            let answer: Vec<u32> = e.targets.iter().map(|&i| e.suffix[i]).collect();
            assert_eq!(tok.decode(&answer, false).unwrap(), format!(" {}", t.truth));
            assert_eq!(*e.targets.last().unwrap(), e.suffix.len() - 1);
            assert!(s.is_active() && s.positions.iter().all(|&i| i < e.prefix.len()));
        }
        // training vectors come from the train split, evaluation vectors from the held-out one
        if task != Task::Concept {
            assert!(train.iter().all(|t| study.random_vectors().unwrap().ids(Split::Train).contains(&t.vector_id)));
            assert!(study.task_examples(task).unwrap().iter().all(|t| study.random_vectors().unwrap().ids(Split::HeldOut).contains(&t.vector_id)));
        }
        let log = study.train_log("tasks", task.name()).unwrap();
        assert_eq!((log.n_examples, log.steps.len()), (2, 1));
    }
    for r in &trows {
        let task = Task::from_name(&r.task).unwrap();
        let ex = study.task_examples(task).unwrap().into_iter().find(|e| e.index as i64 == r.index).unwrap();
        let parsed = tasks::parse(&ex, &r.answer);
        assert_eq!(r.parsed_ok, parsed.is_some());
        assert_eq!(r.parsed, parsed.clone().unwrap_or_default());
        assert_eq!(r.correct, parsed.as_deref() == Some(ex.truth.as_str()));
        let (p, steer) = study.task_row(&ex).unwrap();
        assert_eq!(r.n_steered_tokens as usize, steer.positions.len());
        if task == Task::Sentences {
            // the steered tokens decode to the steered sentences' lines
            let text = tok.decode(&steer.positions.iter().map(|&i| p.ids[i]).collect::<Vec<_>>(), false).unwrap();
            for &k in &ex.steered_sentences {
                assert!(text.contains(&tasks::sentence_line(&ex.sentences, k)), "{text:?}");
            }
            assert!(steer.positions.len() < p.steered.len());
        }
    }

    // a batch generation continues each conversation as it would alone
    let rows3: Vec<SteeredRow> = study
        .analysis_conversations()
        .unwrap()
        .into_iter()
        .chain(study.analysis_conversations().unwrap().into_iter().map(|(p, _)| (p, interp_kit::interp::row_steer::RowSteer::none())))
        .map(|(p, s)| SteeredRow { ids: p.ids.clone(), split: p.split, steer: s })
        .collect();
    let g = interp_kit::generate::GenerateConfig::greedy(3);
    let gens = generate_after_prefix(m, &rows3, None, &g).unwrap();
    for (r, row) in rows3.iter().enumerate() {
        assert_eq!(gens[r].tokens, generate_after_prefix(m, std::slice::from_ref(row), None, &g).unwrap()[0].tokens, "row {r}");
    }

    // 4. analysis: attention per head, ΔW norms, the logit lens
    let asum: Vec<AttnSummary> = from_df(&study.analysis().unwrap()).unwrap();
    let (nl, nh) = (m.n_layers(), m.info.n_heads);
    assert_eq!(asum.len(), 2 * nl * nh);
    let attn: Vec<AttnRow> = from_df(&study.run.read_parquet("attention.parquet").unwrap()).unwrap();
    assert_eq!(attn.len(), 2 * 2 * nl * nh);
    assert!(attn.iter().all(|r| (0.0..=1.0 + 1e-6).contains(&r.mass)));
    let norms = study.run.read_csv("lora_norms.csv").unwrap();
    assert_eq!(norms.height(), (2 + 4) * nl * 4, "exp1/base, exp2/concept_base and the 4 task adapters, q/k/v/o of every layer");
    let lens: Vec<LensRow> = from_df(&study.run.read_parquet("lens.parquet").unwrap()).unwrap();
    assert_eq!(lens.len(), 2 * 2 * nl);
    let (p, st) = study.analysis_conversations().unwrap().remove(0);
    let pre = steer_hooks(m, st.vector.as_ref().unwrap(), st.layers.clone(), st.strength, &p.steered, p.ids.len()).unwrap();
    let direct = yes_no_after_prefix(m, &p.ids, p.split, &pre, &Hooks::new(), &study.yes, &study.no).unwrap();
    let last = lens.iter().find(|r| r.model == "base_model" && r.steered && r.layer == nl as i64 - 1).unwrap();
    assert!((last.p_yes - direct.p_yes).abs() < 1e-5, "the lens's last block is the model's output: {last:?} vs {direct:?}");

    // 5. report: seven predictions, nulls as nulls with the reason
    let rep = study.report().unwrap();
    assert_eq!(rep.findings.len(), 7);
    let f = |n: &str| rep.findings.iter().find(|f| f.name == n).unwrap().clone();
    let tr_acc = acc1.iter().find(|r| r.model == "base" && r.tier == "random_train").unwrap();
    assert_eq!((f("train_accuracy").measured, f("train_accuracy").ci_lo), (Some(tr_acc.accuracy), Some(tr_acc.acc_lo)));
    for n in ["low_rank_generalises", "magnitude_correlation", "middle_hardest"] {
        assert!(f(n).measured.is_none() && !f(n).detail.is_empty(), "{n}: ci has one rank, one strength and one band");
    }
    let tl = f("token_localisation");
    assert_eq!(tl.measured, Some(trows.iter().find(|r| r.task == "sentences" && r.model == "trained").unwrap().correct as u8 as f64));
    let json = std::fs::read_to_string(study.run.path().join("report.json")).unwrap();
    assert!(json.contains("\"measured\": null"));
    assert!(study.run.path().join("reports/report.md").is_file());
    // the figures: one line per (kind, band) in the baseline; a bar group per model in each
    // experiment, labelled by the model (both adapters of experiment 1 and the base model)
    for stem in ["baseline_delta_log_odds", "exp1_tiers", "exp2_tiers"] {
        assert!(study.run.path().join(format!("figures/{stem}.png")).is_file(), "{stem}");
    }
    let svg = std::fs::read_to_string(study.run.path().join("figures/exp1_tiers.svg")).unwrap();
    for label in ["base_model", "random_heldout", "concept"] {
        assert!(svg.contains(label), "{label} missing from the experiment-1 figure");
    }
    let svg = std::fs::read_to_string(study.run.path().join("figures/baseline_delta_log_odds.svg")).unwrap();
    assert!(svg.contains("random, middle") && svg.contains("concept, middle"));

    // A rerun recomputes nothing: every part file stays as it was, the tables are the same.
    let before = part_files(&study.run.path().join("parts"));
    assert_eq!(before.len(), 2 * 2 + 2 + 2 + 4 * 2 + 2 + 2, "parts: baseline, exp1, exp2, tasks, attention, lens");
    let again = (study.baseline().unwrap(), study.experiment1().unwrap(), study.experiment2().unwrap(), study.tasks().unwrap(), study.analysis().unwrap());
    assert_eq!(part_files(&study.run.path().join("parts")), before);
    assert_eq!(from_df::<TierRow>(&again.1).unwrap(), acc1);
    assert_eq!(study.experiment_rows("exp1").unwrap(), e1);
}

/// The plan's "which tokens" and "question phrasing" sweeps: each variant trains and is read with
/// its own steered tokens and question, and each row equals that protocol run alone with the
/// variant's adapter.
#[test]
fn tiny_qwen2_token_and_question_variants_use_their_own_protocol() {
    let mut cfg = IntrospectionConfig::load(root().join("configs/introspection.toml")).unwrap();
    cfg.mode = Mode::Ci;
    cfg.protocol.yes = "y".into();
    cfg.protocol.no = "n".into();
    {
        let s = &mut cfg.modes.ci;
        (s.n_train_vectors, s.n_heldout_vectors, s.n_concepts, s.concept_heldout_every) = (2, 2, 4, 2);
        (s.n_conversations, s.n_controls, s.eval_vectors) = (1, 1, 1);
        s.eval_bands = vec!["middle".into()];
        s.eval_strengths = vec![20.0];
        s.eval_info = vec![false];
        (s.train.n_examples, s.train.n_vectors, s.train.max_steps, s.train.lr) = (2, 2, Some(1), 1e-2);
        s.sweep.tokens = vec![SteeredTokens::UserOnly];
        s.sweep.question = vec![2];
    }
    let tmp = tempfile::tempdir().unwrap();
    let study = IntrospectionStudy::with_model(cfg.clone(), common::tiny_long_qwen2(tmp.path()), tmp.path()).unwrap();
    let names: Vec<String> = study.variants().into_iter().map(|v| v.name).collect();
    assert_eq!(names, vec!["base", "tokens=user_only", "question=2"]);
    // training examples: user_only steers user turn 1 only, so its steered prefix is shorter
    let v = study.variants();
    let (ex_c, st_c) = study.training_examples(&v[0].train, false, 5).unwrap();
    let (ex_u, st_u) = study.training_examples(&v[1].train, false, 5).unwrap();
    let (ex_q, _) = study.training_examples(&v[2].train, false, 5).unwrap();
    assert!(ex_u[0].prefix.len() < ex_c[0].prefix.len());
    assert_eq!([ex_u[0].prefix.clone(), ex_u[0].suffix.clone()].concat(), [ex_c[0].prefix.clone(), ex_c[0].suffix.clone()].concat());
    for (a, b) in st_u.iter().zip(&st_c).filter(|(a, _)| a.is_active()) {
        assert!(a.positions.len() < b.positions.len() && a.positions.iter().all(|p| b.positions.contains(p)));
    }
    assert_eq!(ex_q[0].prefix, ex_c[0].prefix, "the question follows the steered prefix");
    assert_ne!(ex_q[0].suffix, ex_c[0].suffix);

    study.experiment1().unwrap();
    let e1 = study.experiment_rows("exp1").unwrap();
    let tok = study.model.tok().unwrap();
    let vs = study.random_vectors().unwrap();
    for (variant, tokens, question) in [("tokens=user_only", SteeredTokens::UserOnly, 0), ("question=2", SteeredTokens::Context, 2)] {
        let a = study.adapter("exp1", variant).unwrap().unwrap();
        let r = e1.iter().find(|r| r.model == variant && r.tier == "random_heldout" && r.question == "detect").unwrap();
        let conv = Conversation { question: Question::Detect(question), ..Conversation::detect(r.conversation as usize, false) };
        let p = conv.build(&study.data, tok, &study.protocol_base(tokens)).unwrap();
        let pre = steer_hooks(&study.model, vs.get(r.vector_id as u32).unwrap(), r.layer_start as usize..r.layer_end as usize, r.strength, &p.steered, p.ids.len()).unwrap().lora(&a);
        let direct = yes_no_after_prefix(&study.model, &p.ids, p.split, &pre, &Hooks::new().lora(&a), &study.yes, &study.no).unwrap();
        assert!((direct.p_yes - r.p_yes).abs() < 1e-5, "{variant}: {direct:?} vs {r:?}");
        // and the protocol's own prompt gives something else
        let own = Conversation::detect(r.conversation as usize, false).build(&study.data, tok, &study.protocol_base(SteeredTokens::Context)).unwrap();
        assert!(own.ids != p.ids || own.steered != p.steered);
    }
    // a phrasing beyond questions.txt is named
    let mut bad = cfg;
    bad.modes.ci.sweep.question = vec![99];
    let e = IntrospectionStudy::with_model(bad, common::tiny_long_qwen2(tmp.path()), &tmp.path().join("b")).err().unwrap();
    assert!(format!("{e:#}").contains("questions.txt"), "{e:#}");
}

/// The ci size on the embedded model, every phase, with its wall time (run with `--ignored`).
#[test]
#[ignore]
fn embedded_ci_pipeline() {
    let Some(model) = common::embedded() else { return };
    let mut cfg = IntrospectionConfig::load(root().join("configs/introspection.toml")).unwrap();
    cfg.mode = Mode::Ci;
    let tmp = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let study = IntrospectionStudy::with_model(cfg, model, tmp.path()).unwrap();
    let mut last = std::time::Instant::now();
    let mut lap = |what: &str| {
        println!("{what}: {:.1} s (total {:.1} s)", last.elapsed().as_secs_f64(), t0.elapsed().as_secs_f64());
        last = std::time::Instant::now();
    };
    study.vectors().unwrap();
    lap("vectors");
    println!("{}", study.baseline().unwrap());
    lap("0 baseline");
    println!("{}", study.experiment1().unwrap());
    lap("1 experiment 1");
    println!("{}", study.experiment2().unwrap());
    println!("{}", study.generalisation().unwrap());
    lap("2 experiment 2");
    println!("{}", study.tasks().unwrap());
    lap("3 tasks");
    println!("{}", study.analysis().unwrap());
    lap("4 analysis");
    println!("{}", study.report().unwrap().markdown());
    lap("5 report");
}
