//! Figures: PNGs decode at the requested size with the expected colours, SVGs carry the text,
//! bad data is refused with a message naming it, and saving is atomic.
use base64::Engine;
use interp_kit::tables::Matrix;
use interp_kit::viz::plots::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::RGBColor;

fn decode(fig: &Figure) -> image::RgbImage {
    let png = fig.to_png().unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap().to_rgb8()
}

fn count_color(img: &image::RgbImage, c: RGBColor, tol: i32) -> usize {
    img.pixels()
        .filter(|p| (p[0] as i32 - c.0 as i32).abs() <= tol && (p[1] as i32 - c.1 as i32).abs() <= tol && (p[2] as i32 - c.2 as i32).abs() <= tol)
        .count()
}

/// The contents of the SVG's `<text>` elements, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text").skip(1).filter_map(|s| Some(s.split_once('>')?.1.split_once("</text>")?.0.trim().to_string())).collect()
}

fn non_white(img: &image::RgbImage) -> usize {
    img.pixels().filter(|p| p.0 != [255, 255, 255]).count()
}

/// Dark pixels (text and axes) in a horizontal strip of the image.
fn dark_in_rows(img: &image::RgbImage, y0: u32, y1: u32) -> usize {
    (y0..y1).flat_map(|y| (0..img.width()).map(move |x| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&v| v < 100)).count()
}

fn gap_plot(bands: bool) -> Figure {
    line_plot("Generalisation gap vs α", "α (steering strength)", "refusal(train) − refusal(test)")
        .series(Series::new("layer 6", [0.0, 0.5, 1.0, 2.0, 4.0], [0.0, 0.02, 0.05, 0.1, 0.2]).ci(
            [0.0, 0.0, 0.01, 0.05, 0.12],
            [0.0, 0.05, 0.09, 0.15, 0.28],
        ))
        .series(Series::new("layer 12", [0usize, 1, 2, 4], [0.0, 0.1, 0.25, 0.4]).err([0.0, 0.03, 0.04, 0.05]))
        .bands(bands)
        .hline(0.0)
        .build()
        .unwrap()
}

#[test]
fn line_plot_png_has_size_series_colours_and_text() {
    for bands in [false, true] {
        let fig = gap_plot(bands);
        assert_eq!(fig.size(), (1000, 620));
        let img = decode(&fig);
        assert_eq!(img.dimensions(), (1000, 620));
        assert!(non_white(&img) > 10_000, "too few drawn pixels: {}", non_white(&img));
        // Both series' colours are drawn (lines are 3 px wide over hundreds of px).
        assert!(count_color(&img, palette(0), 0) > 300, "series 0: {}", count_color(&img, palette(0), 0));
        assert!(count_color(&img, palette(1), 0) > 300, "series 1: {}", count_color(&img, palette(1), 0));
        assert_eq!(count_color(&img, palette(2), 0), 0, "no third series");
        // The title is rendered with the embedded font in the top strip.
        assert!(dark_in_rows(&img, 0, 45) > 150, "title pixels: {}", dark_in_rows(&img, 0, 45));
    }
    let small = gap_plot(false).with_size(640, 400);
    assert_eq!(decode(&small).dimensions(), (640, 400));
}

#[test]
fn svg_contains_title_axis_labels_and_legend() {
    let svg = gap_plot(true).to_svg().unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
    for text in ["Generalisation gap vs α", "α (steering strength)", "refusal(train) − refusal(test)", "layer 6", "layer 12"] {
        assert!(svg.contains(text), "SVG lacks {text:?}");
    }
    assert!(svg.contains("font-family=\"sans-serif\""));
    // Text is escaped for XML.
    let fig = scatter_plot("a < b & c", "x", "y").series(Series::new("s", [1.0], [2.0])).build().unwrap();
    assert!(fig.to_svg().unwrap().contains("a &lt; b &amp; c"));
}

#[test]
fn scatter_with_labels_and_frontier() {
    let fig = scatter_plot("Trade-off", "refusal rate (harm_test)", "helpfulness drop (benign)")
        .series(Series::new("operating points", [0.2, 0.5, 0.7, 0.9], [0.0, 0.05, 0.3, 0.2]).labels(["α=0", "α=1", "α=2", "α=4"]))
        .series(Series::new("Pareto frontier", [0.2, 0.5, 0.9], [0.0, 0.05, 0.2]).connect(true))
        .y_range(-0.05, 0.5)
        .build()
        .unwrap();
    let svg = fig.to_svg().unwrap();
    for t in ["Trade-off", "refusal rate (harm_test)", "helpfulness drop (benign)", "α=0", "α=4", "Pareto frontier"] {
        assert!(svg.contains(t), "SVG lacks {t:?}");
    }
    let img = decode(&fig);
    assert!(count_color(&img, palette(0), 0) > 200);
    assert!(count_color(&img, palette(1), 0) > 200);
}

