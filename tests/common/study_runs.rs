//! Whole studies at a tiny size on the tiny fixture models, every phase the series examples (and
//! notebooks) run, writing what they write: shared by tests/kill_resume.rs (as the child process
//! that is killed) and tests/determinism.rs (run twice). Each returns the run directory.
//! Include with `#[path = "common/study_runs.rs"] mod study_runs;` beside `mod common;`.
#![allow(dead_code)]
use anyhow::Result;
use interp_kit::runs::config::{LayerSpec, Mode};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The steering-reliability series (examples/steering_series.rs) on the tiny GPT-NeoX: directions
/// (safetensors and GGUF), the sweep (2 blocks × add/ablate × α {0, 2} × 3 splits + baselines, 4
/// prompts each, sampled), the alternative-prefix directions, the sanity reruns, the summary,
/// figures and the examples report. Run id `t` under `<root>/steering_reliability/`.
pub fn steering(root: &Path) -> Result<PathBuf> {
    use interp_kit::studies::steering_reliability::*;
    let mut cfg = load_config(repo().join("configs/steering_reliability_tiny_neox.toml"), Some(Mode::Ci))?;
    cfg.experiment.layers.truncate(2);
    cfg.experiment.alphas = vec![0.0, 2.0];
    let study = Study::open(cfg)?;
    let run = study_run_dir(&study, root, "t")?;
    let dirs = study.directions(PrefixSet::Main)?;
    save_directions(&study, &run, &dirs, "directions")?;
    study.run_sweep(&run, &dirs)?;
    let alt = study.directions(PrefixSet::Alternative)?;
    save_directions(&study, &run, &alt, "directions_alt_prefix")?;
    study.run_sanity(&run, &alt, &dirs, 2.0)?;
    let rows = rows_from_df(&run.results()?)?;
    let points = operating_points(&cell_rates(&rows))?;
    run.write_summary(&summary_table(&points)?)?;
    for (stem, fig) in &figures(&points)? {
        run.save_figure(stem, fig)?;
    }
    // A random model may have no coherent steered setting; then there is no example to report.
    if let Ok(best) = best_point(&points) {
        run.write_text("reports/examples.md", &examples_report(&rows, best.layer, &best.intervention, best.alpha, 2)?)?;
    }
    Ok(run.path().to_path_buf())
}


/// The ALL-CAPS inoculation series (examples/inoculation_series.rs, phases 1-7) on the tiny Qwen2:
/// directions at blocks 0 and 2, alignment, the loss-matched control, specificity, three 3-step
/// LoRA fine-tunes (neutral, inoculation, control), drift and the acceptance criteria. The data
/// go to `<root>/data`, the run to `<root>/inoculation_caps/run_001_ci/`.
pub fn inoculation(root: &Path) -> Result<PathBuf> {
    use interp_kit::studies::inoculation_caps::{self as inoc, InoculationConfig};
    let text = std::fs::read_to_string(repo().join("configs/inoculation_caps.toml"))?.replace("mode = \"fast\"", "mode = \"ci\"");
    let mut cfg = InoculationConfig::from_toml(&text, repo().join("configs"))?;
    let p = &mut cfg.prompts;
    (p.neutral, p.inoculation, p.promote, p.suppress) = ("Hi.".into(), "Data: CAPS.".into(), "CAPS!".into(), "calm.".into());
    for (i, c) in p.candidates.iter_mut().enumerate() {
        c.system = ["Be brief.", "Steps.", "Exact.", "Tutor.", "Format."][i % 5].into();
    }
    let data_dir = root.join("data");
    if !data_dir.join("gsm_train.jsonl").exists() {
        crate::common::caps_short_dataset().write_dir(&data_dir)?;
    }
    cfg.data.dir = data_dir;
    cfg.model.name = super::common::fixture_dir("qwen2").to_string_lossy().to_string();
    cfg.run.output_root = root.to_path_buf();
    let s = &mut cfg.modes.ci;
    s.layers = vec![LayerSpec::Index(0), LayerSpec::Index(2)];
    (s.n_calibration, s.n_direction, s.n_direction_heldout, s.n_neutral_gen, s.n_eval, s.n_boot) = (2, 4, 4, 4, 2, 50);
    s.lora.max_steps = 3;
    s.lora.log_every = 1;
    let study = inoc::Inoculation::with_model(cfg, super::common::tiny_chat("qwen2"))?;
    let boot = study.bootstrap();
    study.data_stats()?;
    study.extract_directions()?;
    let held = study.heldout_projections()?;
    inoc::heldout_check(&held, &boot)?;
    study.neutral_generation()?;
    let al = study.alignment()?;
    let sel = study.select_control(&al)?;
    let spec = interp_kit::eval::analysis::specificity_table(&al, "pre_assistant", "neutral", "inoculation")?;
    study.run.write_parquet("specificity.parquet", &spec)?;
    study.run.write_csv("specificity.csv", &interp_kit::eval::analysis::specificity_summary(&spec)?)?;
    let training = study.finetune()?;
    let (proj, gens) = study.drift()?;
    let runs = inoc::run_points(&training, &proj, &gens, &boot)?;
    let acc = inoc::acceptance(&al, "pre_assistant", &sel.chosen, &runs, &boot)?;
    study.run.write_json("acceptance.json", &acc)?;
    Ok(study.run.path().to_path_buf())
}

