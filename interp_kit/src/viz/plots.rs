//! Figures with plotters, saved as PNG or SVG and shown inline in evcxr notebooks.
//!
//! Each plot kind has a builder that takes plain data (named series of numbers, a matrix with row
//! and column labels), checks it in `build()` (empty or non-finite input is an error naming the
//! series and point), and returns a [`Figure`]:
//! - [`line_plot`]: several series against x, with optional confidence intervals drawn as error
//!   bars or shaded bands (generalisation gap vs α, cosine per layer with CI);
//! - [`scatter_plot`]: points with optional labels and connecting lines (trade-off curves, Pareto
//!   frontiers, projection vs trait expression);
//! - [`heatmap`]: a matrix with a colour bar and cell annotations (layer × α);
//! - [`bar_chart`]: grouped bars with error bars (per-condition comparisons);
//! - [`histogram`]: overlaid distributions on shared bins (projections under two conditions).
//!
//! Text is drawn with DejaVu Sans, embedded in the crate and registered with plotters' ab_glyph
//! support on first use, so figures look the same on every machine.
//!
//! ```no_run
//! use interp_kit::viz::plots::{line_plot, Series};
//! # fn main() -> anyhow::Result<()> {
//! let fig = line_plot("Generalisation gap vs α", "α", "refusal(train) − refusal(test)")
//!     .series(Series::new("layer 12", [0.0, 1.0, 2.0, 4.0], [0.0, 0.05, 0.12, 0.2]).ci(
//!         [0.0, 0.01, 0.06, 0.13],
//!         [0.0, 0.09, 0.18, 0.27],
//!     ))
//!     .hline(0.0)
//!     .build()?;
//! fig.save("figures/gap.png")?; // or .svg; `fig` as a cell's last value shows it inline
//! # Ok(()) }
//! ```
use anyhow::{anyhow, bail, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use crate::tables::Matrix;
use std::path::Path;
use std::sync::Once;

static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
/// The font family figures use (DejaVu Sans, registered under this name).
pub const FONT: &str = "sans-serif";
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font checked in with the crate; a failure here would be
        // caught by every plotting test.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// Tableau 10 (matplotlib's default cycle).
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The colour of the `i`-th series.
pub fn palette(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

// Requested sizes; plotters draws text at size / 1.24 pixels per em.
const TITLE_PX: u32 = 32;
const AXIS_PX: u32 = 26;
const TICK_PX: u32 = 21;
const LEGEND_PX: u32 = 21;
const NOTE_PX: u32 = 18;

/// Conversion of plot inputs to f64 (so layers as `usize` and α as `f64` both work).
pub trait ToF64: Copy {
    fn to_f64(self) -> f64;
}
macro_rules! to_f64 {
    ($($t:ty),*) => {$( impl ToF64 for $t { fn to_f64(self) -> f64 { self as f64 } } )*};
}
to_f64!(f64, f32, i8, i16, i32, i64, u8, u16, u32, u64, usize, isize);

fn floats<T: ToF64>(v: impl IntoIterator<Item = T>) -> Vec<f64> {
    v.into_iter().map(ToF64::to_f64).collect()
}

/// A named series of points `(x[i], y[i])`, optionally with an interval `[lo[i], hi[i]]` around
/// each y and a text label per point.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Interval bounds (absolute values, not offsets), drawn as error bars or a band.
    pub ci: Option<(Vec<f64>, Vec<f64>)>,
    /// A label drawn beside each point (scatter plots).
    pub labels: Option<Vec<String>>,
    /// Draw a line through the points: `None` takes the plot's default (line plots: yes, scatter:
    /// no).
    pub connect: Option<bool>,
}

impl Series {
    pub fn new<X: ToF64, Y: ToF64>(
        name: impl Into<String>,
        x: impl IntoIterator<Item = X>,
        y: impl IntoIterator<Item = Y>,
    ) -> Self {
        Series { name: name.into(), x: floats(x), y: floats(y), ci: None, labels: None, connect: None }
    }

    /// An interval `[lo, hi]` per point (e.g. a 95% CI from `group_summary`'s `_lo`/`_hi`).
    pub fn ci<L: ToF64, H: ToF64>(mut self, lo: impl IntoIterator<Item = L>, hi: impl IntoIterator<Item = H>) -> Self {
        self.ci = Some((floats(lo), floats(hi)));
        self
    }

    /// A symmetric interval `y ± err` per point (e.g. a standard error).
    pub fn err<E: ToF64>(mut self, err: impl IntoIterator<Item = E>) -> Self {
        let e = floats(err);
        self.ci = Some(if e.len() == self.y.len() {
            (self.y.iter().zip(&e).map(|(y, e)| y - e).collect(), self.y.iter().zip(&e).map(|(y, e)| y + e).collect())
        } else {
            (e.clone(), e) // the wrong length is reported by build()
        });
        self
    }

    /// A label per point.
    pub fn labels<S: Into<String>>(mut self, labels: impl IntoIterator<Item = S>) -> Self {
        self.labels = Some(labels.into_iter().map(Into::into).collect());
        self
    }

    /// Whether to connect the points with a line (in the given order for scatter plots, in x
    /// order for line plots).
    pub fn connect(mut self, yes: bool) -> Self {
        self.connect = Some(yes);
        self
    }

    fn check(&self, what: &str) -> Result<()> {
        let n = self.x.len();
        if n == 0 {
            bail!("{what}: series {:?} has no points", self.name);
        }
        if self.y.len() != n {
            bail!("{what}: series {:?} has {} x values but {} y values", self.name, n, self.y.len());
        }
        finite(what, &format!("series {:?} x", self.name), &self.x)?;
        finite(what, &format!("series {:?} y", self.name), &self.y)?;
        if let Some((lo, hi)) = &self.ci {
            if lo.len() != n || hi.len() != n {
                bail!(
                    "{what}: series {:?} has {n} points but its interval has {} lower and {} upper bounds",
                    self.name,
                    lo.len(),
                    hi.len()
                );
            }
            finite(what, &format!("series {:?} interval lower bound", self.name), lo)?;
            finite(what, &format!("series {:?} interval upper bound", self.name), hi)?;
        }
        if let Some(l) = &self.labels {
            if l.len() != n {
                bail!("{what}: series {:?} has {n} points but {} labels", self.name, l.len());
            }
        }
        Ok(())
    }
}

fn finite(what: &str, name: &str, v: &[f64]) -> Result<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("{what}: {name}[{i}] is {} (plots need finite numbers; drop or fill it first)", v[i]);
    }
    Ok(())
}

