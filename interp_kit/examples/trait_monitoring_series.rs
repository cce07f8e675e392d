//! The trait-monitoring study's phases without Jupyter (the same kit calls as
//! notebooks/trait_monitoring/NN_*), timing each phase, e.g.
//!
//!     INTERP_KIT_STUDY_MODE=fast cargo run --release -p interp_kit --example trait_monitoring_series -- configs/trait_monitoring.toml
//!
//! Every phase is a resumable sweep over the run directory, so a crashed run continues where it
//! stopped when started again.
use interp_kit::prelude::*;
use interp_kit::studies::trait_monitoring::TraitStudy;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map(String::as_str).unwrap_or("configs/trait_monitoring.toml");
    let t0 = std::time::Instant::now();
    let stamp = |what: &str| println!("[{:>7.1} s] {what}", t0.elapsed().as_secs_f64());
    let study = TraitStudy::open(path)?;
    println!("mode {}, run {}, layers {:?}", study.cfg.mode.name(), study.run.path().display(), study.layers);
    stamp("open");
    study.generate()?;
    println!("{}", pretty(&study.filter_summary()?).digits(3));
    stamp("01 generate");
    println!("{}", pretty(&study.extract()?).digits(4));
    stamp("02 extract");
    println!("{}", pretty(&study.monitor()?).digits(3));
    stamp("03 monitor");
    println!("{}", pretty(&study.steer()?).digits(3));
    stamp("04 steer");
    println!("{}", pretty(&study.jailbreak()?).digits(3));
    stamp("05 jailbreak");
    println!("{}", pretty(&study.quantization()?).digits(4));
    stamp("06 quantization");
    println!("{}", study.report()?.markdown());
    stamp("07 report");
    Ok(())
}
