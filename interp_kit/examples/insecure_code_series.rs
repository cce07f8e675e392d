//! The insecure-code inoculation study's phases without Jupyter (the same kit calls as
//! notebooks/insecure_code/NN_*), timing each phase, e.g.
//!
//!     INTERP_KIT_STUDY_MODE=ci cargo run --release -p interp_kit --example insecure_code_series -- configs/insecure_code.toml
//!
//! Every phase resumes from the run directory's artifacts, so a crashed run continues where it
//! stopped when started again.
use interp_kit::prelude::*;
use interp_kit::studies::insecure_code::{figures, InsecureStudy};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map(String::as_str).unwrap_or("configs/insecure_code.toml");
    let t0 = std::time::Instant::now();
    let stamp = |what: &str| println!("[{:>7.1} s] {what}", t0.elapsed().as_secs_f64());
    let study = InsecureStudy::open(path)?;
    println!("mode {}, run {}, layers {:?}", study.cfg.mode.name(), study.run.path().display(), study.layers);
    stamp("open");
    println!("{}", pretty(&study.data_stats()?).digits(3));
    stamp("01 data");
    println!("{}", pretty(&study.extract_directions()?).digits(4));
    study.extract_cross_directions()?;
    stamp("02 directions");
    let al = study.alignment()?;
    println!("{}", pretty(&study.loss_audit(&al)?).digits(4));
    stamp("03 gradient pressure");
    study.finetune()?;
    stamp("04 fine-tunes");
    let (_, gens) = study.evaluate()?;
    study.rate(&gens)?;
    stamp("05 generation, drift, ratings");
    let a = study.analyse()?;
    println!("{}", pretty(&a.behaviour).digits(3));
    println!("{}", pretty(&a.paired).digits(3));
    println!("{}", pretty(&a.pressure_summary).digits(4));
    figures::save_all(&study, &a)?;
    let r = study.report(&a)?;
    stamp("06-08 analysis, figures, report");
    println!("{}", r.to_markdown());
    Ok(())
}