/// Where a legend goes; `Auto` picks the corner of the plot with the fewest data points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Legend {
    #[default]
    Auto,
    UpperLeft,
    UpperRight,
    LowerLeft,
    LowerRight,
    /// No legend.
    None,
}

/// A rendered-on-demand figure: save it as PNG or SVG, or show it in evcxr (a cell whose last
/// value is a `Figure` displays it inline; evcxr keeps one image per cell).
#[derive(Debug, Clone)]
pub struct Figure {
    spec: Spec,
    width: u32,
    height: u32,
}

#[derive(Debug, Clone)]
enum Spec {
    Xy(XyPlot),
    Heatmap(HeatmapPlot),
    Bars(BarChart),
    Hist(Histogram),
}

trait PlotErr<T> {
    fn pe(self) -> Result<T>;
}
impl<T, E: std::error::Error + Send + Sync> PlotErr<T> for std::result::Result<T, DrawingAreaErrorKind<E>> {
    fn pe(self) -> Result<T> {
        self.map_err(|e| anyhow!("plotting failed: {e}"))
    }
}

impl Figure {
    /// Width and height in pixels (PNG) or user units (SVG). Default 1000 × 620.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The same figure at another size (at least 200 × 150).
    pub fn with_size(mut self, width: u32, height: u32) -> Self {
        self.width = width.max(200);
        self.height = height.max(150);
        self
    }

    /// The figure's title.
    pub fn title(&self) -> &str {
        match &self.spec {
            Spec::Xy(p) => &p.title,
            Spec::Heatmap(p) => &p.title,
            Spec::Bars(p) => &p.title,
            Spec::Hist(p) => &p.title,
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        register_font();
        root.fill(&WHITE).pe()?;
        match &self.spec {
            Spec::Xy(p) => p.draw(root),
            Spec::Heatmap(p) => p.draw(root),
            Spec::Bars(p) => p.draw(root),
            Spec::Hist(p) => p.draw(root),
        }?;
        root.present().pe()
    }

    /// The figure as PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let (w, h) = (self.width, self.height);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root)?;
        }
        let mut out = Vec::new();
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&rgb, w, h, image::ColorType::Rgb8)
            .map_err(|e| anyhow!("encoding PNG: {e}"))?;
        Ok(out)
    }

    /// The figure as an SVG document.
    pub fn to_svg(&self) -> Result<String> {
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, (self.width, self.height)).into_drawing_area();
            self.draw(&root)?;
        }
        Ok(s)
    }

    /// Save atomically as PNG or SVG, chosen by the extension (`.png`, `.svg`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("png") => crate::base::io::write_atomic(path, self.to_png()?),
            Some("svg") => crate::base::io::write_atomic(path, self.to_svg()?),
            _ => bail!("cannot save figure as {}: use a .png or .svg extension", path.display()),
        }
    }

    /// What [`Figure::evcxr_display`] prints: `EVCXR_BEGIN_CONTENT image/png`, the PNG in
    /// base64, `EVCXR_END_CONTENT`, one per line.
    pub fn evcxr_payload(&self) -> Result<String> {
        use base64::Engine;
        let png = self.to_png()?;
        Ok(format!(
            "EVCXR_BEGIN_CONTENT image/png\n{}\nEVCXR_END_CONTENT",
            base64::engine::general_purpose::STANDARD.encode(png)
        ))
    }

    /// evcxr's rich display hook: the PNG inline. A rendering error goes to stderr (so the
    /// notebook runner flags the cell).
    pub fn evcxr_display(&self) {
        match self.evcxr_payload() {
            Ok(p) => println!("{p}"),
            Err(e) => eprintln!("figure {:?} failed to render: {e:#}", self.title()),
        }
    }
}

