//! Table helpers on eager polars DataFrames (interp_kit builds polars without its lazy engine):
//! group summaries with confidence intervals, pivots into a [`Matrix`] for heatmaps, column
//! extraction for plots, equality filters, and a pretty-printer for notebooks.
//!
//! Grouping uses polars' eager `DataFrame::group_by_stable` for the group indices; the statistics
//! per group are computed here (mean, sample standard deviation, and a 95% interval: Student t for
//! numeric columns, Wilson score for boolean columns, whose mean is a rate), with statrs for the
//! quantiles.
pub mod markdown;
pub mod rows;

pub use rows::{from_df, to_df, to_df_with_header};
use anyhow::{anyhow, bail, Context, Result};
use polars::prelude::*;
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// The rows of the Parquet file `path` as structs ([`crate::base::io::read_parquet`], then
/// [`from_df`]); a cell of the wrong type names the file as well as the row and column.
pub fn read_rows<T: serde::de::DeserializeOwned>(path: impl AsRef<std::path::Path>) -> Result<Vec<T>> {
    let path = path.as_ref();
    let df = crate::base::io::read_parquet(path)?;
    from_df(&df).with_context(|| format!("rows of {}", path.display()))
}

/// The same table without polars' cached schema.
///
/// In evcxr every cell is a separate library with its own copy of polars' statics, among them the
/// global seed of the hasher behind a DataFrame's cached schema. A DataFrame whose schema was
/// cached in one cell then fails name lookups in a later one (`no column "x"` although `x` is
/// there). Every helper in this module starts from `fresh(df)`; notebook code that calls polars'
/// own by-name methods (`df.column("x")`, `df.select(..)`) on a DataFrame made in an earlier cell
/// should do the same. The columns are shared, not copied.
pub fn fresh(df: &DataFrame) -> DataFrame {
    DataFrame::new(df.height(), df.columns().to_vec()).unwrap_or_else(|_| df.clone())
}

fn col<'a>(df: &'a DataFrame, name: &str) -> Result<&'a Column> {
    df.column(name).map_err(|_| {
        let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
        anyhow!("no column {name:?} in the table; columns are {names:?}")
    })
}

/// True for the dtypes whose values are numbers: integers, floats, booleans (0/1).
fn is_numeric(dt: &DataType) -> bool {
    dt.is_primitive_numeric() || matches!(dt, DataType::Boolean | DataType::Null)
}

/// A column as f64 (integers and booleans cast; nulls become NaN). Errors name the column.
pub fn column_f64(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
    let df = &fresh(df);
    let c = col(df, name)?;
    if !is_numeric(c.dtype()) {
        bail!("column {name:?} ({}) is not numeric", c.dtype());
    }
    let c = c
        .cast(&DataType::Float64)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("column {name:?} ({}) is not numeric", c.dtype()))?;
    Ok(c.f64()?.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// A column as strings (any type, formatted as [`pretty`] does with full float precision; nulls
/// become `"null"`).
pub fn column_str(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    let df = &fresh(df);
    let c = col(df, name)?;
    (0..c.len()).map(|i| Ok(fmt_value(&c.get(i)?, None))).collect()
}

/// A value usable in [`filter_eq`]: strings, numbers, booleans.
pub trait FilterValue {
    fn to_series(&self) -> Series;
}
macro_rules! filter_value {
    ($($t:ty),*) => {$(
        impl FilterValue for $t {
            fn to_series(&self) -> Series { Series::new("".into(), [*self]) }
        }
    )*};
}
filter_value!(f64, f32, i64, i32, u32, u64, bool);
impl FilterValue for usize {
    fn to_series(&self) -> Series {
        Series::new("".into(), [*self as u64])
    }
}
impl FilterValue for &str {
    fn to_series(&self) -> Series {
        Series::new("".into(), [*self])
    }
}
impl FilterValue for String {
    fn to_series(&self) -> Series {
        Series::new("".into(), [self.as_str()])
    }
}

/// The rows where column `name` equals `value` (exact equality; nulls never match). Numbers
/// compare across integer and float types.
pub fn filter_eq(df: &DataFrame, name: &str, value: impl FilterValue) -> Result<DataFrame> {
    let df = &fresh(df);
    let c = col(df, name)?.as_materialized_series();
    let v = value.to_series();
    let mask = c
        .equal(&v)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("comparing column {name:?} ({}) with a {} value", c.dtype(), v.dtype()))?;
    Ok(df.filter(&mask)?)
}

