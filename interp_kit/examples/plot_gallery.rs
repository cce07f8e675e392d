//! Render one figure of each kind into a directory, to look at them: 
//! `cargo run -p interp_kit --example plot_gallery -- /tmp/gallery` (PNG and SVG per figure).
use interp_kit::tables::Matrix;
use interp_kit::viz::plots::*;

fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "gallery".into()));
    let alphas = [0.0, 0.5, 1.0, 2.0, 4.0];
    let gap = line_plot("Generalisation gap vs α", "α (steering strength)", "refusal(train) − refusal(test)")
        .series(Series::new("layer 6", alphas, [0.0, 0.02, 0.05, 0.1, 0.2]).ci([0.0, 0.0, 0.01, 0.05, 0.12], [0.0, 0.05, 0.09, 0.15, 0.28]))
        .series(Series::new("layer 12", alphas, [0.0, 0.06, 0.12, 0.25, 0.4]).ci([0.0, 0.02, 0.07, 0.18, 0.31], [0.0, 0.1, 0.17, 0.32, 0.49]))
        .series(Series::new("layer 18", alphas, [0.0, 0.01, 0.0, -0.03, 0.02]).err([0.0, 0.03, 0.03, 0.04, 0.05]))
        .bands(true)
        .hline(0.0)
        .build()?;
    let cos = line_plot("Cosine alignment per layer", "layer", "cos(g, v)")
        .series(Series::new("neutral", [2usize, 6, 10, 14, 18, 22], [0.01, 0.03, 0.08, 0.12, 0.09, 0.04]).err([0.01, 0.01, 0.02, 0.02, 0.02, 0.01]))
        .series(Series::new("inoculation", [2usize, 6, 10, 14, 18, 22], [0.0, 0.01, 0.02, 0.03, 0.02, 0.01]).err([0.01, 0.01, 0.02, 0.02, 0.02, 0.01]))
        .hline(0.0)
        .build()?;
    let trade = scatter_plot("Trade-off: refusal vs benign helpfulness", "refusal rate (harm_test)", "helpfulness drop (benign)")
        .series(Series::new("add, layer 12", [0.2, 0.35, 0.5, 0.7, 0.9], [0.0, 0.02, 0.05, 0.3, 0.2]).labels(["α=0", "α=0.5", "α=1", "α=2", "α=4"]))
        .series(Series::new("Pareto frontier", [0.2, 0.35, 0.5, 0.9], [0.0, 0.02, 0.05, 0.2]).connect(true))
        .build()?;
    let m = Matrix::new(["6", "12", "18"], ["0", "0.5", "1", "2", "4"], vec![
        vec![0.10, 0.12, 0.2, 0.35, 0.5],
        vec![0.10, 0.2, 0.45, 0.8, 0.95],
        vec![0.10, 0.11, 0.15, 0.2, 0.3],
    ]);
    let heat = heatmap("Refusal rate on harm_test", "α", "layer", m).range(0.0, 1.0).colorbar_label("refusal rate").build()?;
    let bars = bar_chart("Caps shift by condition", "condition", "Δ caps fraction", ["neutral", "inoculation", "loss-matched control"])
        .group(Bars::new("seed 0", [0.30, 0.05, 0.28]).ci([0.25, 0.01, 0.22], [0.35, 0.09, 0.34]))
        .group(Bars::new("seed 1", [0.26, 0.07, 0.25]).err([0.04, 0.03, 0.05]))
        .build()?;
    let proj: Vec<f64> = (0..200).map(|i| ((i * 37 % 101) as f64 / 101.0 - 0.5) * 3.0 + 2.0).collect();
    let hist = histogram("Projection onto v_caps (layer 12)", "projection")
        .sample("promote", proj.clone())
        .sample("suppress", proj.iter().map(|x| x - 2.5).collect::<Vec<_>>())
        .density(true)
        .build()?;
    for (name, f) in [("gap", gap), ("cosine", cos), ("tradeoff", trade), ("heatmap", heat), ("bars", bars), ("hist", hist)] {
        f.save(dir.join(format!("{name}.png")))?;
        f.save(dir.join(format!("{name}.svg")))?;
        println!("{}", dir.join(format!("{name}.png")).display());
    }
    Ok(())
}