fn figure(spec: Spec, size: Option<(u32, u32)>) -> Figure {
    let (width, height) = size.unwrap_or((1000, 620));
    Figure { spec, width, height }.with_size(width, height)
}

/// `[lo, hi]` padded by 5% on each side; a zero-width range becomes `v ± max(|v|·0.1, 1)`.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        let p = (hi - lo) * 0.05;
        (lo - p, hi + p)
    } else {
        let p = (lo.abs() * 0.1).max(1.0);
        (lo - p, hi + p)
    }
}

fn min_max(vals: impl IntoIterator<Item = f64>) -> (f64, f64) {
    vals.into_iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
}

/// The corner of the unit square holding the fewest of the (normalised) points.
fn emptiest_corner(points: &[(f64, f64)]) -> SeriesLabelPosition {
    let corners = [
        (SeriesLabelPosition::UpperRight, 0.6, 1.0, 0.6, 1.0),
        (SeriesLabelPosition::UpperLeft, 0.0, 0.4, 0.6, 1.0),
        (SeriesLabelPosition::LowerRight, 0.6, 1.0, 0.0, 0.4),
        (SeriesLabelPosition::LowerLeft, 0.0, 0.4, 0.0, 0.4),
    ];
    let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
    for (pos, x0, x1, y0, y1) in corners {
        let n = points.iter().filter(|(x, y)| *x >= x0 && *x <= x1 && *y >= y0 && *y <= y1).count();
        if n < best.0 {
            best = (n, pos);
        }
    }
    best.1
}

fn legend_position(legend: Legend, points: &[(f64, f64)]) -> Option<SeriesLabelPosition> {
    match legend {
        Legend::None => None,
        Legend::Auto => Some(emptiest_corner(points)),
        Legend::UpperLeft => Some(SeriesLabelPosition::UpperLeft),
        Legend::UpperRight => Some(SeriesLabelPosition::UpperRight),
        Legend::LowerLeft => Some(SeriesLabelPosition::LowerLeft),
        Legend::LowerRight => Some(SeriesLabelPosition::LowerRight),
    }
}

fn font(px: u32) -> TextStyle<'static> {
    (FONT, px).into_font().into()
}

