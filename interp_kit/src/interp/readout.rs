//! Activations of generated responses: the residual stream averaged over each row's response
//! tokens (and over its prompt, and at the prompt's last token), and the per-token projection
//! of a response onto a direction at every layer, as a table and as coloured HTML.
//!
//! A *row* is a prompt plus the tokens generated after it ([`GeneratedRow`]). Each batch of rows
//! runs one forward pass (left-padded, rows grouped by length) caching every position at the
//! requested hook points; the summaries are taken from that cache, so the response mean sees
//! the response tokens exactly as the model processed them after the prompt (teacher forcing).
//!
//! * [`readout`]: per hook point, three `[N, D]` f32 CPU matrices (row order kept):
//!   `response_mean` (tokens `p..p+r`), `prompt_mean` (tokens `0..p`), `prompt_last` (token `p-1`).
//! * [`projection_table`]: columns `row` (i64), `token_index` (i64, 0 = first response token),
//!   `token_text`, `layer` (i64), `projection` (f64) = activation · unit(direction), for every
//!   response token and every hook point given a direction.
//! * [`TokenHtml`]: a response's tokens with a diverging background (blue negative, white 0,
//!   red positive; symmetric scale `max |value|`), text HTML-escaped, each value in a tooltip;
//!   a notebook cell ending in a `TokenHtml` shows it inline (evcxr `text/html`).

use crate::interp::directions::Direction;
use crate::generate::Generation;
use crate::hooks::{HookPoint, Hooks, Positions};
use crate::model::{LogitsAt, Model};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use polars::prelude::{Column, DataFrame};
use std::collections::BTreeMap;

/// A prompt and the response generated after it.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedRow {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
}

impl GeneratedRow {
    pub fn new(prompt: Vec<u32>, response: Vec<u32>) -> Self {
        GeneratedRow { prompt, response }
    }
    /// The row of a [`Generation`] from `prompt` (its tokens; the end-of-sequence token that
    /// stopped it is not among them).
    pub fn from_generation(prompt: &[u32], g: &Generation) -> Self {
        GeneratedRow { prompt: prompt.to_vec(), response: g.tokens.clone() }
    }
    fn ids(&self) -> Vec<u32> {
        self.prompt.iter().chain(&self.response).copied().collect()
    }
}

/// Response-, prompt- and prompt-last activations per hook point, `[N, D]` f32 CPU each.
#[derive(Clone, Debug)]
pub struct Readout {
    pub response_mean: BTreeMap<HookPoint, Tensor>,
    pub prompt_mean: BTreeMap<HookPoint, Tensor>,
    pub prompt_last: BTreeMap<HookPoint, Tensor>,
}

fn check_rows(rows: &[GeneratedRow]) -> Result<()> {
    ensure!(!rows.is_empty(), "no rows given");
    for (i, r) in rows.iter().enumerate() {
        ensure!(!r.prompt.is_empty(), "row {i}: empty prompt");
        ensure!(!r.response.is_empty(), "row {i}: empty response (nothing to average or project)");
    }
    Ok(())
}

/// Runs `rows` in batches with every position cached at `points`, calling `f(row, point, acts)`
/// with the row's `[prompt + response, D]` activations.
fn for_each_row(
    model: &Model,
    rows: &[GeneratedRow],
    points: &[HookPoint],
    batch_size: usize,
    mut f: impl FnMut(usize, HookPoint, &Tensor) -> Result<()>,
) -> Result<()> {
    check_rows(rows)?;
    ensure!(!points.is_empty(), "no hook points given");
    ensure!(batch_size > 0, "batch_size must be at least 1");
    model.check_points(points.iter())?;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (rows[i].prompt.len() + rows[i].response.len(), i));
    for chunk in order.chunks(batch_size) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|&i| rows[i].ids()).collect();
        let hooks = Hooks::new().cache_many(points.iter().copied(), Positions::All);
        let out = model.forward_at(&ids, &hooks, LogitsAt::None).with_context(|| format!("rows {chunk:?}"))?;
        for p in points {
            for (b, &i) in chunk.iter().enumerate() {
                let t = out.activations.row(*p, b)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
                ensure!(t.dim(0)? == ids[b].len(), "{p}: row {i}: {} cached positions for {} tokens", t.dim(0)?, ids[b].len());
                f(i, *p, &t)?;
            }
        }
    }
    Ok(())
}