/// Group indices in first-appearance order and the key columns, checking names first.
fn groups(df: &DataFrame, by: &[&str], cols: &[&str]) -> Result<(Vec<Column>, Vec<Vec<usize>>)> {
    if df.height() == 0 {
        bail!("cannot summarise an empty table (0 rows)");
    }
    if by.is_empty() {
        bail!("group by at least one column");
    }
    for n in by.iter().chain(cols) {
        col(df, n)?;
    }
    let gb = df.group_by_stable(by.iter().copied())?;
    let keys = gb.keys();
    let idx: Vec<Vec<usize>> = gb
        .get_groups()
        .iter()
        .map(|g| match g {
            GroupsIndicator::Idx((_, v)) => v.iter().map(|&i| i as usize).collect(),
            GroupsIndicator::Slice([first, len]) => (first as usize..(first + len) as usize).collect(),
        })
        .collect();
    Ok((keys, idx))
}

/// Mean, sample standard deviation and 95% interval of the non-null values. `rate`: Wilson score
/// interval for a proportion (values 0/1), else Student t.
fn stats(vals: &[f64], rate: bool) -> (f64, f64, f64, f64) {
    let n = vals.len() as f64;
    if vals.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = vals.iter().sum::<f64>() / n;
    let sd = if vals.len() > 1 {
        (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        f64::NAN
    };
    let (lo, hi) = if rate {
        let z = Normal::standard().inverse_cdf(0.975);
        let z2 = z * z;
        let denom = 1.0 + z2 / n;
        let centre = (mean + z2 / (2.0 * n)) / denom;
        let half = z / denom * (mean * (1.0 - mean) / n + z2 / (4.0 * n * n)).sqrt();
        (centre - half, centre + half)
    } else if vals.len() > 1 {
        let t = StudentsT::new(0.0, 1.0, n - 1.0).map(|d| d.inverse_cdf(0.975)).unwrap_or(f64::NAN);
        let half = t * sd / n.sqrt();
        (mean - half, mean + half)
    } else {
        (f64::NAN, f64::NAN)
    };
    (mean, sd, lo, hi)
}

fn value_columns(df: &DataFrame, by: &[&str], cols: &[&str]) -> Result<Vec<(Vec<Option<f64>>, bool)>> {
    cols.iter()
        .map(|&c| {
            let column = col(df, c)?;
            if !is_numeric(column.dtype()) {
                bail!("column {c:?} ({}) is not numeric or boolean", column.dtype());
            }
            if by.contains(&c) {
                bail!("column {c:?} is both a group key and a value to summarise");
            }
            let rate = column.dtype() == &DataType::Boolean;
            let f = column
                .cast(&DataType::Float64)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("column {c:?} ({}) is not numeric or boolean", column.dtype()))?;
            Ok((f.f64()?.iter().collect(), rate))
        })
        .collect()
}

fn sort_by_keys(df: DataFrame, by: &[&str]) -> Result<DataFrame> {
    Ok(df.sort(by.iter().copied(), SortMultipleOptions::default().with_maintain_order(true))?)
}

/// Per group of `by`: `n` (rows in the group) and, for each column `c` of `cols`, `c_mean`,
/// `c_std` (sample, ddof 1), and the 95% interval `c_lo`, `c_hi`. Boolean columns are rates: the
/// mean is the share of `true` and the interval is Wilson's score interval; numeric columns get the
/// Student t interval `mean ± t(0.975, n-1)·sd/√n` (NaN for a group of one). Nulls are skipped.
/// Rows are sorted by the key columns.
pub fn group_summary(df: &DataFrame, by: &[&str], cols: &[&str]) -> Result<DataFrame> {
    let df = &fresh(df);
    let (mut out, idx) = groups(df, by, cols)?;
    out.push(Column::new("n".into(), idx.iter().map(|g| g.len() as u32).collect::<Vec<_>>()));
    for (name, (vals, rate)) in cols.iter().zip(value_columns(df, by, cols)?) {
        let mut m = Vec::with_capacity(idx.len());
        let (mut s, mut lo, mut hi) = (m.clone(), m.clone(), m.clone());
        for g in &idx {
            let xs: Vec<f64> = g.iter().filter_map(|&i| vals[i]).collect();
            let (a, b, c, d) = stats(&xs, rate);
            m.push(a);
            s.push(b);
            lo.push(c);
            hi.push(d);
        }
        out.push(Column::new(format!("{name}_mean").into(), m));
        out.push(Column::new(format!("{name}_std").into(), s));
        out.push(Column::new(format!("{name}_lo").into(), lo));
        out.push(Column::new(format!("{name}_hi").into(), hi));
    }
    sort_by_keys(DataFrame::new_infer_height(out)?, by)
}