/// A tick label: the shortest of up to 6 decimals (`2`, `0.5`, `0.125`), never `-0`; scientific
/// (`2.5e-5`) below 1e-3 and from 1e7 in magnitude.
pub fn tick(v: &f64) -> String {
    let a = v.abs();
    if a > 1e-12 && !(1e-3..1e7).contains(&a) {
        let s = format!("{v:.3e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = if m.contains('.') { m.trim_end_matches('0').trim_end_matches('.') } else { m };
        return format!("{m}e{e}");
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn mesh_style<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    x_label: &str,
    y_label: &str,
    x_ticks: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let mut mesh = chart.configure_mesh();
    mesh.x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .x_desc(x_label)
        .y_desc(y_label)
        .axis_desc_style(font(AXIS_PX))
        .label_style(font(TICK_PX))
        .max_light_lines(2)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(205, 205, 205));
    if !x_ticks {
        mesh.x_labels(0).disable_x_mesh();
    }
    mesh.draw().pe()
}

/// Builder of line and scatter plots: see [`line_plot`] and [`scatter_plot`].
#[derive(Debug, Clone)]
pub struct XyPlot {
    title: String,
    x_label: String,
    y_label: String,
    series: Vec<Series>,
    connect_default: bool,
    bands: bool,
    hlines: Vec<f64>,
    x_range: Option<(f64, f64)>,
    y_range: Option<(f64, f64)>,
    legend: Legend,
    size: Option<(u32, u32)>,
}

/// A line plot: each series' points joined in x order, with markers; intervals as error bars, or
/// as shaded bands with [`XyPlot::bands`].
pub fn line_plot(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> XyPlot {
    XyPlot::new(title, x_label, y_label, true)
}

/// A scatter plot: markers only, unless a series asks for [`Series::connect`] (joined in the
/// given order, e.g. a Pareto frontier sorted by x); [`Series::labels`] annotate points.
pub fn scatter_plot(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> XyPlot {
    XyPlot::new(title, x_label, y_label, false)
}

impl XyPlot {
    fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>, connect: bool) -> Self {
        XyPlot {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            connect_default: connect,
            bands: false,
            hlines: Vec::new(),
            x_range: None,
            y_range: None,
            legend: Legend::Auto,
            size: None,
        }
    }

    /// Add a series (colours follow the order of addition).
    pub fn series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }

    /// Draw intervals as shaded bands (line plots) instead of error bars.
    pub fn bands(mut self, yes: bool) -> Self {
        self.bands = yes;
        self
    }

    /// A horizontal reference line (e.g. 0 or a baseline rate).
    pub fn hline(mut self, y: f64) -> Self {
        self.hlines.push(y);
        self
    }

    /// Fix the x range instead of fitting the data.
    pub fn x_range(mut self, lo: f64, hi: f64) -> Self {
        self.x_range = Some((lo, hi));
        self
    }

    /// Fix the y range instead of fitting the data (e.g. `(0.0, 1.0)` for rates).
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    pub fn legend(mut self, l: Legend) -> Self {
        self.legend = l;
        self
    }

    /// Size in pixels (default 1000 × 620).
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = Some((width, height));
        self
    }

    /// Check the data and make the figure.
    pub fn build(self) -> Result<Figure> {
        let what = format!("plot {:?}", self.title);
        if self.series.is_empty() {
            bail!("{what}: no series to draw");
        }
        for s in &self.series {
            s.check(&what)?;
        }
        finite(&what, "hline", &self.hlines)?;
        for (name, r) in [("x_range", self.x_range), ("y_range", self.y_range)] {
            if let Some((lo, hi)) = r {
                if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                    bail!("{what}: {name} ({lo}, {hi}) must be finite with lo < hi");
                }
            }
        }
        let size = self.size;
        Ok(figure(Spec::Xy(self), size))
    }

    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let xr = self.x_range.unwrap_or_else(|| {
            let (a, b) = min_max(self.series.iter().flat_map(|s| s.x.iter().copied()));
            padded(a, b)
        });
        let yr = self.y_range.unwrap_or_else(|| {
            let ys = self.series.iter().flat_map(|s| {
                let ci = s.ci.iter().flat_map(|(l, h)| l.iter().chain(h.iter()).copied());
                s.y.iter().copied().chain(ci)
            });
            let (a, b) = min_max(ys.chain(self.hlines.iter().copied()));
            padded(a, b)
        });
        (xr, yr)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let ((x0, x1), (y0, y1)) = self.ranges();
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, font(TITLE_PX))
            .margin(18)
            .x_label_area_size(62)
            .y_label_area_size(86)
            .build_cartesian_2d(x0..x1, y0..y1)
            .pe()?;
        mesh_style(&mut chart, &self.x_label, &self.y_label, true)?;
        for &h in &self.hlines {
            chart
                .draw_series(LineSeries::new(vec![(x0, h), (x1, h)], BLACK.mix(0.6).stroke_width(1)))
                .pe()?;
        }
        let mut norm_points = Vec::new();
        for (i, s) in self.series.iter().enumerate() {
            let color = palette(i);
            let mut order: Vec<usize> = (0..s.x.len()).collect();
            let connect = s.connect.unwrap_or(self.connect_default);
            if self.connect_default {
                order.sort_by(|&a, &b| s.x[a].total_cmp(&s.x[b]));
            }
            let pts: Vec<(f64, f64)> = order.iter().map(|&k| (s.x[k], s.y[k])).collect();
            norm_points.extend(pts.iter().map(|&(x, y)| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0))));
            if let Some((lo, hi)) = &s.ci {
                if self.bands {
                    let mut poly: Vec<(f64, f64)> = order.iter().map(|&k| (s.x[k], hi[k])).collect();
                    poly.extend(order.iter().rev().map(|&k| (s.x[k], lo[k])));
                    chart.draw_series(std::iter::once(Polygon::new(poly, color.mix(0.18).filled()))).pe()?;
                } else {
                    chart
                        .draw_series(
                            order.iter().map(|&k| ErrorBar::new_vertical(s.x[k], lo[k], s.y[k], hi[k], color.stroke_width(2), 10)),
                        )
                        .pe()?;
                }
            }
            let legend_color = color;
            if connect {
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
                    .pe()?
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], legend_color.stroke_width(3)));
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).pe()?;
            } else {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 6, color.filled())))
                    .pe()?
                    .label(s.name.clone())
                    .legend(move |(x, y)| Circle::new((x + 12, y), 6, legend_color.filled()));
            }
            if let Some(labels) = &s.labels {
                chart
                    .draw_series(order.iter().map(|&k| {
                        EmptyElement::at((s.x[k], s.y[k])) + Text::new(labels[k].clone(), (8, -18), font(NOTE_PX))
                    }))
                    .pe()?;
            }
        }
        let named = self.series.iter().any(|s| !s.name.is_empty());
        if let (true, Some(pos)) = (named, legend_position(self.legend, &norm_points)) {
            chart
                .configure_series_labels()
                .position(pos)
                .margin(12)
                .label_font(font(LEGEND_PX))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.5))
                .draw()
                .pe()?;
        }
        Ok(())
    }
}

/// Colour scales for heatmaps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColorScale {
    /// Viridis, low = dark purple, high = yellow (for rates, magnitudes).
    Viridis,
    /// Blue – white – red centred on the given value (for signed effects such as a gap or a shift).
    Diverging { center: f64 },
}

/// Builder of heatmaps: see [`heatmap`].
#[derive(Debug, Clone)]
pub struct HeatmapPlot {
    title: String,
    x_label: String,
    y_label: String,
    matrix: Matrix,
    scale: ColorScale,
    range: Option<(f64, f64)>,
    digits: Option<usize>,
    allow_missing: bool,
    colorbar_label: String,
    size: Option<(u32, u32)>,
}