#[test]
fn heatmap_draws_cells_in_scale_colours_with_annotations() {
    let m = Matrix::new(["6", "12", "18"], ["0", "0.5", "1", "2"], vec![
        vec![0.0, 0.1, 0.2, 0.3],
        vec![0.1, 0.3, 0.6, 0.8],
        vec![0.2, 0.4, 0.9, 1.0],
    ]);
    let fig = heatmap("Refusal rate on harm_test", "α", "layer", m.clone()).range(0.0, 1.0).colorbar_label("refusal rate").build().unwrap();
    let img = decode(&fig);
    // The lowest and highest cells are filled with the ends of viridis (plus the colour bar).
    let low = ViridisRGB::get_color(0.0f64);
    let high = ViridisRGB::get_color(1.0f64);
    assert!(count_color(&img, low, 0) > 2000, "low cell: {}", count_color(&img, low, 0));
    assert!(count_color(&img, high, 0) > 2000, "high cell: {}", count_color(&img, high, 0));
    let svg = fig.to_svg().unwrap();
    for t in ["Refusal rate on harm_test", "refusal rate", "layer", "α", "18", "0.5", "0.90", "1.00"] {
        assert!(svg_texts(&svg).iter().any(|s| s == t), "SVG lacks the text {t:?}: {:?}", svg_texts(&svg));
    }
    // Diverging scale: the centre is white-ish, the ends blue and red.
    let d = ColorScale::Diverging { center: 0.0 };
    assert_eq!(d.color(0.0, -1.0, 1.0), RGBColor(247, 247, 247));
    assert_eq!(d.color(-1.0, -1.0, 1.0), RGBColor(33, 102, 172));
    assert_eq!(d.color(2.0, -1.0, 2.0), RGBColor(178, 24, 43));
    // Missing cells: an error by default, grey "n/a" when allowed.
    let mut holes = m;
    holes.values[1][2] = f64::NAN;
    let e = format!("{:#}", heatmap("h", "α", "layer", holes.clone()).build().unwrap_err());
    assert!(e.contains("row \"12\"") && e.contains("column \"1\"") && e.contains("NaN"), "{e}");
    let fig = heatmap("h", "α", "layer", holes).allow_missing(true).build().unwrap();
    assert!(svg_texts(&fig.to_svg().unwrap()).iter().any(|s| s == "n/a"));
    // Nothing measured at all (e.g. no coherent steering step anywhere) is a figure of missing
    // cells when missing cells are allowed, and an error otherwise.
    let all_nan = Matrix::new(["a", "c"], ["b"], vec![vec![f64::NAN], vec![f64::NAN]]);
    assert!(heatmap("h", "x", "y", all_nan.clone()).build().is_err());
    let svg = heatmap("h", "x", "y", all_nan).allow_missing(true).build().unwrap().to_svg().unwrap();
    assert_eq!(svg_texts(&svg).iter().filter(|s| *s == "n/a").count(), 2);
    let ragged = Matrix::new(["a", "b"], ["c"], vec![vec![1.0]]);
    assert!(format!("{}", heatmap("h", "x", "y", ragged).build().unwrap_err()).contains("2 row labels but 1 rows"));
}

#[test]
fn bar_chart_with_error_bars_and_category_labels() {
    let fig = bar_chart("Caps shift by condition", "condition", "Δ caps fraction", ["neutral", "inoculation", "control"])
        .group(Bars::new("seed 0", [0.30, 0.05, 0.28]).ci([0.25, 0.01, 0.22], [0.35, 0.09, 0.34]))
        .group(Bars::new("seed 1", [0.26, 0.07, 0.25]).err([0.04, 0.03, 0.05]))
        .build()
        .unwrap();
    let img = decode(&fig);
    assert!(count_color(&img, palette(0), 0) > 5000);
    assert!(count_color(&img, palette(1), 0) > 5000);
    let svg = fig.to_svg().unwrap();
    for t in ["Caps shift by condition", "condition", "Δ caps fraction", "neutral", "inoculation", "control", "seed 0", "seed 1"] {
        assert!(svg_texts(&svg).iter().any(|s| s == t), "SVG lacks the text {t:?}: {:?}", svg_texts(&svg));
    }
    let e = format!("{}", bar_chart("b", "x", "y", ["a", "b"]).group(Bars::new("g", [1.0])).build().unwrap_err());
    assert!(e.contains("group \"g\" has 1 values for 2 categories"), "{e}");
    assert!(bar_chart("b", "x", "y", Vec::<String>::new()).build().is_err());
}

#[test]
fn histogram_bins_counts_and_densities() {
    let v: Vec<f64> = (0..10).map(|i| i as f64).collect();
    let h = histogram("Projections", "projection onto v").sample("promote", v.clone()).bins(5);
    let (edges, counts) = h.binned();
    assert_eq!(edges.len(), 6);
    approx::assert_relative_eq!(edges[1], 1.8, epsilon = 1e-12);
    assert_eq!(counts[0], vec![2.0; 5]);
    let (edges, dens) = h.clone().density(true).binned();
    let area: f64 = dens[0].iter().zip(edges.windows(2)).map(|(d, w)| d * (w[1] - w[0])).sum();
    approx::assert_relative_eq!(area, 1.0, epsilon = 1e-12);
    let fig = h.sample("suppress", v.iter().map(|x| x - 3.0).collect::<Vec<_>>()).build().unwrap();
    let svg = fig.to_svg().unwrap();
    for t in ["Projections", "projection onto v", "count", "promote", "suppress"] {
        assert!(svg.contains(t), "SVG lacks {t:?}");
    }
    assert!(non_white(&decode(&fig)) > 10_000);
}

