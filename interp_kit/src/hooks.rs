//! Hook points named as TransformerLens names them, the positions they act on, and the
//! per-call hook set that reads (caches), writes (interventions) or differentiates the
//! residual stream.
//!
//! A [`Hooks`] value is passed to one forward call and borrowed by it: a hook cannot outlive
//! the call it was given to, so an intervention never leaks into a later call.
//!
//! ```
//! use interp_kit::hooks::{HookPoint, Site};
//! let hp = HookPoint::resid_post(3);
//! assert_eq!(hp.to_string(), "blocks.3.hook_resid_post");
//! assert_eq!("blocks.3.hook_resid_post".parse::<HookPoint>().unwrap(), hp);
//! assert_eq!(HookPoint::ln_final().to_string(), "ln_final.hook_normalized");
//! ```
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Where in a block a hook sits (TransformerLens names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// Input of block `l` (`blocks.l.hook_resid_pre`).
    ResidPre,
    /// After the attention residual add, before the MLP (`blocks.l.hook_resid_mid`).
    ///
    /// **Absent in parallel-residual blocks** (GPT-NeoX / Pythia with `use_parallel_residual`):
    /// there attention and MLP both read `hook_resid_pre` and are added together, so no residual
    /// state exists between them. Reading, writing or differentiating it on such a model is an
    /// error that says so (never a substitute tensor); `ModelInfo::resid_mid` tells in advance.
    ResidMid,
    /// Output of block `l` (`blocks.l.hook_resid_post`).
    ResidPost,
    /// Output of the attention sublayer, before it is added to the residual.
    AttnOut,
    /// Output of the MLP sublayer, before it is added to the residual.
    MlpOut,
    /// Output of the final norm (`ln_final.hook_normalized`); has no layer.
    LnFinal,
    /// Attention probabilities of block `l` (`blocks.l.attn.hook_pattern`), read-only: per row
    /// `[n_heads, n_queries, n_keys]` (queries: the selected positions of the call; keys: every
    /// non-padding position the call attends over, cached ones included).
    AttnPattern,
    /// Attention scores of block `l` before the softmax (`blocks.l.attn.hook_attn_scores`),
    /// read-only, scaled (and soft-capped where the model does) with the mask added: masked
    /// entries hold a large negative number (`f32::MIN / 2`) where TransformerLens has `-inf`.
    AttnScores,
}

impl Site {
    pub const ALL: [Site; 6] = [
        Site::ResidPre,
        Site::ResidMid,
        Site::ResidPost,
        Site::AttnOut,
        Site::MlpOut,
        Site::LnFinal,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Site::ResidPre => "hook_resid_pre",
            Site::ResidMid => "hook_resid_mid",
            Site::ResidPost => "hook_resid_post",
            Site::AttnOut => "hook_attn_out",
            Site::MlpOut => "hook_mlp_out",
            Site::LnFinal => "hook_normalized",
            Site::AttnPattern => "attn.hook_pattern",
            Site::AttnScores => "attn.hook_attn_scores",
        }
    }
    /// The attention sites ([`Site::AttnPattern`], [`Site::AttnScores`]): `[head, q, k]` per row,
    /// read-only (cache them; writing or differentiating them is an error).
    pub const ATTENTION: [Site; 2] = [Site::AttnPattern, Site::AttnScores];
    pub fn is_attention(self) -> bool {
        matches!(self, Site::AttnPattern | Site::AttnScores)
    }
}

/// A named point in the forward pass, e.g. `blocks.12.hook_resid_post`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint {
    /// Block index; ignored (0) for [`Site::LnFinal`].
    pub layer: usize,
    pub site: Site,
}