/// A heatmap of `matrix`: columns along x (`x_label`), rows along y (`y_label`, first row at the
/// bottom), a colour bar on the right, and each cell annotated with its value (2 decimals; see
/// [`HeatmapPlot::annotate`]).
pub fn heatmap(
    title: impl Into<String>,
    x_label: impl Into<String>,
    y_label: impl Into<String>,
    matrix: Matrix,
) -> HeatmapPlot {
    HeatmapPlot {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        matrix,
        scale: ColorScale::Viridis,
        range: None,
        digits: Some(2),
        allow_missing: false,
        colorbar_label: String::new(),
        size: None,
    }
}

fn lerp(a: RGBColor, b: RGBColor, t: f64) -> RGBColor {
    let m = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * t).round() as u8;
    RGBColor(m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

impl ColorScale {
    /// The colour of `v` on the scale spanning `[lo, hi]`.
    pub fn color(&self, v: f64, lo: f64, hi: f64) -> RGBColor {
        match *self {
            ColorScale::Viridis => {
                let t = if hi > lo { ((v - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 0.5 };
                ViridisRGB::get_color(t)
            }
            ColorScale::Diverging { center } => {
                let (blue, white, red) = (RGBColor(33, 102, 172), RGBColor(247, 247, 247), RGBColor(178, 24, 43));
                let half = (hi - center).abs().max((center - lo).abs());
                let t = if half > 0.0 { ((v - center) / half).clamp(-1.0, 1.0) } else { 0.0 };
                if t < 0.0 {
                    lerp(white, blue, -t)
                } else {
                    lerp(white, red, t)
                }
            }
        }
    }
}

impl HeatmapPlot {
    /// Annotate cells with `digits` decimals, or not at all with `None`.
    pub fn annotate(mut self, digits: Option<usize>) -> Self {
        self.digits = digits;
        self
    }

    /// Fix the colour range (default: the data's min and max), e.g. `(0.0, 1.0)` for rates.
    pub fn range(mut self, lo: f64, hi: f64) -> Self {
        self.range = Some((lo, hi));
        self
    }

    pub fn scale(mut self, s: ColorScale) -> Self {
        self.scale = s;
        self
    }

    /// Allow NaN cells (drawn grey, annotated "n/a"), e.g. for a sweep still running. Default:
    /// a NaN cell is an error.
    pub fn allow_missing(mut self, yes: bool) -> Self {
        self.allow_missing = yes;
        self
    }

    /// The colour bar's label (what the colour means).
    pub fn colorbar_label(mut self, l: impl Into<String>) -> Self {
        self.colorbar_label = l.into();
        self
    }

    /// Size in pixels (default 1000 × 620).
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = Some((width, height));
        self
    }

    pub fn build(self) -> Result<Figure> {
        let what = format!("heatmap {:?}", self.title);
        let m = &self.matrix;
        if m.rows.is_empty() || m.cols.is_empty() {
            bail!("{what}: the matrix has {} rows and {} columns; it needs at least one of each", m.rows.len(), m.cols.len());
        }
        if m.values.len() != m.rows.len() {
            bail!("{what}: {} row labels but {} rows of values", m.rows.len(), m.values.len());
        }
        for (r, row) in m.values.iter().enumerate() {
            if row.len() != m.cols.len() {
                bail!("{what}: row {:?} has {} values but there are {} column labels", m.rows[r], row.len(), m.cols.len());
            }
            for (c, v) in row.iter().enumerate() {
                if v.is_infinite() || (v.is_nan() && !self.allow_missing) {
                    bail!(
                        "{what}: cell (row {:?}, column {:?}) is {v}; fill it, or call .allow_missing(true) to show NaN cells as missing",
                        m.rows[r],
                        m.cols[c]
                    );
                }
            }
        }
        if let Some((lo, hi)) = self.range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                bail!("{what}: colour range ({lo}, {hi}) must be finite with lo < hi");
            }
        }
        let size = self.size;
        Ok(figure(Spec::Heatmap(self), size))
    }

    fn value_range(&self) -> (f64, f64) {
        self.range.unwrap_or_else(|| {
            // An all-missing matrix (allowed with `allow_missing`) draws only missing cells: any
            // finite range will do for its colour bar.
            if !self.matrix.values.iter().flatten().any(|v| v.is_finite()) {
                return (0.0, 1.0);
            }
            let (a, b) = min_max(self.matrix.values.iter().flatten().copied().filter(|v| v.is_finite()));
            if b > a {
                (a, b)
            } else {
                (a - 0.5, b + 0.5)
            }
        })
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let m = &self.matrix;
        let (nr, nc) = (m.rows.len(), m.cols.len());
        let (lo, hi) = self.value_range();
        let (w, _) = root.dim_in_pixel();
        let (main, side) = root.split_horizontally(w.saturating_sub(150));
        let row_label_width = m.rows.iter().map(|r| r.chars().count()).max().unwrap_or(1) as u32 * 11 + 70;
        // Cell (r, c) covers [c, c+1] × [r, r+1]; labels are drawn at the centres by hand.
        let mut chart = ChartBuilder::on(&main)
            .caption(&self.title, font(TITLE_PX))
            .margin(18)
            .x_label_area_size(66)
            .y_label_area_size(row_label_width.min(280))
            .build_cartesian_2d(0.0..nc as f64, 0.0..nr as f64)
            .pe()?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .axis_desc_style(font(AXIS_PX))
            .draw()
            .pe()?;
        let grey = RGBColor(200, 200, 200);
        chart
            .draw_series((0..nr).flat_map(|r| {
                (0..nc).map(move |c| {
                    let v = m.values[r][c];
                    let fill = if v.is_nan() { grey } else { self.scale.color(v, lo, hi) };
                    Rectangle::new([(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)], fill.filled())
                })
            }))
            .pe()?;
        use plotters::style::text_anchor::{HPos, Pos, VPos};
        for (c, name) in m.cols.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(c as f64 + 0.5, 0.0));
            main.draw(&Text::new(name.clone(), (px, py + 8), font(TICK_PX).pos(Pos::new(HPos::Center, VPos::Top))))
                .pe()?;
        }
        for (r, name) in m.rows.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(0.0, r as f64 + 0.5));
            main.draw(&Text::new(name.clone(), (px - 8, py), font(TICK_PX).pos(Pos::new(HPos::Right, VPos::Center))))
                .pe()?;
        }
        if let Some(d) = self.digits {
            for r in 0..nr {
                for c in 0..nc {
                    let v = m.values[r][c];
                    let (text, ink): (String, &'static RGBColor) = if v.is_nan() {
                        ("n/a".to_string(), &BLACK)
                    } else {
                        let bg = self.scale.color(v, lo, hi);
                        let lum = 0.299 * bg.0 as f64 + 0.587 * bg.1 as f64 + 0.114 * bg.2 as f64;
                        (format!("{v:.d$}"), if lum < 140.0 { &WHITE } else { &BLACK })
                    };
                    let style = font(NOTE_PX + 1).color(ink).pos(Pos::new(HPos::Center, VPos::Center));
                    chart
                        .draw_series(std::iter::once(Text::new(text, (c as f64 + 0.5, r as f64 + 0.5), style)))
                        .pe()?;
                }
            }
        }
        // Colour bar: a column of thin rectangles from lo to hi with a labelled axis.
        let mut bar = ChartBuilder::on(&side)
            .margin_top(18 + TITLE_PX as i32 + 22)
            .margin_bottom(62 + 18)
            .margin_right(8)
            .set_label_area_size(LabelAreaPosition::Right, 80)
            .build_cartesian_2d(0.0..1.0, lo..hi)
            .pe()?;
        let mut mesh = bar.configure_mesh();
        mesh.disable_mesh().disable_x_axis().label_style(font(TICK_PX)).axis_desc_style(font(AXIS_PX - 4));
        if !self.colorbar_label.is_empty() {
            mesh.y_desc(self.colorbar_label.as_str());
        }
        mesh.draw().pe()?;
        let steps = 120;
        bar.draw_series((0..steps).map(|k| {
            let a = lo + (hi - lo) * k as f64 / steps as f64;
            let b = lo + (hi - lo) * (k + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, a), (1.0, b)], self.scale.color((a + b) / 2.0, lo, hi).filled())
        }))
        .pe()?;
        Ok(())
    }
}