/// Per group of `by`: `n` and the mean of each column of `cols` under its own name (booleans:
/// the share of `true`, i.e. a rate). Nulls are skipped. Rows are sorted by the key columns.
pub fn group_mean(df: &DataFrame, by: &[&str], cols: &[&str]) -> Result<DataFrame> {
    let df = &fresh(df);
    let (mut out, idx) = groups(df, by, cols)?;
    out.push(Column::new("n".into(), idx.iter().map(|g| g.len() as u32).collect::<Vec<_>>()));
    for (name, (vals, _)) in cols.iter().zip(value_columns(df, by, cols)?) {
        let m: Vec<f64> = idx
            .iter()
            .map(|g| {
                let xs: Vec<f64> = g.iter().filter_map(|&i| vals[i]).collect();
                xs.iter().sum::<f64>() / xs.len() as f64
            })
            .collect();
        out.push(Column::new((*name).into(), m));
    }
    sort_by_keys(DataFrame::new_infer_height(out)?, by)
}

/// Distinct values of a column as labels, in ascending order for numeric columns and in order of
/// first appearance otherwise, with each row's label index.
fn levels(df: &DataFrame, name: &str) -> Result<(Vec<String>, Vec<usize>)> {
    let c = col(df, name)?;
    let labels = column_str(df, name)?;
    let mut order: Vec<String> = Vec::new();
    for l in &labels {
        if !order.contains(l) {
            order.push(l.clone());
        }
    }
    if c.dtype().is_primitive_numeric() {
        let nums = column_f64(df, name)?;
        let mut pairs: Vec<(f64, String)> = order
            .iter()
            .map(|l| (nums[labels.iter().position(|x| x == l).unwrap()], l.clone()))
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        order = pairs.into_iter().map(|p| p.1).collect();
    }
    let pos = labels.iter().map(|l| order.iter().position(|o| o == l).unwrap()).collect();
    Ok((order, pos))
}

/// A long table as a matrix for [`crate::viz::plots::heatmap`]: rows are the distinct values of
/// `row`, columns those of `column` (numeric keys ascending, others in first-appearance order),
/// cells the `value` column. A missing combination is NaN; a duplicated one is an error (aggregate
/// first, e.g. with [`group_mean`]).
pub fn pivot(df: &DataFrame, row: &str, column: &str, value: &str) -> Result<Matrix> {
    let df = &fresh(df);
    if df.height() == 0 {
        bail!("cannot pivot an empty table (0 rows)");
    }
    let (rows, ri) = levels(df, row)?;
    let (cols, ci) = levels(df, column)?;
    let v = column_f64(df, value)?;
    let mut values = vec![vec![f64::NAN; cols.len()]; rows.len()];
    let mut seen = vec![vec![false; cols.len()]; rows.len()];
    for k in 0..v.len() {
        let (r, c) = (ri[k], ci[k]);
        if seen[r][c] {
            bail!(
                "pivot: several rows have {row} = {} and {column} = {}; aggregate them first (group_mean)",
                rows[r],
                cols[c]
            );
        }
        seen[r][c] = true;
        values[r][c] = v[k];
    }
    Ok(Matrix { rows, cols, values })
}

/// Format one value: floats with `digits` decimals (None: shortest exact form), strings bare.
pub(crate) fn fmt_value(v: &AnyValue, digits: Option<usize>) -> String {
    let float = |x: f64| match digits {
        _ if x.is_nan() => "NaN".to_string(),
        Some(d) => format!("{x:.d$}"),
        None => format!("{x}"),
    };
    match v {
        AnyValue::Null => "null".into(),
        AnyValue::Float64(x) => float(*x),
        AnyValue::Float32(x) => float(*x as f64),
        AnyValue::String(s) => s.to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        AnyValue::Boolean(b) => b.to_string(),
        other => {
            let s = other.to_string();
            s.trim_matches('"').to_string()
        }
    }
}

/// A DataFrame formatted for reading: every column, floats with a fixed number of decimals, the
/// first and last rows when long. `Display` gives an aligned text table; in evcxr the value shows
/// as an HTML table (with the text as the plain-text alternative).
#[derive(Debug, Clone)]
pub struct Pretty {
    df: DataFrame,
    max_rows: usize,
    digits: usize,
    title: Option<String>,
}

/// Wrap a DataFrame for display: `pretty(&df).digits(3).max_rows(40)`.
pub fn pretty(df: &DataFrame) -> Pretty {
    Pretty { df: fresh(df), max_rows: 40, digits: 3, title: None }
}

impl Pretty {
    /// Show at most `n` rows (half from the top, half from the bottom). Default 40.
    pub fn max_rows(mut self, n: usize) -> Self {
        self.max_rows = n.max(2);
        self
    }

    /// Decimals for floats. Default 3.
    pub fn digits(mut self, d: usize) -> Self {
        self.digits = d;
        self
    }

    /// A title line above the table.
    pub fn title(mut self, t: impl Into<String>) -> Self {
        self.title = Some(t.into());
        self
    }