impl HookPoint {
    pub fn new(layer: usize, site: Site) -> Self {
        let layer = if site == Site::LnFinal { 0 } else { layer };
        Self { layer, site }
    }
    pub fn resid_pre(layer: usize) -> Self {
        Self::new(layer, Site::ResidPre)
    }
    pub fn resid_mid(layer: usize) -> Self {
        Self::new(layer, Site::ResidMid)
    }
    pub fn resid_post(layer: usize) -> Self {
        Self::new(layer, Site::ResidPost)
    }
    pub fn attn_out(layer: usize) -> Self {
        Self::new(layer, Site::AttnOut)
    }
    pub fn mlp_out(layer: usize) -> Self {
        Self::new(layer, Site::MlpOut)
    }
    pub fn ln_final() -> Self {
        Self::new(0, Site::LnFinal)
    }
    /// `blocks.{layer}.attn.hook_pattern` (read-only, `[head, q, k]` per row).
    pub fn attn_pattern(layer: usize) -> Self {
        Self::new(layer, Site::AttnPattern)
    }
    /// `blocks.{layer}.attn.hook_attn_scores` (read-only, `[head, q, k]` per row).
    pub fn attn_scores(layer: usize) -> Self {
        Self::new(layer, Site::AttnScores)
    }
    /// Checks the layer against a model depth; the error names the valid range.
    pub fn check(&self, n_layers: usize) -> Result<()> {
        if self.site != Site::LnFinal && self.layer >= n_layers {
            bail!(
                "hook point {self}: layer {} is out of range, this model has {n_layers} layers (valid 0..={})",
                self.layer,
                n_layers.saturating_sub(1)
            );
        }
        Ok(())
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.site {
            Site::LnFinal => write!(f, "ln_final.hook_normalized"),
            s => write!(f, "blocks.{}.{}", self.layer, s.name()),
        }
    }
}

/// Serialized as its TransformerLens name (`"blocks.12.hook_resid_post"`).
impl serde::Serialize for HookPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HookPoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for HookPoint {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "ln_final.hook_normalized" {
            return Ok(Self::ln_final());
        }
        let err = || {
            anyhow::anyhow!(
                "cannot parse hook point {s:?}: expected `blocks.<layer>.<site>` with site one of \
                 hook_resid_pre, hook_resid_mid, hook_resid_post, hook_attn_out, hook_mlp_out, \
                 attn.hook_pattern, attn.hook_attn_scores, or `ln_final.hook_normalized`"
            )
        };
        let rest = s.strip_prefix("blocks.").ok_or_else(err)?;
        let (layer, site) = rest.split_once('.').ok_or_else(err)?;
        let layer: usize = layer.parse().map_err(|_| err())?;
        let site = Site::ALL[..5]
            .iter()
            .chain(Site::ATTENTION.iter())
            .copied()
            .find(|x| x.name() == site)
            .ok_or_else(err)?;
        Ok(Self::new(layer, site))
    }
}

/// Token positions, counted in each prompt's own tokens (0 = its first real token, padding
/// excluded; generated tokens continue the count).
#[derive(Clone, Debug, PartialEq)]
pub enum Positions {
    /// Every token of the call.
    All,
    /// The last token of the call (in decode, the new token).
    Last,
    /// These token indices, in every row.
    At(Vec<usize>),
    /// Tokens `start..end` (end exclusive; `usize::MAX` for "to the end").
    Span(Range<usize>),
    /// One selection per batch row.
    PerRow(Vec<Positions>),
}

impl Positions {
    /// Whether token index `idx` of row `row` is selected, given the indices present in the call.
    fn selects(&self, row: usize, idx: usize, call_last: usize) -> Result<bool> {
        Ok(match self {
            Positions::All => true,
            Positions::Last => idx == call_last,
            Positions::At(v) => v.contains(&idx),
            Positions::Span(r) => r.contains(&idx),
            Positions::PerRow(rows) => {
                let p = rows.get(row).with_context(|| {
                    format!("Positions::PerRow has {} rows, the batch has more (row {row})", rows.len())
                })?;
                p.selects(row, idx, call_last)?
            }
        })
    }
}

/// Which forward calls an intervention applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The call that fills an empty KV cache (or a plain forward).
    Prefill,
    /// Calls that extend a non-empty KV cache (generation steps).
    Decode,
    /// Both.
    Both,
}

impl Phase {
    pub fn includes(self, now: Phase) -> bool {
        self == Phase::Both || self == now
    }
}

/// What a hook sees besides the tensor: where it is, which phase, and which token index each
/// column of each row holds.
pub struct HookCtx<'c> {
    pub point: HookPoint,
    pub phase: Phase,
    /// `token_index[row][col]`: the prompt-relative token index of that column, `None` for padding.
    pub token_index: &'c [Vec<Option<usize>>],
    pub device: &'c Device,
    pub dtype: DType,
}