/// One group of bars: a value per category, optionally with intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    pub name: String,
    pub values: Vec<f64>,
    pub ci: Option<(Vec<f64>, Vec<f64>)>,
}

impl Bars {
    pub fn new<V: ToF64>(name: impl Into<String>, values: impl IntoIterator<Item = V>) -> Self {
        Bars { name: name.into(), values: floats(values), ci: None }
    }

    /// An interval `[lo, hi]` per bar, drawn as an error bar.
    pub fn ci<L: ToF64, H: ToF64>(mut self, lo: impl IntoIterator<Item = L>, hi: impl IntoIterator<Item = H>) -> Self {
        self.ci = Some((floats(lo), floats(hi)));
        self
    }

    /// A symmetric interval `value ± err` per bar.
    pub fn err<E: ToF64>(mut self, err: impl IntoIterator<Item = E>) -> Self {
        let e = floats(err);
        self.ci = Some(if e.len() == self.values.len() {
            (
                self.values.iter().zip(&e).map(|(v, e)| v - e).collect(),
                self.values.iter().zip(&e).map(|(v, e)| v + e).collect(),
            )
        } else {
            (e.clone(), e) // the wrong length is reported by build()
        });
        self
    }
}

/// Builder of grouped bar charts: see [`bar_chart`].
#[derive(Debug, Clone)]
pub struct BarChart {
    title: String,
    x_label: String,
    y_label: String,
    categories: Vec<String>,
    groups: Vec<Bars>,
    y_range: Option<(f64, f64)>,
    legend: Legend,
    size: Option<(u32, u32)>,
}

