//! The introspection study's phases without Jupyter (the same kit calls as
//! notebooks/introspection/NN_*), timing each phase, e.g.
//!
//!     INTERP_KIT_STUDY_MODE=fast cargo run --release -p interp_kit --example introspection_series -- configs/introspection.toml
//!
//! Every phase is a resumable sweep over the run directory, so a crashed run continues where it
//! stopped when started again. `--output-root DIR` replaces the config's `run.output_root`.
use interp_kit::prelude::*;
use interp_kit::studies::introspection::{IntrospectionConfig, IntrospectionStudy};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).filter(|a| !a.starts_with("--")).map(String::as_str).unwrap_or("configs/introspection.toml");
    let root = args.iter().position(|a| a == "--output-root").and_then(|i| args.get(i + 1)).cloned();
    let t0 = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let mut stamp = |what: &str| {
        println!("[{:>8.1} s] {what} ({:.1} s)", t0.elapsed().as_secs_f64(), last.elapsed().as_secs_f64());
        last = std::time::Instant::now();
    };
    let study = match root {
        Some(r) => {
            let cfg = IntrospectionConfig::load(path)?;
            let model = cfg.model.load(&cfg.base_dir)?;
            IntrospectionStudy::with_model(cfg, model, std::path::Path::new(&r))?
        }
        None => IntrospectionStudy::open(path)?,
    };
    println!("mode {}, run {}, variants {:?}", study.mode().name(), study.run.path().display(), study.variants().iter().map(|v| v.name.clone()).collect::<Vec<_>>());
    stamp("open");
    println!("{} vectors", study.vectors()?.height());
    stamp("vectors");
    println!("{}", pretty(&study.baseline()?).digits(3));
    stamp("00 baseline");
    println!("{}", pretty(&study.experiment1()?).digits(3).max_rows(60));
    stamp("01 experiment 1");
    println!("{}", pretty(&study.experiment2()?).digits(3));
    println!("{}", pretty(&study.generalisation()?).digits(3));
    stamp("02 experiment 2");
    println!("{}", pretty(&study.tasks()?).digits(3));
    stamp("03 tasks");
    println!("{}", pretty(&study.analysis()?).digits(4).max_rows(12));
    stamp("04 analysis");
    println!("{}", study.report()?.markdown());
    stamp("05 report");
    Ok(())
}