impl HookCtx<'_> {
    /// A `[batch, seq, 1]` mask with 1.0 at the selected positions.
    pub fn mask(&self, pos: &Positions) -> Result<Tensor> {
        let (b, t) = (self.token_index.len(), self.token_index.first().map_or(0, |r| r.len()));
        let mut m = vec![0f32; b * t];
        for (r, row) in self.token_index.iter().enumerate() {
            let last = row.iter().flatten().copied().max().unwrap_or(0);
            for (c, idx) in row.iter().enumerate() {
                if let Some(i) = idx {
                    if pos.selects(r, *i, last)? {
                        m[r * t + c] = 1.0;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(m, (b, t, 1), self.device)?.to_dtype(self.dtype)?)
    }

    /// For each row, the `(column, token index)` pairs selected by `pos`.
    pub fn select(&self, pos: &Positions) -> Result<Vec<Vec<(usize, usize)>>> {
        self.token_index
            .iter()
            .enumerate()
            .map(|(r, row)| {
                let last = row.iter().flatten().copied().max().unwrap_or(0);
                let mut out = vec![];
                for (c, idx) in row.iter().enumerate() {
                    if let Some(i) = idx {
                        if pos.selects(r, *i, last)? {
                            out.push((c, *i));
                        }
                    }
                }
                Ok(out)
            })
            .collect()
    }
}

/// A write hook: gets the activation `[batch, seq, d]` and returns its replacement.
pub type HookFn<'a> = Box<dyn Fn(&Tensor, &HookCtx) -> Result<Tensor> + 'a>;

/// The hooks of one forward call: what to cache, what to change, where to take gradients,
/// and which LoRA adapters to apply.
#[derive(Default)]
pub struct Hooks<'a> {
    pub(crate) reads: Vec<(HookPoint, Positions)>,
    pub(crate) writes: Vec<(HookPoint, Phase, HookFn<'a>)>,
    pub(crate) lora: Vec<LoraUse<'a>>,
}

/// A weight-space patch that a call's linear layers add to their outputs: LoRA
/// ([`crate::lora::LoraAdapter`]) is the kit's. It is a trait at this level so that a hook set can
/// carry an adapter while the runtime (hooks, model, forward) knows nothing of LoRA or training.
pub trait Adapter: Sync {
    /// Whether the adapter patches the linear layer `module` (`model.layers.{l}.self_attn.q_proj`, ...).
    fn targets(&self, module: &str) -> bool;
    /// `Δy` for the input `x` (`[.., in]`, f32 or f64) of a module it [`targets`](Adapter::targets).
    fn delta(&self, module: &str, x: &Tensor) -> Result<Tensor>;
    /// Dropout probability on the adapter's input in training mode (0 for none).
    fn dropout(&self) -> f64 {
        0.0
    }
    /// `(module, (in, out))` for every module the adapter targets, checked against the model.
    fn module_dims(&self) -> Result<Vec<(String, (usize, usize))>>;
}

/// An adapter applied during one call; `dropout_seed` is `Some` in training mode.
#[derive(Clone, Copy)]
pub(crate) struct LoraUse<'a> {
    pub(crate) adapter: &'a dyn Adapter,
    pub(crate) dropout_seed: Option<u64>,
}

impl<'a> Hooks<'a> {
    pub fn new() -> Self {
        Self::default()
    }
    /// Cache `point` at `positions` (only what is asked for is kept).
    pub fn cache(mut self, point: HookPoint, positions: Positions) -> Self {
        self.reads.push((point, positions));
        self
    }
    /// Cache several points at the same positions.
    pub fn cache_many(mut self, points: impl IntoIterator<Item = HookPoint>, positions: Positions) -> Self {
        for p in points {
            self.reads.push((p, positions.clone()));
        }
        self
    }
    /// Replace the activation at `point` during `phase` by `f(activation, ctx)`.
    /// Several writes at one point compose in the order they were added.
    pub fn write(
        mut self,
        point: HookPoint,
        phase: Phase,
        f: impl Fn(&Tensor, &HookCtx) -> Result<Tensor> + 'a,
    ) -> Self {
        self.writes.push((point, phase, Box::new(f)));
        self
    }
    /// Apply a LoRA adapter during this call (inference mode: no dropout): every targeted
    /// linear layer computes `base(x) + scaling * B (A x)`. The base weights are not touched
    /// and the adapter acts only in the call this hook set is passed to (forward, generate,
    /// grad, prefill, extend, decode). Several adapters add their deltas. Gradients reach the
    /// adapter's `A`/`B` (candle `Var`s) on the gradient path.
    pub fn lora(mut self, adapter: &'a dyn Adapter) -> Self {
        self.lora.push(LoraUse { adapter, dropout_seed: None });
        self
    }
    /// Like [`Hooks::lora`] in training mode: the adapter's dropout (if > 0) is applied to the
    /// input of its `A`, with masks drawn from `seed` (the same seed, inputs and call give the
    /// same masks; each targeted module draws its own mask).
    pub fn lora_train(mut self, adapter: &'a dyn Adapter, seed: u64) -> Self {
        self.lora.push(LoraUse { adapter, dropout_seed: Some(seed) });
        self
    }
    /// Add another hook set's hooks (and adapters) to this one.
    pub fn extend(mut self, other: Hooks<'a>) -> Self {
        self.reads.extend(other.reads);
        self.writes.extend(other.writes);
        self.lora.extend(other.lora);
        self
    }
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.writes.is_empty() && self.lora.is_empty()
    }
    pub(crate) fn points(&self) -> impl Iterator<Item = HookPoint> + '_ {
        self.reads.iter().map(|r| r.0).chain(self.writes.iter().map(|w| w.0))
    }
}