/// A bar chart with one slot per category and, within it, one bar per group ([`BarChart::group`]),
/// with error bars where a group has intervals. Bars start at 0.
pub fn bar_chart<S: Into<String>>(
    title: impl Into<String>,
    x_label: impl Into<String>,
    y_label: impl Into<String>,
    categories: impl IntoIterator<Item = S>,
) -> BarChart {
    BarChart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        categories: categories.into_iter().map(Into::into).collect(),
        groups: Vec::new(),
        y_range: None,
        legend: Legend::Auto,
        size: None,
    }
}

impl BarChart {
    pub fn group(mut self, g: Bars) -> Self {
        self.groups.push(g);
        self
    }

    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    pub fn legend(mut self, l: Legend) -> Self {
        self.legend = l;
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = Some((width, height));
        self
    }

    pub fn build(self) -> Result<Figure> {
        let what = format!("bar chart {:?}", self.title);
        if self.categories.is_empty() {
            bail!("{what}: no categories");
        }
        if self.groups.is_empty() {
            bail!("{what}: no bars (add a group)");
        }
        let n = self.categories.len();
        for g in &self.groups {
            if g.values.len() != n {
                bail!("{what}: group {:?} has {} values for {n} categories", g.name, g.values.len());
            }
            finite(&what, &format!("group {:?} values", g.name), &g.values)?;
            if let Some((lo, hi)) = &g.ci {
                if lo.len() != n || hi.len() != n {
                    bail!("{what}: group {:?} has {n} values but {} lower and {} upper bounds", g.name, lo.len(), hi.len());
                }
                finite(&what, &format!("group {:?} interval lower bound", g.name), lo)?;
                finite(&what, &format!("group {:?} interval upper bound", g.name), hi)?;
            }
        }
        if let Some((lo, hi)) = self.y_range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                bail!("{what}: y_range ({lo}, {hi}) must be finite with lo < hi");
            }
        }
        let size = self.size;
        Ok(figure(Spec::Bars(self), size))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let n = self.categories.len();
        let k = self.groups.len();
        let (y0, y1) = self.y_range.unwrap_or_else(|| {
            let vals = self.groups.iter().flat_map(|g| {
                let ci = g.ci.iter().flat_map(|(l, h)| l.iter().chain(h.iter()).copied());
                g.values.iter().copied().chain(ci)
            });
            let (a, b) = min_max(vals.chain(std::iter::once(0.0)));
            let (pa, pb) = padded(a, b);
            // Headroom above the bars for the legend.
            let room = if self.legend != Legend::None && k > 1 { (b - a) * 0.2 } else { 0.0 };
            (if a >= 0.0 { 0.0 } else { pa }, if b <= 0.0 { 0.0 } else { pb + room })
        });
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, font(TITLE_PX))
            .margin(18)
            .x_label_area_size(70)
            .y_label_area_size(86)
            .build_cartesian_2d(-0.5..(n as f64 - 0.5), y0..y1)
            .pe()?;
        mesh_style(&mut chart, &self.x_label, &self.y_label, false)?;
        let slot = 0.8 / k as f64;
        let mut norm_points = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let color = palette(gi);
            let left = |c: usize| c as f64 - 0.4 + gi as f64 * slot;
            let legend_color = color;
            chart
                .draw_series((0..n).map(|c| {
                    Rectangle::new([(left(c) + slot * 0.06, 0.0), (left(c) + slot * 0.94, g.values[c])], color.filled())
                }))
                .pe()?
                .label(g.name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 7), (x + 16, y + 7)], legend_color.filled()));
            if let Some((lo, hi)) = &g.ci {
                chart
                    .draw_series((0..n).map(|c| {
                        ErrorBar::new_vertical(left(c) + slot / 2.0, lo[c], g.values[c], hi[c], BLACK.stroke_width(2), 12)
                    }))
                    .pe()?;
            }
            // Sample each bar's extent (and its error bar) so the legend avoids it.
            for c in 0..n {
                let top = g.ci.as_ref().map_or(g.values[c], |(_, hi)| hi[c].max(g.values[c]));
                let xn = (left(c) + slot / 2.0 + 0.5) / n as f64;
                for f in [0.0, 0.25, 0.5, 0.75, 1.0] {
                    norm_points.push((xn, (top * f - y0) / (y1 - y0)));
                }
            }
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(-0.5, 0.0_f64.clamp(y0, y1)), (n as f64 - 0.5, 0.0_f64.clamp(y0, y1))],
                BLACK.stroke_width(1),
            )))
            .pe()?;
        // Category labels under each slot, in pixel coordinates below the plotting area.
        let label_style = font(TICK_PX).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
        for (c, name) in self.categories.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(c as f64, y0));
            root.draw(&Text::new(name.clone(), (px, py + 8), label_style.clone())).pe()?;
        }
        let named = self.groups.len() > 1 || self.groups.iter().any(|g| !g.name.is_empty());
        if let (true, Some(pos)) = (named, legend_position(self.legend, &norm_points)) {
            chart
                .configure_series_labels()
                .position(pos)
                .margin(12)
                .label_font(font(LEGEND_PX))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.5))
                .draw()
                .pe()?;
        }
        Ok(())
    }
}