/// Response-averaged, prompt-averaged and prompt-last activations of `rows` at `points`, in
/// batches of `batch_size` rows (one forward pass each).
pub fn readout(model: &Model, rows: &[GeneratedRow], points: &[HookPoint], batch_size: usize) -> Result<Readout> {
    let n = rows.len();
    let empty = || points.iter().map(|p| (*p, vec![None::<Tensor>; n])).collect::<BTreeMap<_, _>>();
    let (mut resp, mut prom, mut last) = (empty(), empty(), empty());
    for_each_row(model, rows, points, batch_size, |i, p, t| {
        let pl = rows[i].prompt.len();
        let rl = rows[i].response.len();
        resp.get_mut(&p).expect("point")[i] = Some(t.narrow(0, pl, rl)?.mean(0)?);
        prom.get_mut(&p).expect("point")[i] = Some(t.narrow(0, 0, pl)?.mean(0)?);
        last.get_mut(&p).expect("point")[i] = Some(t.i(pl - 1)?);
        Ok(())
    })?;
    let stack = |m: BTreeMap<HookPoint, Vec<Option<Tensor>>>| -> Result<BTreeMap<HookPoint, Tensor>> {
        m.into_iter()
            .map(|(p, v)| {
                let v: Vec<Tensor> = v.into_iter().map(|t| t.expect("every row visited")).collect();
                Ok((p, Tensor::stack(&v, 0)?))
            })
            .collect()
    };
    Ok(Readout { response_mean: stack(resp)?, prompt_mean: stack(prom)?, prompt_last: stack(last)? })
}