/// Activations read during a call: for each hook point, one `[n_selected, d]` tensor per row,
/// in token order, padding removed.
#[derive(Default, Debug, Clone)]
pub struct ActivationCache {
    pub(crate) map: BTreeMap<HookPoint, Vec<Tensor>>,
    pub(crate) indices: BTreeMap<HookPoint, Vec<Vec<usize>>>,
}

impl ActivationCache {
    /// Per-row activations at `point` (`[n_selected, d]` each).
    pub fn get(&self, point: HookPoint) -> Result<&[Tensor]> {
        self.map
            .get(&point)
            .map(|v| v.as_slice())
            .with_context(|| format!("{point} was not cached (cached: {:?})", self.points()))
    }
    /// Row `row` at `point`, `[n_selected, d]`.
    pub fn row(&self, point: HookPoint, row: usize) -> Result<&Tensor> {
        let rows = self.get(point)?;
        rows.get(row).with_context(|| format!("{point}: row {row} out of range ({} rows)", rows.len()))
    }
    /// The token index of each cached vector, per row.
    pub fn token_indices(&self, point: HookPoint) -> Result<&[Vec<usize>]> {
        self.indices.get(&point).map(|v| v.as_slice()).with_context(|| format!("{point} was not cached"))
    }
    /// All rows stacked to `[batch, n, d]`; errors if rows selected different counts.
    pub fn stack(&self, point: HookPoint) -> Result<Tensor> {
        let rows = self.get(point)?;
        Tensor::stack(rows, 0).with_context(|| format!("{point}: rows have different numbers of positions"))
    }
    pub fn points(&self) -> Vec<String> {
        self.map.keys().map(|k| k.to_string()).collect()
    }
    /// Append another cache (e.g. from the next decode step) row-wise along the position axis.
    pub fn append(&mut self, other: ActivationCache) -> Result<()> {
        for (k, rows) in other.map {
            let idx = other.indices.get(&k).cloned().unwrap_or_default();
            match self.map.get_mut(&k) {
                None => {
                    self.map.insert(k, rows);
                    self.indices.insert(k, idx);
                }
                Some(mine) => {
                    ensure!(
                        !k.site.is_attention(),
                        "{k}: attention patterns of several calls cannot be appended (their key counts differ); \
                         read them per call"
                    );
                    let mine_idx = self.indices.get_mut(&k).expect("indices kept with map");
                    for (r, t) in rows.into_iter().enumerate() {
                        mine[r] = Tensor::cat(&[&mine[r], &t], 0)?;
                        mine_idx[r].extend(idx.get(r).cloned().unwrap_or_default());
                    }
                }
            }
        }
        Ok(())
    }
    pub(crate) fn insert(&mut self, point: HookPoint, rows: Vec<Tensor>, idx: Vec<Vec<usize>>) {
        self.map.insert(point, rows);
        self.indices.insert(point, idx);
    }
}