/// Builder of histograms: see [`histogram`].
#[derive(Debug, Clone)]
pub struct Histogram {
    title: String,
    x_label: String,
    samples: Vec<(String, Vec<f64>)>,
    bins: Option<usize>,
    density: bool,
    legend: Legend,
    size: Option<(u32, u32)>,
}

/// Histograms of one or more samples on shared bins, overlaid with transparency. The y axis is a
/// count, or a density (count / (n · bin width), so samples of different sizes compare) with
/// [`Histogram::density`].
pub fn histogram(title: impl Into<String>, x_label: impl Into<String>) -> Histogram {
    Histogram {
        title: title.into(),
        x_label: x_label.into(),
        samples: Vec::new(),
        bins: None,
        density: false,
        legend: Legend::Auto,
        size: None,
    }
}

impl Histogram {
    pub fn sample<V: ToF64>(mut self, name: impl Into<String>, values: impl IntoIterator<Item = V>) -> Self {
        self.samples.push((name.into(), floats(values)));
        self
    }

    /// Number of bins (default: Sturges' rule on the largest sample, at least 10).
    pub fn bins(mut self, n: usize) -> Self {
        self.bins = Some(n);
        self
    }

    pub fn density(mut self, yes: bool) -> Self {
        self.density = yes;
        self
    }

    pub fn legend(mut self, l: Legend) -> Self {
        self.legend = l;
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = Some((width, height));
        self
    }

    pub fn build(self) -> Result<Figure> {
        let what = format!("histogram {:?}", self.title);
        if self.samples.is_empty() {
            bail!("{what}: no samples");
        }
        for (name, v) in &self.samples {
            if v.is_empty() {
                bail!("{what}: sample {name:?} is empty");
            }
            finite(&what, &format!("sample {name:?}"), v)?;
        }
        if self.bins == Some(0) {
            bail!("{what}: bins must be at least 1");
        }
        let size = self.size;
        Ok(figure(Spec::Hist(self), size))
    }

    /// Bin edges and, per sample, the bar heights (counts or densities).
    pub fn binned(&self) -> (Vec<f64>, Vec<Vec<f64>>) {
        let nmax = self.samples.iter().map(|(_, v)| v.len()).max().unwrap_or(1);
        let bins = self.bins.unwrap_or_else(|| ((nmax as f64).log2().ceil() as usize + 1).max(10));
        let (a, b) = min_max(self.samples.iter().flat_map(|(_, v)| v.iter().copied()));
        let (a, b) = if b > a { (a, b) } else { (a - 0.5, b + 0.5) };
        let width = (b - a) / bins as f64;
        let edges: Vec<f64> = (0..=bins).map(|i| a + width * i as f64).collect();
        let heights = self
            .samples
            .iter()
            .map(|(_, v)| {
                let mut h = vec![0.0; bins];
                for &x in v {
                    let i = (((x - a) / width).floor() as usize).min(bins - 1);
                    h[i] += 1.0;
                }
                if self.density {
                    for c in &mut h {
                        *c /= v.len() as f64 * width;
                    }
                }
                h
            })
            .collect();
        (edges, heights)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (edges, heights) = self.binned();
        let x0 = edges[0];
        let x1 = *edges.last().unwrap();
        let (_, top) = min_max(heights.iter().flatten().copied());
        // Headroom above the bars for the legend.
        let top = top * if self.legend != Legend::None && self.samples.len() > 1 { 1.3 } else { 1.08 };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, font(TITLE_PX))
            .margin(18)
            .x_label_area_size(62)
            .y_label_area_size(86)
            .build_cartesian_2d(padded(x0, x1).0..padded(x0, x1).1, 0.0..top)
            .pe()?;
        mesh_style(&mut chart, &self.x_label, if self.density { "density" } else { "count" }, true)?;
        let mut norm_points = Vec::new();
        for (si, ((name, _), h)) in self.samples.iter().zip(&heights).enumerate() {
            let color = palette(si);
            let alpha = if self.samples.len() > 1 { 0.45 } else { 0.8 };
            let legend_color = color;
            chart
                .draw_series(
                    h.iter().enumerate().map(|(i, &c)| Rectangle::new([(edges[i], 0.0), (edges[i + 1], c)], color.mix(alpha).filled())),
                )
                .pe()?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 7), (x + 16, y + 7)], legend_color.mix(alpha).filled()));
            chart
                .draw_series(
                    h.iter().enumerate().map(|(i, &c)| Rectangle::new([(edges[i], 0.0), (edges[i + 1], c)], color.stroke_width(1))),
                )
                .pe()?;
            for (i, &c) in h.iter().enumerate() {
                let xn = ((edges[i] + edges[i + 1]) / 2.0 - x0) / (x1 - x0);
                norm_points.push((xn, c / top));
                norm_points.push((xn, c / top / 2.0));
            }
        }
        let named = self.samples.len() > 1 || self.samples.iter().any(|(n, _)| !n.is_empty());
        if let (true, Some(pos)) = (named, legend_position(self.legend, &norm_points)) {
            chart
                .configure_series_labels()
                .position(pos)
                .margin(12)
                .label_font(font(LEGEND_PX))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.5))
                .draw()
                .pe()?;
        }
        Ok(())
    }
}