#[test]
fn bad_inputs_are_refused_with_names() {
    let e = format!("{}", line_plot("t", "x", "y").build().unwrap_err());
    assert!(e.contains("no series"), "{e}");
    let e = format!("{}", line_plot("t", "x", "y").series(Series::new("s", Vec::<f64>::new(), Vec::<f64>::new())).build().unwrap_err());
    assert!(e.contains("series \"s\" has no points"), "{e}");
    let e = format!("{}", line_plot("t", "x", "y").series(Series::new("s", [1.0, 2.0, 3.0], [1.0, 2.0, f64::NAN])).build().unwrap_err());
    assert!(e.contains("series \"s\" y[2] is NaN"), "{e}");
    let e = format!("{}", line_plot("t", "x", "y").series(Series::new("s", [1.0, 2.0], [1.0])).build().unwrap_err());
    assert!(e.contains("2 x values but 1 y values"), "{e}");
    let e = format!("{}", line_plot("t", "x", "y").series(Series::new("s", [1.0, 2.0], [1.0, 2.0]).err([0.1])).build().unwrap_err());
    assert!(e.contains("interval"), "{e}");
    let e = format!(
        "{}",
        line_plot("t", "x", "y").series(Series::new("s", [1.0], [1.0]).ci([f64::INFINITY], [2.0])).build().unwrap_err()
    );
    assert!(e.contains("lower bound[0] is inf"), "{e}");
    let e = format!("{}", scatter_plot("t", "x", "y").series(Series::new("s", [1.0, 2.0], [1.0, 2.0]).labels(["a"])).build().unwrap_err());
    assert!(e.contains("1 labels"), "{e}");
    let e = format!("{}", histogram("h", "x").sample("empty", Vec::<f64>::new()).build().unwrap_err());
    assert!(e.contains("sample \"empty\" is empty"), "{e}");
    let e = format!("{}", histogram("h", "x").sample("s", [1.0, f64::NAN]).build().unwrap_err());
    assert!(e.contains("sample \"s\"[1] is NaN"), "{e}");
    assert!(line_plot("t", "x", "y").series(Series::new("s", [1.0], [1.0])).y_range(1.0, 0.0).build().is_err());
}

#[test]
fn tick_labels_are_short() {
    assert_eq!(tick(&2.0), "2");
    assert_eq!(tick(&0.5), "0.5");
    assert_eq!(tick(&0.0), "0");
    assert_eq!(tick(&-1e-13), "0");
    assert_eq!(tick(&2.5e-5), "2.5e-5");
    assert_eq!(tick(&-1.0e-7), "-1e-7");
    assert_eq!(tick(&3.0e8), "3e8");
    assert_eq!(tick(&0.125), "0.125");
    assert_eq!(tick(&-3.25), "-3.25");
    assert_eq!(tick(&100.0), "100");
}

#[test]
fn single_points_and_constant_data_still_render() {
    // Degenerate ranges are padded instead of failing inside plotters.
    let fig = line_plot("one point", "x", "y").series(Series::new("s", [3.0], [5.0])).build().unwrap();
    assert!(non_white(&decode(&fig)) > 1000);
    let fig = histogram("constant", "x").sample("s", [2.0, 2.0, 2.0]).build().unwrap();
    assert!(non_white(&decode(&fig)) > 1000);
    let fig = heatmap("1x1", "x", "y", Matrix::new(["r"], ["c"], vec![vec![0.5]])).build().unwrap();
    assert!(non_white(&decode(&fig)) > 1000);
}

#[test]
fn save_is_atomic_by_extension_and_evcxr_payload_is_the_png() {
    let d = tempfile::tempdir().unwrap();
    let fig = gap_plot(false);
    fig.save(d.path().join("figs/gap.png")).unwrap();
    fig.save(d.path().join("figs/gap.svg")).unwrap();
    let png = std::fs::read(d.path().join("figs/gap.png")).unwrap();
    assert_eq!(png, fig.to_png().unwrap(), "rendering is deterministic");
    assert!(std::fs::read_to_string(d.path().join("figs/gap.svg")).unwrap().contains("Generalisation gap"));
    let e = format!("{}", fig.save(d.path().join("figs/gap.jpg")).unwrap_err());
    assert!(e.contains(".png or .svg"), "{e}");
    let names: Vec<String> = std::fs::read_dir(d.path().join("figs")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let payload = fig.evcxr_payload().unwrap();
    let body = payload
        .strip_prefix("EVCXR_BEGIN_CONTENT image/png\n")
        .and_then(|s| s.strip_suffix("\nEVCXR_END_CONTENT"))
        .expect("evcxr framing");
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(body).unwrap(), png);
}