/// Per-token projections of each row's response onto `dirs[point]` (scalar projection on the
/// unit direction) at every point of `dirs`; columns `row`, `token_index`, `token_text`,
/// `layer`, `projection`, ordered by row, point, token. Token texts come from the model's
/// tokenizer (`<id N>` without one).
pub fn projection_table(
    model: &Model,
    rows: &[GeneratedRow],
    dirs: &BTreeMap<HookPoint, Direction>,
    batch_size: usize,
) -> Result<DataFrame> {
    ensure!(!dirs.is_empty(), "no directions given");
    let mut units = BTreeMap::new();
    for (p, d) in dirs {
        d.check_dim(model.d_model()).with_context(|| format!("direction at {p}"))?;
        ensure!(d.norm() > 0.0, "direction at {p} is zero");
        units.insert(*p, d.normalized()?.to_tensor(&Device::Cpu, DType::F32)?);
    }
    let points: Vec<HookPoint> = dirs.keys().copied().collect();
    let mut proj: BTreeMap<(usize, HookPoint), Vec<f32>> = BTreeMap::new();
    for_each_row(model, rows, &points, batch_size, |i, p, t| {
        let pl = rows[i].prompt.len();
        let r = t.narrow(0, pl, rows[i].response.len())?;
        let v: Vec<f32> = r.matmul(&units[&p].unsqueeze(1)?)?.squeeze(1)?.to_vec1()?;
        proj.insert((i, p), v);
        Ok(())
    })?;
    let text = |id: u32| model.tokenizer.as_ref().map_or_else(|| format!("<id {id}>"), |t| t.token_str(id));
    let (mut row, mut idx, mut txt, mut layer, mut val) = (vec![], vec![], vec![], vec![], vec![]);
    for ((i, p), v) in &proj {
        for (k, x) in v.iter().enumerate() {
            row.push(*i as i64);
            idx.push(k as i64);
            txt.push(text(rows[*i].response[k]));
            layer.push(p.layer as i64);
            val.push(*x as f64);
        }
    }
    Ok(DataFrame::new_infer_height(vec![
        Column::new("row".into(), row),
        Column::new("token_index".into(), idx),
        Column::new("token_text".into(), txt),
        Column::new("layer".into(), layer),
        Column::new("projection".into(), val),
    ])?)
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attributes.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The diverging colour of `v` on the scale `[-scale, scale]`: white at 0, `rgb(214,39,40)`
/// (red) at `+scale`, `rgb(31,119,180)` (blue) at `-scale`, linear in between.
pub fn diverging_rgb(v: f64, scale: f64) -> (u8, u8, u8) {
    let t = if scale > 0.0 && v.is_finite() { (v / scale).clamp(-1.0, 1.0) } else { 0.0 };
    let end = if t >= 0.0 { (214.0, 39.0, 40.0) } else { (31.0, 119.0, 180.0) };
    let a = t.abs();
    let mix = |e: f64| (255.0 + (e - 255.0) * a).round() as u8;
    (mix(end.0), mix(end.1), mix(end.2))
}

/// Tokens coloured by a value, as an HTML fragment (a `<div>` of `<span>`s).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenHtml(pub String);

impl TokenHtml {
    /// Renders `tokens` coloured by `values` (same length), with an optional title; newlines in
    /// tokens are shown as `⏎` and a line break.
    pub fn new(tokens: &[String], values: &[f64], title: Option<&str>) -> Result<Self> {
        ensure!(tokens.len() == values.len(), "{} tokens but {} values", tokens.len(), values.len());
        let scale = values.iter().filter(|v| v.is_finite()).fold(0.0f64, |m, v| m.max(v.abs()));
        let mut s = String::from("<div style=\"font-family:monospace;line-height:1.9;white-space:pre-wrap\">");
        if let Some(t) = title {
            s.push_str(&format!("<div style=\"font-weight:bold\">{} (scale ±{scale:.3})</div>", html_escape(t)));
        }
        for (tok, v) in tokens.iter().zip(values) {
            let (r, g, b) = diverging_rgb(*v, scale);
            let shown = html_escape(tok).replace('\n', "\u{23ce}<br>");
            s.push_str(&format!(
                "<span title=\"{:.4}\" style=\"background:rgb({r},{g},{b});padding:1px 0\">{shown}</span>",
                v
            ));
        }
        s.push_str("</div>");
        Ok(TokenHtml(s))
    }

    /// Row `row` at `layer` of a [`projection_table`].
    pub fn from_table(df: &DataFrame, row: i64, layer: i64) -> Result<Self> {
        let rows = df.column("row")?.i64()?;
        let layers = df.column("layer")?.i64()?;
        let idx = df.column("token_index")?.i64()?;
        let texts = df.column("token_text")?.str()?;
        let vals = df.column("projection")?.f64()?;
        let mut picked: Vec<(i64, String, f64)> = vec![];
        for k in 0..df.height() {
            if rows.get(k) == Some(row) && layers.get(k) == Some(layer) {
                picked.push((
                    idx.get(k).unwrap_or(0),
                    texts.get(k).unwrap_or("").to_string(),
                    vals.get(k).unwrap_or(f64::NAN),
                ));
            }
        }
        ensure!(!picked.is_empty(), "the projection table has no tokens for row {row} at layer {layer}");
        picked.sort_by_key(|x| x.0);
        let (t, v): (Vec<String>, Vec<f64>) = picked.into_iter().map(|(_, t, v)| (t, v)).unzip();
        Self::new(&t, &v, Some(&format!("row {row}, layer {layer}")))
    }

    /// The HTML fragment.
    pub fn html(&self) -> &str {
        &self.0
    }

    /// evcxr's rich display hook: the fragment as `text/html`.
    pub fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT", self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tiny() -> Model {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity/llama");
        Model::from_hf_dir(&dir, &Device::Cpu, DType::F32).unwrap()
    }

    fn rows() -> Vec<GeneratedRow> {
        vec![
            GeneratedRow::new(vec![5, 17, 42, 8], vec![99, 3, 250]),
            GeneratedRow::new(vec![7, 1], vec![11]),
            GeneratedRow::new(vec![12, 13, 14, 15, 16, 17], vec![200, 201, 202, 203]),
        ]
    }

    fn v(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn averages_match_a_hand_computation_from_run_with_cache() {
        let m = tiny();
        let points = [HookPoint::resid_pre(0), HookPoint::resid_post(1), HookPoint::resid_post(2)];
        let rows = rows();
        // Batched (2 rows per forward: padding exercised).
        let r = readout(&m, &rows, &points, 2).unwrap();
        for (i, row) in rows.iter().enumerate() {
            // Each row alone, every position cached; means taken by hand.
            let ids = row.ids();
            let out = m.run_with_cache(&[ids.clone()], &points, Positions::All).unwrap();
            for p in points {
                let acts: Vec<f32> = v(out.activations.row(p, 0).unwrap());
                let d = m.d_model();
                let mean_of = |a: usize, b: usize| -> Vec<f32> {
                    (0..d).map(|j| (a..b).map(|t| acts[t * d + j]).sum::<f32>() / (b - a) as f32).collect()
                };
                let (pl, n) = (row.prompt.len(), ids.len());
                let want_resp = mean_of(pl, n);
                let want_prompt = mean_of(0, pl);
                let want_last: Vec<f32> = acts[(pl - 1) * d..pl * d].to_vec();
                let got = |m: &BTreeMap<HookPoint, Tensor>| v(&m[&p].i(i).unwrap());
                assert!(max_diff(&got(&r.response_mean), &want_resp) < 1e-4, "{p} row {i} response");
                assert!(max_diff(&got(&r.prompt_mean), &want_prompt) < 1e-4, "{p} row {i} prompt");
                assert!(max_diff(&got(&r.prompt_last), &want_last) < 1e-4, "{p} row {i} last");
            }
        }
        assert_eq!(r.response_mean[&points[1]].dims(), &[3, m.d_model()]);
    }

    #[test]
    fn projections_equal_dot_products() {
        let m = tiny();
        let d = m.d_model();
        let rows = rows();
        let dirs: BTreeMap<HookPoint, Direction> = [
            (HookPoint::resid_post(0), crate::interp::directions::random(d, 1).unwrap() * 3.0),
            (HookPoint::resid_post(2), crate::interp::directions::random(d, 2).unwrap()),
        ]
        .into();
        let df = projection_table(&m, &rows, &dirs, 3).unwrap();
        let n_resp: usize = rows.iter().map(|r| r.response.len()).sum();
        assert_eq!(df.height(), n_resp * dirs.len());
        let proj = df.column("projection").unwrap().f64().unwrap();
        let (rr, ll, kk) =
            (df.column("row").unwrap().i64().unwrap(), df.column("layer").unwrap().i64().unwrap(), df.column("token_index").unwrap().i64().unwrap());
        let texts = df.column("token_text").unwrap().str().unwrap();
        let tok = m.tok().unwrap();
        for k in 0..df.height() {
            let (i, l, t) = (rr.get(k).unwrap() as usize, ll.get(k).unwrap() as usize, kk.get(k).unwrap() as usize);
            let p = HookPoint::resid_post(l);
            let ids = rows[i].ids();
            let out = m.run_with_cache(&[ids], &[p], Positions::At(vec![rows[i].prompt.len() + t])).unwrap();
            let a = v(out.activations.row(p, 0).unwrap());
            let dir = &dirs[&p];
            let want: f64 = a.iter().zip(&dir.vector).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>() / dir.norm() as f64;
            let got = proj.get(k).unwrap();
            assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "row {i} layer {l} token {t}: {got} vs {want}");
            assert_eq!(texts.get(k).unwrap(), tok.token_str(rows[i].response[t]));
        }
        let h = TokenHtml::from_table(&df, 0, 2).unwrap();
        assert_eq!(h.html().matches("<span").count(), 3);
        assert!(TokenHtml::from_table(&df, 0, 1).unwrap_err().to_string().contains("layer 1"));
    }

    #[test]
    fn html_is_escaped_and_colours_diverge() {
        let toks: Vec<String> = ["<b>", " & ", "x\n", "'q\""].iter().map(|s| s.to_string()).collect();
        let h = TokenHtml::new(&toks, &[2.0, -1.0, 0.0, -2.0], Some("a<t>")).unwrap();
        let s = h.html();
        assert!(s.contains("&lt;b&gt;") && s.contains(" &amp; ") && s.contains("&#39;q&quot;") && s.contains("a&lt;t&gt;"));
        assert!(!s.contains("<b>") && !s.contains("<t>"));
        assert!(s.contains("x\u{23ce}<br>"));
        assert!(s.contains("rgb(214,39,40)") && s.contains("rgb(31,119,180)") && s.contains("rgb(255,255,255)"));
        // Half scale on the negative side: 255 + (31-255)/2 = 143, (119-255)/2 -> 187, 217.5 -> 218.
        assert!(s.contains("rgb(143,187,218)"), "{s}");
        assert_eq!(diverging_rgb(5.0, 0.0), (255, 255, 255));
        assert!(TokenHtml::new(&toks, &[1.0], None).is_err());
        let m = tiny();
        let e = readout(&m, &[GeneratedRow::new(vec![1, 2], vec![])], &[HookPoint::resid_post(0)], 1).unwrap_err();
        assert!(e.to_string().contains("row 0") && e.to_string().contains("empty response"), "{e}");
        let e = readout(&m, &rows(), &[HookPoint::resid_post(9)], 1).unwrap_err();
        assert!(e.to_string().contains("layer 9"), "{e}");
    }
}
