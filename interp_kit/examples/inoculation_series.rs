//! The ALL-CAPS inoculation study's phases without Jupyter (same kit calls as
//! notebooks/inoculation_caps/01..07), e.g. for a long run on a CUDA host:
//!
//!     INTERP_KIT_STUDY_MODE=ci cargo run --release -p interp_kit --example inoculation_series -- configs/inoculation_caps.toml [last_phase]
//!
//! `last_phase` (1-7, default 7) stops after that notebook's work. Every phase resumes from the
//! run directory's artifacts.
use interp_kit::prelude::*;
use interp_kit::tables::group_mean;
use interp_kit::studies::inoculation_caps::{self as inoc, Inoculation};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map(String::as_str).unwrap_or("configs/inoculation_caps.toml");
    let last: u32 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(7);
    let study = Inoculation::open(path)?;
    let boot = study.bootstrap();
    let t0 = std::time::Instant::now();
    let stamp = |what: &str| println!("[{:>7.1} s] {what}", t0.elapsed().as_secs_f64());
    println!("mode {}, run {}, layers {:?}", study.cfg.mode.name(), study.run.path().display(), study.layers);
    println!("{}", pretty(&study.data_stats()?).digits(3));
    stamp("01 data");
    if last < 2 {
        return Ok(());
    }
    println!("{}", pretty(&study.extract_directions()?).digits(4));
    let held = study.heldout_projections()?;
    println!("{}", pretty(&inoc::heldout_check(&held, &boot)?).digits(4));
    let neutral = study.neutral_generation()?;
    println!("{}", pretty(&inoc::neutral_correlation(&neutral)?).digits(4));
    stamp("02 directions");
    if last < 3 {
        return Ok(());
    }
    let al = study.alignment()?;
    let summ = inoc::alignment_summary(&al, &boot)?;
    println!("{}", pretty(&filter_eq(&summ, "position", "pre_assistant")?).digits(4).max_rows(80));
    println!("{}", pretty(&inoc::loss_by_condition(&al, &boot)?).digits(4));
    stamp("03 alignment");
    if last < 4 {
        return Ok(());
    }
    let sel = study.select_control(&al)?;
    println!("{}\nchosen control: {}", pretty(&sel.to_df()?).digits(4), sel.chosen);
    stamp("04 control");
    if last < 5 {
        return Ok(());
    }
    let spec = interp_kit::eval::analysis::specificity_table(&al, "pre_assistant", "neutral", "inoculation")?;
    study.run.write_parquet("specificity.parquet", &spec)?;
    let ssum = interp_kit::eval::analysis::specificity_summary(&spec)?;
    study.run.write_csv("specificity.csv", &ssum)?;
    println!("{}", pretty(&ssum).digits(4));
    stamp("05 specificity");
    if last < 6 {
        return Ok(());
    }
    let training = study.finetune()?;
    println!("{}", pretty(&group_mean(&training, &["condition", "seed", "step"], &["train_loss", "log_loss", "align"])?).digits(4).max_rows(80));
    let (proj, gens) = study.drift()?;
    println!("{}", pretty(&interp_kit::eval::analysis::drift_projection_summary(&proj, &Default::default(), &boot)?).digits(4).max_rows(80));
    println!("{}", pretty(&inoc::drift_caps_summary(&gens, &boot)?).digits(4));
    stamp("06 fine-tunes and drift");
    if last < 7 {
        return Ok(());
    }
    let runs = inoc::run_points(&training, &proj, &gens, &boot)?;
    let acc = inoc::acceptance(&al, "pre_assistant", &sel.chosen, &runs, &boot)?;
    study.run.write_json("acceptance.json", &acc)?;
    for c in &acc.criteria {
        println!("{c}\n");
    }
    println!("VERDICT: {}", acc.verdict);
    stamp("07 acceptance");
    Ok(())
}