/// A copy of the tiny Qwen2 with 2048 positions and the byte-chat vocabulary
/// (`common::tiny_long_qwen2`) in `<root>/qwen2_long`, loaded, and its directory.
fn long_model(root: &Path) -> (interp_kit::model::Model, PathBuf) {
    let m = super::common::tiny_long_qwen2(root);
    (m, root.join("qwen2_long"))
}

/// The trait-monitoring series (examples/trait_monitoring_series.rs) at the size of
/// tests/trait_monitoring.rs' tiny pipeline: generation, vectors, monitoring, steering search,
/// jailbreak monitoring, quantised steering and the report.
pub fn trait_monitoring(root: &Path) -> Result<PathBuf> {
    use interp_kit::model::quantize::Precision;
    use interp_kit::studies::trait_monitoring::*;
    let mut cfg = TraitConfig::load(repo().join("configs/trait_monitoring.toml"))?;
    cfg.mode = Mode::Ci;
    let s = &mut cfg.modes.ci;
    s.layers = Some(vec![LayerSpec::Index(1), LayerSpec::Index(2)]);
    s.steer_layers = vec![LayerSpec::Index(1), LayerSpec::Index(2)];
    s.jailbreak_layer = LayerSpec::Index(1);
    (s.n_extract, s.n_eval, s.max_new_tokens, s.n_jailbreak, s.batch_size, s.n_boot) = (3, 3, 8, 5, 4, 100);
    s.search.steps = 3;
    s.search.threshold = 0.0;
    s.precisions = vec![Precision::F32, Precision::BF16, Precision::Q8_0, Precision::Q4_0, Precision::Q4K];
    let (model, dir) = long_model(root);
    cfg.model.name = dir.to_string_lossy().to_string();
    let study = TraitStudy::with_model(cfg, model, root)?;
    study.generate()?;
    study.filter_summary()?;
    study.extract()?;
    study.monitor()?;
    study.steer()?;
    study.jailbreak()?;
    study.quantization()?;
    study.report()?;
    Ok(study.run.path().to_path_buf())
}

/// The introspection series (examples/introspection_series.rs) at the size of
/// tests/introspection_study.rs' tiny pipeline: vectors, baseline, experiments 1 and 2 with their
/// LoRA runs, the localisation tasks, the analyses and the report.
pub fn introspection(root: &Path) -> Result<PathBuf> {
    use interp_kit::studies::introspection::*;
    let mut cfg = IntrospectionConfig::load(repo().join("configs/introspection.toml"))?;
    cfg.mode = Mode::Ci;
    cfg.protocol.yes = "y".into();
    cfg.protocol.no = "n".into();
    let s = &mut cfg.modes.ci;
    (s.n_train_vectors, s.n_heldout_vectors, s.n_concepts, s.concept_heldout_every, s.n_conversations, s.n_controls) = (2, 2, 4, 2, 2, 1);
    s.baseline_vectors = 1;
    s.baseline_bands = vec!["middle".into()];
    s.baseline_strengths = vec![0.0, 20.0];
    s.info = vec![false, true];
    s.eval_vectors = 1;
    s.eval_bands = vec!["middle".into()];
    s.eval_strengths = vec![20.0];
    s.eval_info = vec![false];
    (s.task_examples, s.task_train_examples, s.analysis_rows) = (1, 2, 1);
    (s.train.n_examples, s.train.n_vectors, s.train.max_steps, s.train.lr) = (2, 2, Some(1), 1e-2);
    let (model, dir) = long_model(root);
    cfg.model.name = dir.to_string_lossy().to_string();
    let study = IntrospectionStudy::with_model(cfg, model, root)?;
    study.vectors()?;
    study.baseline()?;
    study.experiment1()?;
    study.experiment2()?;
    study.generalisation()?;
    study.tasks()?;
    study.analysis()?;
    study.report()?;
    Ok(study.run.path().to_path_buf())
}