    /// Header and the cells to show (`None` marks the elision row), as strings.
    fn cells(&self) -> (Vec<String>, Vec<Option<Vec<String>>>, Vec<bool>) {
        let cols = self.df.columns();
        let header: Vec<String> = cols.iter().map(|c| c.name().to_string()).collect();
        let numeric: Vec<bool> = cols.iter().map(|c| c.dtype().is_primitive_numeric()).collect();
        let h = self.df.height();
        let shown: Vec<Option<usize>> = if h <= self.max_rows {
            (0..h).map(Some).collect()
        } else {
            let top = self.max_rows / 2;
            let bottom = self.max_rows - top;
            (0..top).map(Some).chain(std::iter::once(None)).chain((h - bottom..h).map(Some)).collect()
        };
        let rows = shown
            .into_iter()
            .map(|r| {
                r.map(|i| {
                    cols.iter()
                        .map(|c| c.get(i).map(|v| fmt_value(&v, Some(self.digits))).unwrap_or_else(|_| "?".into()))
                        .collect()
                })
            })
            .collect();
        (header, rows, numeric)
    }

    /// The table as GitHub markdown (for reports).
    pub fn to_markdown(&self) -> String {
        let (header, rows, numeric) = self.cells();
        let esc = markdown::escape_cell;
        let mut s = String::new();
        if let Some(t) = &self.title {
            s.push_str(&format!("**{}**\n\n", markdown::escape_inline(t)));
        }
        s.push_str(&format!("| {} |\n", header.iter().map(|h| esc(h)).collect::<Vec<_>>().join(" | ")));
        s.push_str(&format!(
            "|{}|\n",
            numeric.iter().map(|&n| if n { "---:" } else { ":---" }).collect::<Vec<_>>().join("|")
        ));
        for r in rows {
            let cells = r.unwrap_or_else(|| vec!["…".into(); header.len()]);
            s.push_str(&format!("| {} |\n", cells.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")));
        }
        s
    }

    fn to_html(&self) -> String {
        let (header, rows, numeric) = self.cells();
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let mut s = String::from("<table>");
        if let Some(t) = &self.title {
            s.push_str(&format!("<caption>{}</caption>", esc(t)));
        }
        s.push_str("<thead><tr>");
        for h in &header {
            s.push_str(&format!("<th>{}</th>", esc(h)));
        }
        s.push_str("</tr></thead><tbody>");
        for r in rows {
            s.push_str("<tr>");
            match r {
                Some(cells) => {
                    for (c, &n) in cells.iter().zip(&numeric) {
                        let align = if n { "right" } else { "left" };
                        s.push_str(&format!("<td style=\"text-align:{align}\">{}</td>", esc(c)));
                    }
                }
                None => s.push_str(&format!("<td colspan=\"{}\">…</td>", header.len())),
            }
            s.push_str("</tr>");
        }
        s.push_str(&format!(
            "</tbody></table><p>{} rows × {} columns</p>",
            self.df.height(),
            self.df.width()
        ));
        s
    }

    /// evcxr's rich display hook: an HTML table plus the text table.
    pub fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT", self.to_html());
        println!("EVCXR_BEGIN_CONTENT text/plain\n{self}\nEVCXR_END_CONTENT");
    }
}

impl std::fmt::Display for Pretty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (header, rows, numeric) = self.cells();
        let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for r in rows.iter().flatten() {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String], f: &mut std::fmt::Formatter<'_>| -> std::fmt::Result {
            let parts: Vec<String> = cells
                .iter()
                .zip(&width)
                .zip(&numeric)
                .map(|((c, &w), &n)| if n { format!("{c:>w$}") } else { format!("{c:<w$}") })
                .collect();
            writeln!(f, "{}", parts.join("  ").trim_end())
        };
        if let Some(t) = &self.title {
            writeln!(f, "{t}")?;
        }
        line(&header, f)?;
        writeln!(f, "{}", width.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>().join("  "))?;
        for r in &rows {
            match r {
                Some(cells) => line(cells, f)?,
                None => writeln!(f, "…")?,
            }
        }
        write!(f, "({} rows × {} columns)", self.df.height(), self.df.width())
    }
}

/// A matrix of values with row and column labels: `values[r][c]` belongs to `rows[r]`, `cols[c]`.
/// Made by hand or from a long table with [`pivot`].
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub values: Vec<Vec<f64>>,
}

impl Matrix {
    pub fn new<S: Into<String>, T: Into<String>>(
        rows: impl IntoIterator<Item = S>,
        cols: impl IntoIterator<Item = T>,
        values: Vec<Vec<f64>>,
    ) -> Self {
        Matrix {
            rows: rows.into_iter().map(Into::into).collect(),
            cols: cols.into_iter().map(Into::into).collect(),
            values,
        }
    }

    /// The value at row label `r`, column label `c`.
    pub fn get(&self, r: &str, c: &str) -> Option<f64> {
        let i = self.rows.iter().position(|x| x == r)?;
        let j = self.cols.iter().position(|x| x == c)?;
        Some(self.values[i][j])
    }
}

