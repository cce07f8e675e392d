//! The steering-reliability study's notebooks (notebooks/steering_reliability/02_sweep and
//! 03_analysis) without Jupyter: directions, the resumable sweep, the sanity reruns, and the
//! summary, figures and reports, into `results/steering_reliability/<run_id>[_ci]/`.
//!
//!     INTERP_KIT_STUDY_MODE=ci cargo run --release -p interp_kit --example steering_series -- configs/steering_reliability.toml
use interp_kit::prelude::*;
use interp_kit::studies::steering_reliability::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map(String::as_str).unwrap_or("configs/steering_reliability.toml");
    let (run_id, sanity_alpha, n_examples) = ("run_001", 2.0, 5);
    let t0 = std::time::Instant::now();
    let stamp = |what: &str| println!("[{:>7.1} s] {what}", t0.elapsed().as_secs_f64());
    let cfg = load_config(path, None)?;
    let run_id = cfg.mode.run_id(run_id);
    let study = Study::open(cfg)?;
    let run = study_run_dir(&study, "results", &run_id)?;
    println!("run directory: {}", run.path().display());
    let dirs = study.directions(PrefixSet::Main)?;
    save_directions(&study, &run, &dirs, "directions")?;
    let results = study.run_sweep(&run, &dirs)?;
    stamp(&format!("sweep: {} rows", results.height()));
    let alt = study.directions(PrefixSet::Alternative)?;
    save_directions(&study, &run, &alt, "directions_alt_prefix")?;
    let sanity = study.run_sanity(&run, &alt, &dirs, sanity_alpha)?;
    stamp(&format!("sanity: {} rows", sanity.height()));
    let rows = rows_from_df(&run.results()?)?;
    let points = operating_points(&cell_rates(&rows))?;
    run.write_summary(&summary_table(&points)?)?;
    for (stem, fig) in &figures(&points)? {
        run.save_figure(stem, fig)?;
    }
    let best = best_point(&points)?;
    run.write_text("reports/examples.md", &examples_report(&rows, best.layer, &best.intervention, best.alpha, n_examples)?)?;
    println!("{}", pretty(&sanity_table(&rows, &rows_from_df(&run.read_parquet("sanity.parquet")?)?)?));
    println!("{}", pretty(&confound_table(&points)?));
    stamp("analysis");
    Ok(())
}
