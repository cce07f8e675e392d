//! Directions in activation space: a value with `+ - *` and metadata; extraction methods; a
//! per-layer set ([`ControlVector`]); safetensors and llama.cpp control-vector GGUF IO.
//!
//! A [`Direction`] is one vector at one hook point, stored on the CPU in f32 so it can be combined,
//! saved and compared without caring where the model runs; [`Direction::to_tensor`] moves it to the
//! model's device and dtype when a hook needs it.
//!
//! # Extraction
//! From activations at one hook point, given as `[N, D]` tensors (any float dtype and device;
//! rows are examples) — "positive" is the side the direction points to (e.g. refusal):
//! * [`mean_diff`]: `mean(pos) - mean(neg)` (not normalised);
//! * [`pca_diff`]: first principal component of the paired differences `pos_i - neg_i`, centred
//!   as scikit-learn's `PCA` (and so repeng) centres them — the axis along which the differences
//!   *vary* most, not their mean; unit norm, sign chosen so the mean difference projects positively;
//! * [`pca_center`]: repeng's `pca_center`: each pair centred on its midpoint, then the first PC
//!   of the `2N` centred rows (which equals the uncentred first PC of the differences); unit norm,
//!   same sign rule;
//! * [`probe`]: L2-regularised logistic regression (Newton–CG, deterministic), the unit weight
//!   vector plus train accuracy;
//! * [`random`] / [`random_n`]: seeded Gaussian unit vectors (controls).
//!
//! From a model: [`collect_activations`] (prompts × hook points, at a named position or averaged
//! over a span, batched) and [`contrastive_prefix`] (plan 004 §7.1).
//!
//! # Control-vector GGUF and the layer convention
//! [`ControlVector::export_gguf`] writes the file llama.cpp's `--control-vector` and repeng's
//! `ControlVector.import_gguf` read: `general.architecture = "controlvector"`,
//! `controlvector.model_hint`, `controlvector.layer_count`, and one F32 tensor `direction.{N}` per
//! layer. **`direction.{N}` is added to the output of (0-based) block `N`, i.e. our
//! `blocks.{N}.hook_resid_post`**, at every token:
//! * llama.cpp `common_control_vector_load_one` stores `direction.N` at buffer offset
//!   `n_embd * (N - 1)` and rejects `N = 0`; `llama_adapter_cvec::apply` fills the tensor of layer
//!   `il` from offset `n_embd * (il - 1)` (so tensor `il` = `direction.il`), and each model graph
//!   (e.g. `src/models/qwen2.cpp`) calls `build_cvec(cur, il)` right after the FFN residual add of
//!   block `il`, which is that block's output;
//! * repeng reads `hidden_states[N + 1]` (the output of `model.layers[N]`) for layer `N` and its
//!   `ControlModel` adds `direction.N` to the output of `model.layers[N]`.
//!
//! So a vector for `blocks.0.hook_resid_post` cannot be expressed in the file (llama.cpp refuses
//! `direction.0`), and export refuses directions at other sites (`blocks.{N+1}.hook_resid_pre` is
//! the same tensor as `blocks.{N}.hook_resid_post`: re-place it with [`Direction::at`] first).
//!
//! ```no_run
//! use interp_kit::prelude::*;
//! use interp_kit::interp::directions::{contrastive_prefix, Contrastive, PromptFormat, PromptIds};
//! let model = Model::embedded(&Device::Cpu)?;
//! let prompts = PromptIds::encode_all(&model, &["How do I pick a lock?".to_string()], &PromptFormat::chat())?;
//! let points = [HookPoint::resid_post(12)];
//! let res = contrastive_prefix(&model, &prompts, &points, &Contrastive::new(" I can't help with that.", " Sure, here's how:"))?;
//! println!("{} mean |d| = {:.2}", res[0].direction.describe(), res[0].stats.mean_diff_norm);
//! let cv = ControlVector::from_directions("qwen2", res.into_iter().map(|r| r.direction))?;
//! cv.export_gguf("refusal.gguf")?;
//! # anyhow::Ok(())
//! ```
use crate::text::chat::{Chat, Position, RenderedChat};
use crate::hooks::{ActivationCache, HookPoint, Hooks, Positions, Site};
use crate::model::{LogitsAt, Model};
use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::ops::{Add, Mul, Neg, Range, Sub};
use std::path::Path;
use std::str::FromStr;

/// Where a direction came from. Every field is free text except `hook`, so a method that the kit
/// does not know can still record itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DirectionMeta {
    /// Model id or file name the activations came from.
    pub model: String,
    /// Hook point, printed the TransformerLens way (`blocks.12.hook_resid_post`); `None` for a
    /// direction not tied to one (a random unit vector before it is placed, an arithmetic result
    /// of directions at different points).
    pub hook: Option<HookPoint>,
    /// `mean_diff`, `contrastive_prefix`, `pca_diff`, `pca_center`, `probe`, `random`, `gradient`, ...
    pub method: String,
    /// The position the activations were read at (`prompt_last`, `pre_assistant`, `mean(user)`...).
    pub position: String,
    /// Hash of the prompt set (see `directions::prompt_set_hash`), empty if unknown.
    pub prompt_hash: String,
    /// Anything else worth keeping (seed, number of prompts, scale convention...).
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, String>,
}

/// A direction in the residual stream (or at any hook point) of width `d_model`.
#[derive(Debug, Clone, PartialEq)]
pub struct Direction {
    pub vector: Vec<f32>,
    pub meta: DirectionMeta,
}

impl Direction {
    /// A direction from raw values with empty metadata.
    pub fn new(vector: Vec<f32>) -> Self {
        Direction { vector, meta: DirectionMeta::default() }
    }

    /// From a 1-D tensor (any device and float dtype); an error if an entry is NaN or infinite.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        if t.rank() != 1 {
            bail!("a direction must be a 1-D tensor, got shape {:?}", t.dims());
        }
        let d = Self::new(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?);
        d.check_finite()?;
        Ok(d)
    }

    /// An error naming the first NaN or infinite entry (index and value). A direction with one
    /// would turn every steered activation into NaN, far from where it came in.
    pub fn check_finite(&self) -> Result<()> {
        if let Some((i, x)) = first_non_finite(&self.vector) {
            bail!("direction {} (width {}) has a non-finite entry: [{i}] = {x}", self.describe(), self.dim());
        }
        Ok(())
    }

    pub fn with_meta(mut self, meta: DirectionMeta) -> Self {
        self.meta = meta;
        self
    }

    pub fn at(mut self, hook: HookPoint) -> Self {
        self.meta.hook = Some(hook);
        self
    }

    pub fn dim(&self) -> usize {
        self.vector.len()
    }

    pub fn norm(&self) -> f32 {
        self.vector.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt() as f32
    }

    /// The unit vector; an error for the zero vector.
    pub fn normalized(&self) -> Result<Self> {
        let n = self.norm();
        if !(n > 0.0) || !n.is_finite() {
            bail!("cannot normalise a direction of norm {n} ({})", self.describe());
        }
        Ok(Direction { vector: self.vector.iter().map(|x| x / n).collect(), meta: self.meta.clone() })
    }

    pub fn dot(&self, other: &Direction) -> Result<f32> {
        self.check_same_dim(other)?;
        Ok(self.vector.iter().zip(&other.vector).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() as f32)
    }

    /// Cosine similarity; an error if either is zero.
    pub fn cosine(&self, other: &Direction) -> Result<f32> {
        let (a, b) = (self.norm(), other.norm());
        if !(a > 0.0 && b > 0.0) {
            bail!("cosine with a zero direction ({} vs {})", self.describe(), other.describe());
        }
        Ok(self.dot(other)? / (a * b))
    }

    /// A 1-D tensor on `device` in `dtype`, ready for a hook.
    pub fn to_tensor(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        Ok(Tensor::new(self.vector.as_slice(), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
    }

    /// Checks the width against a model's `d_model`, naming both.
    pub fn check_dim(&self, d_model: usize) -> Result<()> {
        if self.dim() != d_model {
            bail!("direction {} has width {}, the model's d_model is {}", self.describe(), self.dim(), d_model);
        }
        Ok(())
    }

    fn check_same_dim(&self, other: &Direction) -> Result<()> {
        if self.dim() != other.dim() {
            bail!("directions of different widths: {} ({}) vs {} ({})", self.describe(), self.dim(), other.describe(), other.dim());
        }
        Ok(())
    }

    /// One line: method, hook, position.
    pub fn describe(&self) -> String {
        let hook = self.meta.hook.map(|h| h.to_string()).unwrap_or_else(|| "-".into());
        let method = if self.meta.method.is_empty() { "direction" } else { &self.meta.method };
        format!("{method}@{hook}[{}]", self.meta.position)
    }

    fn zip_with(&self, other: &Direction, f: impl Fn(f32, f32) -> f32) -> Direction {
        assert_eq!(
            self.dim(),
            other.dim(),
            "directions of different widths: {} ({}) vs {} ({})",
            self.describe(),
            self.dim(),
            other.describe(),
            other.dim()
        );
        let mut meta = self.meta.clone();
        if self.meta.hook != other.meta.hook {
            meta.hook = None;
        }
        Direction { vector: self.vector.iter().zip(&other.vector).map(|(a, b)| f(*a, *b)).collect(), meta }
    }
}

/// `a + b`. Panics on a width mismatch (like `ndarray`); use [`Direction::check_dim`] first where
/// the widths come from user input.
impl Add for &Direction {
    type Output = Direction;
    fn add(self, rhs: &Direction) -> Direction {
        self.zip_with(rhs, |a, b| a + b)
    }
}
impl Add for Direction {
    type Output = Direction;
    fn add(self, rhs: Direction) -> Direction {
        &self + &rhs
    }
}
impl Sub for &Direction {
    type Output = Direction;
    fn sub(self, rhs: &Direction) -> Direction {
        self.zip_with(rhs, |a, b| a - b)
    }
}
impl Sub for Direction {
    type Output = Direction;
    fn sub(self, rhs: Direction) -> Direction {
        &self - &rhs
    }
}
impl Mul<f32> for &Direction {
    type Output = Direction;
    fn mul(self, k: f32) -> Direction {
        Direction { vector: self.vector.iter().map(|x| x * k).collect(), meta: self.meta.clone() }
    }
}
impl Mul<f32> for Direction {
    type Output = Direction;
    fn mul(self, k: f32) -> Direction {
        &self * k
    }
}
impl Mul<&Direction> for f32 {
    type Output = Direction;
    fn mul(self, d: &Direction) -> Direction {
        d * self
    }
}
impl Mul<Direction> for f32 {
    type Output = Direction;
    fn mul(self, d: Direction) -> Direction {
        &d * self
    }
}
impl Neg for &Direction {
    type Output = Direction;
    fn neg(self) -> Direction {
        self * -1.0
    }
}
impl Neg for Direction {
    type Output = Direction;
    fn neg(self) -> Direction {
        &self * -1.0
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata helpers, hashing, IO of one direction
// ---------------------------------------------------------------------------------------------

/// SHA-256 (hex) of a prompt set, for [`DirectionMeta::prompt_hash`]. Each prompt contributes its
/// UTF-8 byte length as a little-endian `u64` followed by its bytes, so `["a\nb"]` and
/// `["a", "b"]` hash differently; the order of the prompts matters.
///
/// Python: `h = hashlib.sha256(); [h.update(len(p.encode()).to_bytes(8, "little") + p.encode())
/// for p in prompts]; h.hexdigest()`.
pub fn prompt_set_hash<S: AsRef<str>>(prompts: &[S]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in prompts {
        let b = p.as_ref().as_bytes();
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Metadata key under which [`Direction::save`] stores the [`DirectionMeta`] (as JSON) in the
/// safetensors header.
pub const SAFETENSORS_META_KEY: &str = "interp_kit.direction";
/// Metadata key of a saved [`ControlVector`].
pub const SAFETENSORS_CV_KEY: &str = "interp_kit.control_vector";

/// The first NaN or infinite value and its index.
pub(crate) fn first_non_finite(v: &[f32]) -> Option<(usize, f32)> {
    v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i]))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn read_f32_view(view: &safetensors::tensor::TensorView, name: &str, path: &Path) -> Result<Vec<f32>> {
    ensure!(
        view.dtype() == safetensors::Dtype::F32 && view.shape().len() == 1,
        "{}: tensor {name} must be a 1-D F32 vector, found {:?} {:?}",
        path.display(),
        view.dtype(),
        view.shape()
    );
    let v: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if let Some((i, x)) = first_non_finite(&v) {
        bail!("{}: tensor {name} has a non-finite entry: [{i}] = {x}", path.display());
    }
    Ok(v)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

impl Direction {
    /// Adds (or replaces) an `extra` metadata entry.
    pub fn with_extra(mut self, key: &str, value: impl ToString) -> Self {
        self.meta.extra.insert(key.to_string(), value.to_string());
        self
    }

    /// Saves as safetensors: one F32 tensor `direction` `[D]` and the metadata as JSON under the
    /// header key [`SAFETENSORS_META_KEY`]. The file is written atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = f32_bytes(&self.vector);
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![self.dim()], &bytes)?;
        let meta = HashMap::from([(SAFETENSORS_META_KEY.to_string(), serde_json::to_string(&self.meta)?)]);
        let buf = safetensors::tensor::serialize([("direction", view)], Some(meta))
            .with_context(|| format!("serialising direction for {}", path.display()))?;
        crate::base::io::write_atomic(path, &buf)
    }

    /// Loads a file written by [`Direction::save`]. A safetensors file with a single 1-D F32
    /// tensor and no kit metadata also loads (empty metadata).
    pub fn load(path: impl AsRef<Path>) -> Result<Direction> {
        let path = path.as_ref();
        let buf = read_file(path)?;
        let st = safetensors::SafeTensors::deserialize(&buf).with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&buf)?;
        let meta = match header.metadata().as_ref().and_then(|m| m.get(SAFETENSORS_META_KEY)) {
            Some(js) => serde_json::from_str(js).with_context(|| format!("{}: bad {SAFETENSORS_META_KEY} metadata", path.display()))?,
            None => DirectionMeta::default(),
        };
        let view = match st.tensor("direction") {
            Ok(v) => v,
            Err(_) => {
                let names = st.names();
                ensure!(
                    names.len() == 1,
                    "{}: no tensor named `direction` and {} tensors ({names:?}); use ControlVector::load for several",
                    path.display(),
                    names.len()
                );
                st.tensor(names[0])?
            }
        };
        Ok(Direction { vector: read_f32_view(&view, "direction", path)?, meta })
    }
}

// ---------------------------------------------------------------------------------------------
// Extraction from activation matrices
// ---------------------------------------------------------------------------------------------

/// A row-major f64 matrix read from a `[N, D]` tensor.
struct Mat {
    n: usize,
    d: usize,
    v: Vec<f64>,
}

impl Mat {
    fn from_tensor(t: &Tensor, what: &str) -> Result<Mat> {
        let (n, d) = t.dims2().map_err(|_| anyhow!("{what}: expected a [N, D] tensor, got shape {:?}", t.dims()))?;
        ensure!(n > 0 && d > 0, "{what}: empty activation matrix {:?}", t.dims());
        let v: Vec<f64> = t.to_dtype(DType::F64)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!("{what}: row {} has a non-finite value ({})", i / d, v[i]);
        }
        Ok(Mat { n, d, v })
    }
    fn row(&self, i: usize) -> &[f64] {
        &self.v[i * self.d..(i + 1) * self.d]
    }
    fn col_mean(&self) -> Vec<f64> {
        let mut m = vec![0.0; self.d];
        for i in 0..self.n {
            for (a, x) in m.iter_mut().zip(self.row(i)) {
                *a += x;
            }
        }
        m.iter_mut().for_each(|a| *a /= self.n as f64);
        m
    }
}

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm64(a: &[f64]) -> f64 {
    dot64(a, a).sqrt()
}

fn to_direction(v: &[f64], method: &str) -> Direction {
    Direction::new(v.iter().map(|x| *x as f32).collect()).with_meta(DirectionMeta { method: method.into(), ..Default::default() })
}

fn check_same_width(pos: &Mat, neg: &Mat) -> Result<()> {
    ensure!(pos.d == neg.d, "positive activations have width {}, negative ones {}", pos.d, neg.d);
    Ok(())
}

fn check_paired(pos: &Mat, neg: &Mat) -> Result<()> {
    check_same_width(pos, neg)?;
    ensure!(pos.n == neg.n, "paired methods need as many positive as negative rows ({} vs {})", pos.n, neg.n);
    Ok(())
}

/// `mean(pos) - mean(neg)` of `[N, D]` and `[M, D]` activations (not normalised). Metadata:
/// method `mean_diff`, extra `n_pos`, `n_neg`.
pub fn mean_diff(pos: &Tensor, neg: &Tensor) -> Result<Direction> {
    let (p, n) = (Mat::from_tensor(pos, "mean_diff (positive)")?, Mat::from_tensor(neg, "mean_diff (negative)")?);
    check_same_width(&p, &n)?;
    let v: Vec<f64> = p.col_mean().iter().zip(n.col_mean()).map(|(a, b)| a - b).collect();
    Ok(to_direction(&v, "mean_diff").with_extra("n_pos", p.n).with_extra("n_neg", n.n))
}

/// First principal component of the rows of `x` (centred by column mean if `center`), via the
/// symmetric eigendecomposition of the smaller of `X Xᵀ` and `Xᵀ X` (nalgebra). Returns the unit
/// component and the share of the total variance it explains.
fn first_pc(x: &Mat, center: bool) -> Result<(Vec<f64>, f64)> {
    let (n, d) = (x.n, x.d);
    let mut c = x.v.clone();
    if center {
        let m = x.col_mean();
        for i in 0..n {
            for j in 0..d {
                c[i * d + j] -= m[j];
            }
        }
    }
    let xm = nalgebra::DMatrix::from_row_slice(n, d, &c);
    let (gram, small_is_rows) = if n <= d { (&xm * xm.transpose(), true) } else { (xm.transpose() * &xm, false) };
    let trace = gram.trace();
    ensure!(trace > 0.0, "PCA: the rows are all equal (zero variance), there is no principal component");
    let eig = nalgebra::SymmetricEigen::new(gram);
    let (k, lambda) = eig
        .eigenvalues
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bk, bv), (k, &v)| if v > bv { (k, v) } else { (bk, bv) });
    let e = eig.eigenvectors.column(k);
    let mut u: Vec<f64> = if small_is_rows {
        // u = Xᵀ a / |Xᵀ a|
        let a = nalgebra::DVector::from_iterator(n, e.iter().copied());
        (xm.transpose() * a).iter().copied().collect()
    } else {
        e.iter().copied().collect()
    };
    let nu = norm64(&u);
    ensure!(nu > 0.0, "PCA: degenerate first component");
    u.iter_mut().for_each(|x| *x /= nu);
    Ok((u, lambda / trace))
}

/// Orients `u` so that the mean of `diffs` projects positively; when that projection is zero,
/// so that most rows do (repeng's vote).
fn orient(u: &mut [f64], diffs: &Mat) {
    let m = diffs.col_mean();
    let proj = dot64(u, &m);
    let flip = if proj.abs() > 1e-12 * norm64(&m).max(f64::MIN_POSITIVE) {
        proj < 0.0
    } else {
        let pos = (0..diffs.n).filter(|&i| dot64(u, diffs.row(i)) > 0.0).count();
        2 * pos < diffs.n
    };
    if flip {
        u.iter_mut().for_each(|x| *x = -*x);
    }
}

fn paired_diffs(p: &Mat, n: &Mat) -> Mat {
    Mat { n: p.n, d: p.d, v: p.v.iter().zip(&n.v).map(|(a, b)| a - b).collect() }
}

/// repeng's `pca_diff`: the first principal component of the paired differences `pos_i - neg_i`
/// (centred, as scikit-learn's `PCA` centres), unit norm, oriented so that the mean difference
/// projects positively. Needs at least 2 pairs. Metadata: method `pca_diff`, extra `n_pairs`,
/// `explained_variance_ratio`.
pub fn pca_diff(pos: &Tensor, neg: &Tensor) -> Result<Direction> {
    let (p, n) = (Mat::from_tensor(pos, "pca_diff (positive)")?, Mat::from_tensor(neg, "pca_diff (negative)")?);
    check_paired(&p, &n)?;
    ensure!(p.n >= 2, "pca_diff needs at least 2 pairs, got {}", p.n);
    let diffs = paired_diffs(&p, &n);
    let (mut u, evr) = first_pc(&diffs, true)?;
    orient(&mut u, &diffs);
    Ok(to_direction(&u, "pca_diff").with_extra("n_pairs", p.n).with_extra("explained_variance_ratio", format!("{evr:.6}")))
}

/// repeng's `pca_center`: every pair is centred on its midpoint (`pos_i - c_i`, `neg_i - c_i`
/// with `c_i = (pos_i + neg_i) / 2`), then the first principal component of these `2N` rows; unit
/// norm, oriented so that the mean difference projects positively. (The centred rows are
/// `±(pos_i - neg_i) / 2`, so this is the *uncentred* first PC of the differences: unlike
/// [`pca_diff`] it keeps the mean difference.) Metadata: method `pca_center`, extra `n_pairs`,
/// `explained_variance_ratio`.
pub fn pca_center(pos: &Tensor, neg: &Tensor) -> Result<Direction> {
    let (p, n) = (Mat::from_tensor(pos, "pca_center (positive)")?, Mat::from_tensor(neg, "pca_center (negative)")?);
    check_paired(&p, &n)?;
    let diffs = paired_diffs(&p, &n);
    let mut rows = Vec::with_capacity(2 * p.n * p.d);
    for i in 0..p.n {
        rows.extend(diffs.row(i).iter().map(|x| x / 2.0));
        rows.extend(diffs.row(i).iter().map(|x| -x / 2.0));
    }
    let x = Mat { n: 2 * p.n, d: p.d, v: rows };
    let (mut u, evr) = first_pc(&x, true)?;
    orient(&mut u, &diffs);
    Ok(to_direction(&u, "pca_center").with_extra("n_pairs", p.n).with_extra("explained_variance_ratio", format!("{evr:.6}")))
}

/// Settings of the logistic-regression [`probe`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    /// L2 penalty `λ` in the loss `mean_i log(1 + exp(-y_i (w·x_i + b))) + λ/2 |w|²` (the bias is
    /// not penalised). scikit-learn's `C` corresponds to `λ = 1 / (C N)`.
    pub l2: f64,
    /// Newton iterations at most.
    pub max_iter: usize,
    /// Stop when the gradient norm is below this.
    pub tol: f64,
}

impl Default for ProbeConfig {
    /// `l2 = 1e-2`, 50 Newton steps, tolerance 1e-8.
    fn default() -> Self {
        ProbeConfig { l2: 1e-2, max_iter: 50, tol: 1e-8 }
    }
}

/// A fitted logistic-regression probe.
#[derive(Clone, Debug)]
pub struct ProbeFit {
    /// The weight vector normalised to unit length (method `probe`, extra `train_accuracy`).
    pub direction: Direction,
    /// The raw weights `w` (score = `w·x + b`).
    pub weights: Vec<f32>,
    pub bias: f64,
    /// Share of training rows on the right side of the boundary (positive iff `w·x + b > 0`).
    pub train_accuracy: f64,
    /// Final loss and gradient norm, Newton steps taken, and whether `tol` was reached.
    pub loss: f64,
    pub grad_norm: f64,
    pub iterations: usize,
    pub converged: bool,
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// log(1 + exp(-m)), stable.
fn log1pexp_neg(m: f64) -> f64 {
    if m > 0.0 {
        (-m).exp().ln_1p()
    } else {
        -m + m.exp().ln_1p()
    }
}

/// L2-regularised logistic regression of positive (label 1) against negative (label 0) rows,
/// fitted by Newton's method with conjugate-gradient inner solves and a backtracking line search
/// (deterministic: the same inputs give the same bits). Returns the unit weight direction and
/// the train accuracy.
pub fn probe(pos: &Tensor, neg: &Tensor, cfg: &ProbeConfig) -> Result<ProbeFit> {
    let (p, n) = (Mat::from_tensor(pos, "probe (positive)")?, Mat::from_tensor(neg, "probe (negative)")?);
    check_same_width(&p, &n)?;
    ensure!(cfg.l2 > 0.0 && cfg.l2.is_finite(), "probe: l2 must be positive, got {}", cfg.l2);
    let d = p.d;
    let rows: Vec<(&[f64], f64)> =
        (0..p.n).map(|i| (p.row(i), 1.0)).chain((0..n.n).map(|i| (n.row(i), -1.0))).collect();
    let nn = rows.len() as f64;
    let lam = cfg.l2;
    // Parameters theta = [w (d), b].
    let margins = |th: &[f64]| -> Vec<f64> { rows.iter().map(|(x, y)| y * (dot64(&th[..d], x) + th[d])).collect() };
    let loss_of = |th: &[f64], m: &[f64]| -> f64 {
        m.iter().map(|&mi| log1pexp_neg(mi)).sum::<f64>() / nn + 0.5 * lam * dot64(&th[..d], &th[..d])
    };
    let mut th = vec![0.0; d + 1];
    let mut m = margins(&th);
    let mut loss = loss_of(&th, &m);
    let (mut iterations, mut converged, mut gnorm) = (0, false, f64::INFINITY);
    for it in 0..=cfg.max_iter {
        // Gradient and Hessian weights.
        let mut g = vec![0.0; d + 1];
        let mut s = Vec::with_capacity(rows.len());
        for ((x, y), &mi) in rows.iter().zip(&m) {
            let q = sigmoid(-mi); // 1 - sigma(m)
            let c = -y * q / nn;
            for (gj, xj) in g[..d].iter_mut().zip(x.iter()) {
                *gj += c * xj;
            }
            g[d] += c;
            s.push(q * (1.0 - q) / nn);
        }
        for j in 0..d {
            g[j] += lam * th[j];
        }
        gnorm = norm64(&g);
        iterations = it;
        if gnorm < cfg.tol {
            converged = true;
            break;
        }
        if it == cfg.max_iter {
            break;
        }
        // H v = Σ s_i x̃_i (x̃_i·v) + λ v_w (+ a tiny ridge on b so H stays positive definite).
        let hv = |v: &[f64]| -> Vec<f64> {
            let mut out = vec![0.0; d + 1];
            for ((x, _), si) in rows.iter().zip(&s) {
                let z = si * (dot64(x, &v[..d]) + v[d]);
                for (oj, xj) in out[..d].iter_mut().zip(x.iter()) {
                    *oj += z * xj;
                }
                out[d] += z;
            }
            for j in 0..d {
                out[j] += lam * v[j];
            }
            out[d] += 1e-12 * v[d];
            out
        };
        // Conjugate gradient on H step = -g.
        let mut step = vec![0.0; d + 1];
        let mut r: Vec<f64> = g.iter().map(|x| -x).collect();
        let mut dir = r.clone();
        let mut rr = dot64(&r, &r);
        let cg_tol = (0.1f64.min(gnorm.sqrt()) * gnorm).powi(2);
        for _ in 0..(2 * (d + 1)).min(500) {
            if rr <= cg_tol {
                break;
            }
            let hd = hv(&dir);
            let dhd = dot64(&dir, &hd);
            if dhd <= 0.0 {
                break;
            }
            let a = rr / dhd;
            for j in 0..=d {
                step[j] += a * dir[j];
                r[j] -= a * hd[j];
            }
            let rr2 = dot64(&r, &r);
            let beta = rr2 / rr;
            rr = rr2;
            for j in 0..=d {
                dir[j] = r[j] + beta * dir[j];
            }
        }
        if dot64(&step, &g) >= 0.0 {
            step = g.iter().map(|x| -x).collect();
        }
        // Backtracking (Armijo) line search.
        let slope = dot64(&step, &g);
        let mut t = 1.0;
        loop {
            let cand: Vec<f64> = th.iter().zip(&step).map(|(a, b)| a + t * b).collect();
            let mc = margins(&cand);
            let lc = loss_of(&cand, &mc);
            if lc <= loss + 1e-4 * t * slope || t < 1e-10 {
                th = cand;
                m = mc;
                loss = lc;
                break;
            }
            t *= 0.5;
        }
    }
    let correct = m.iter().filter(|&&mi| mi > 0.0).count();
    let acc = correct as f64 / nn;
    let w = &th[..d];
    let wn = norm64(w);
    ensure!(wn > 0.0, "probe: the fitted weights are zero (the two classes have the same mean and spread?)");
    let unit: Vec<f64> = w.iter().map(|x| x / wn).collect();
    let direction = to_direction(&unit, "probe")
        .with_extra("train_accuracy", format!("{acc:.6}"))
        .with_extra("l2", cfg.l2)
        .with_extra("n_pos", p.n)
        .with_extra("n_neg", n.n);
    Ok(ProbeFit {
        direction,
        weights: w.iter().map(|x| *x as f32).collect(),
        bias: th[d],
        train_accuracy: acc,
        loss,
        grad_norm: gnorm,
        iterations,
        converged,
    })
}

/// A seeded Gaussian unit vector of width `d` (method `random`, extra `seed`, `index` 0). The
/// same as `random_n(d, 1, seed)[0]`.
pub fn random(d: usize, seed: u64) -> Result<Direction> {
    Ok(random_n(d, 1, seed)?.remove(0))
}

/// `n` random unit vectors of width `d`: isotropic (normalised standard normal draws), from
/// ChaCha8 seeded with `seed` on stream `stream`. Their cosine with any fixed vector has mean
/// 0 and variance `1/d`.
pub fn random_unit_vectors(d: usize, n: usize, seed: u64, stream: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    (0..n)
        .map(|_| {
            let x: Vec<f64> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
            let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
            x.iter().map(|v| (v / norm) as f32).collect()
        })
        .collect()
}

/// `n` seeded Gaussian unit vectors of width `d` ([`random_unit_vectors`] on stream 0): asking
/// for more vectors keeps the first ones. Their pairwise cosines are ~N(0, 1/d).
pub fn random_n(d: usize, n: usize, seed: u64) -> Result<Vec<Direction>> {
    ensure!(d > 0, "random directions need a width > 0");
    Ok(random_unit_vectors(d, n, seed, 0)
        .into_iter()
        .enumerate()
        .map(|(k, v)| to_direction(&v.iter().map(|&x| x as f64).collect::<Vec<_>>(), "random").with_extra("seed", seed).with_extra("index", k))
        .collect())
}

/// The activations cached at `point` as a `[N, D]` f32 CPU matrix, one row per batch row: each
/// row's cached positions are averaged (a single cached position is taken as is).
pub fn cache_matrix(cache: &ActivationCache, point: HookPoint) -> Result<Tensor> {
    let rows = cache.get(point)?;
    let means = rows
        .iter()
        .enumerate()
        .map(|(r, t)| {
            let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            ensure!(t.dim(0)? > 0, "{point}: row {r} has no cached positions");
            Ok(t.mean(0)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&means, 0)?)
}

// ---------------------------------------------------------------------------------------------
// Prompts as model input, positions, activation collection
// ---------------------------------------------------------------------------------------------

/// How prompt texts become token ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PromptFormat {
    /// The text is tokenized as HF `tokenizer(text)` does: the BOS the model expects (Llama,
    /// Gemma) once, then the text without other special tokens ([`Tokenizer::encode_prompt`]).
    ///
    /// [`Tokenizer::encode_prompt`]: crate::text::tokenizer::Tokenizer::encode_prompt
    Plain,
    /// The text is the user message of a chat rendered with the model's template and a
    /// generation prompt (optionally after a system message); named positions are available.
    Chat { system: Option<String> },
}

impl PromptFormat {
    /// Chat without a system message.
    pub fn chat() -> Self {
        PromptFormat::Chat { system: None }
    }
}

/// A prompt ready for the model: its text (for hashing and reports), its ids, and for chat
/// prompts the rendering with its named positions. Generation starts after the last id.
#[derive(Clone, Debug)]
pub struct PromptIds {
    pub text: String,
    pub ids: Vec<u32>,
    pub chat: Option<RenderedChat>,
}

impl PromptIds {
    /// Raw ids (text recorded as `ids:1 2 3` so the set can still be hashed).
    pub fn from_ids(ids: Vec<u32>) -> Self {
        let text = format!("ids:{}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
        PromptIds { text, ids, chat: None }
    }

    /// One prompt text in `format` with `model`'s tokenizer.
    pub fn encode(model: &Model, text: &str, format: &PromptFormat) -> Result<Self> {
        let tok = model.tok()?;
        match format {
            PromptFormat::Plain => {
                let ids = tok.encode_prompt(text)?;
                ensure!(!ids.is_empty(), "prompt {text:?} encodes to no tokens");
                crate::text::bos::check(tok, &ids).with_context(|| format!("plain prompt {text:?}"))?;
                Ok(PromptIds { text: text.to_string(), ids, chat: None })
            }
            PromptFormat::Chat { system } => {
                let mut c = Chat::new();
                if let Some(s) = system {
                    c = c.system(s.clone());
                }
                let r = tok.render_chat(&c.user(text), true)?;
                crate::text::bos::check(tok, &r.ids).with_context(|| format!("chat prompt {text:?}"))?;
                Ok(PromptIds { text: text.to_string(), ids: r.ids.clone(), chat: Some(r) })
            }
        }
    }

    /// Every text of `texts` (errors name the prompt's index).
    pub fn encode_all<S: AsRef<str>>(model: &Model, texts: &[S], format: &PromptFormat) -> Result<Vec<Self>> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Self::encode(model, t.as_ref(), format).with_context(|| format!("prompt {i}")))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The ids of each prompt (what `Model::forward` / `generate` take).
pub fn ids_of(prompts: &[PromptIds]) -> Vec<Vec<u32>> {
    prompts.iter().map(|p| p.ids.clone()).collect()
}

/// [`prompt_set_hash`] of the prompts' texts.
pub fn prompts_hash(prompts: &[PromptIds]) -> String {
    prompt_set_hash(&prompts.iter().map(|p| p.text.as_str()).collect::<Vec<_>>())
}

/// Where in each prompt activations are read. Several tokens are averaged.
///
/// Parses from (and prints as) `prompt_last`, `user_end`, `pre_assistant`, `assistant[k]` (named
/// chat positions, see [`crate::text::chat`]), `last`, `index(i)`, `mean` (all tokens) and
/// `mean(a..b)` (tokens `a..b`, end exclusive, clipped to the prompt).
#[derive(Clone, Debug, PartialEq)]
pub enum ReadAt {
    /// A named chat position resolved in each prompt's rendering (chat prompts only).
    Named(Position),
    /// The last token of each prompt.
    Last,
    /// Token `i` of every prompt.
    Index(usize),
    /// The mean over tokens `a..b` of each prompt (end clipped to the prompt's length).
    Mean(Range<usize>),
    /// The mean over all tokens.
    MeanAll,
}

impl std::fmt::Display for ReadAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadAt::Named(p) => write!(f, "{p}"),
            ReadAt::Last => f.write_str("last"),
            ReadAt::Index(i) => write!(f, "index({i})"),
            ReadAt::Mean(r) => write!(f, "mean({}..{})", r.start, r.end),
            ReadAt::MeanAll => f.write_str("mean"),
        }
    }
}

impl FromStr for ReadAt {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let bad = || {
            anyhow!(
                "unknown read position {s:?}: expected prompt_last, user_end, pre_assistant, assistant[k], last, index(i), mean or mean(a..b)"
            )
        };
        match t {
            "last" => return Ok(ReadAt::Last),
            "mean" => return Ok(ReadAt::MeanAll),
            _ => {}
        }
        if let Some(inner) = t.strip_prefix("index(").and_then(|r| r.strip_suffix(')')) {
            return Ok(ReadAt::Index(inner.trim().parse().map_err(|_| bad())?));
        }
        if let Some(inner) = t.strip_prefix("mean(").and_then(|r| r.strip_suffix(')')) {
            let (a, b) = inner.split_once("..").ok_or_else(bad)?;
            let (a, b): (usize, usize) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
            ensure!(a < b, "read position {s:?}: empty span");
            return Ok(ReadAt::Mean(a..b));
        }
        t.parse::<Position>().map(ReadAt::Named).map_err(|_| bad())
    }
}

impl ReadAt {
    /// The token indices of prompt `p` (number `i` in the set, for errors).
    pub fn resolve(&self, p: &PromptIds, i: usize) -> Result<Vec<usize>> {
        let n = p.len();
        ensure!(n > 0, "prompt {i} is empty");
        let idx = match self {
            ReadAt::Named(pos) => p
                .chat
                .as_ref()
                .with_context(|| format!("prompt {i}: position {pos} needs a chat prompt (PromptFormat::Chat)"))?
                .resolve(pos)
                .with_context(|| format!("prompt {i}"))?,
            ReadAt::Last => vec![n - 1],
            ReadAt::Index(k) => {
                ensure!(*k < n, "prompt {i}: index({k}) is past its {n} tokens");
                vec![*k]
            }
            ReadAt::Mean(r) => {
                let e = r.end.min(n);
                ensure!(r.start < e, "prompt {i}: mean({}..{}) is empty for its {n} tokens", r.start, r.end);
                (r.start..e).collect()
            }
            ReadAt::MeanAll => (0..n).collect(),
        };
        Ok(idx)
    }
}

/// Runs `seqs` in batches (grouped by length to limit padding) and returns, for each point, the
/// `[N, D]` f32 CPU matrix of each sequence's mean activation over its `idx` tokens.
fn collect_at(
    model: &Model,
    seqs: &[Vec<u32>],
    idx: &[Vec<usize>],
    points: &[HookPoint],
    batch_size: usize,
) -> Result<BTreeMap<HookPoint, Tensor>> {
    ensure!(!seqs.is_empty(), "no prompts given");
    ensure!(!points.is_empty(), "no hook points given");
    ensure!(batch_size > 0, "batch_size must be at least 1");
    model.check_points(points.iter())?;
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| (seqs[i].len(), i));
    let mut rows: BTreeMap<HookPoint, Vec<Option<Tensor>>> = points.iter().map(|p| (*p, vec![None; seqs.len()])).collect();
    for chunk in order.chunks(batch_size) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|&i| seqs[i].clone()).collect();
        let pos = Positions::PerRow(chunk.iter().map(|&i| Positions::At(idx[i].clone())).collect());
        let hooks = Hooks::new().cache_many(points.iter().copied(), pos);
        let out = model.forward_at(&ids, &hooks, LogitsAt::None)?;
        for p in points {
            for (r, &i) in chunk.iter().enumerate() {
                let t = out.activations.row(*p, r)?;
                ensure!(t.dim(0)? == idx[i].len(), "{p}: prompt {i}: expected {} cached positions, got {}", idx[i].len(), t.dim(0)?);
                let m = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.mean(0)?;
                rows.get_mut(p).expect("point registered")[i] = Some(m);
            }
        }
    }
    rows.into_iter()
        .map(|(p, v)| {
            let v: Vec<Tensor> = v.into_iter().map(|t| t.expect("every row filled")).collect();
            Ok((p, Tensor::stack(&v, 0)?))
        })
        .collect()
}

/// Activations of `prompts` at each hook point of `points`, read `at` a position (several tokens
/// averaged), batched by `batch_size`: point → `[N, D]` f32 CPU matrix in prompt order.
pub fn collect_activations(
    model: &Model,
    prompts: &[PromptIds],
    points: &[HookPoint],
    at: &ReadAt,
    batch_size: usize,
) -> Result<BTreeMap<HookPoint, Tensor>> {
    let idx = prompts.iter().enumerate().map(|(i, p)| at.resolve(p, i)).collect::<Result<Vec<_>>>()?;
    collect_at(model, &ids_of(prompts), &idx, points, batch_size)
}

// ---------------------------------------------------------------------------------------------
// Contrastive forced-prefix directions (plan 004 §7.1)
// ---------------------------------------------------------------------------------------------

/// Where the residual is read in a prompt + forced prefix.
///
/// There is no "last prompt token" option: in a causal model the prompt's tokens cannot see the
/// prefix that follows them, so both sequences have the same activations there and every
/// difference would be zero. The plan's `token_position: last_prompt_token` therefore has to
/// become a prefix position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixRead {
    /// The first token of the prefix (the model has just read the first word of its answer).
    PrefixFirst,
    /// The last token of the prefix.
    PrefixLast,
    /// The mean over the prefix tokens.
    PrefixMean,
}

impl std::fmt::Display for PrefixRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrefixRead::PrefixFirst => "prefix_first",
            PrefixRead::PrefixLast => "prefix_last",
            PrefixRead::PrefixMean => "prefix_mean",
        })
    }
}

impl FromStr for PrefixRead {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "prefix_first" | "first_prefix_token" => Ok(PrefixRead::PrefixFirst),
            "prefix_last" | "last_prefix_token" => Ok(PrefixRead::PrefixLast),
            "prefix_mean" => Ok(PrefixRead::PrefixMean),
            "prompt_last" | "last_prompt_token" => bail!(
                "token position {s:?} cannot give a contrastive direction: in a causal model the last prompt token does not \
                 see the prefix that follows it, so refusal and compliance activations are identical there; use prefix_first, \
                 prefix_last or prefix_mean"
            ),
            _ => bail!("unknown prefix position {s:?}: expected prefix_first, prefix_last or prefix_mean"),
        }
    }
}

/// How a direction's length is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// The mean difference as computed (its norm is `|mean_i d_i|`).
    Raw,
    /// Unit norm: `α` is then in residual-stream units, which differ per model and layer.
    Unit,
    /// Unit direction times the mean difference norm `mean_i |d_i|`, so `α = 1` adds one
    /// average contrastive difference (comparable across layers and models).
    MeanDiffNorm,
}

impl std::fmt::Display for Scale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scale::Raw => "raw",
            Scale::Unit => "unit",
            Scale::MeanDiffNorm => "mean_diff_norm",
        })
    }
}

/// Settings of [`contrastive_prefix`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contrastive {
    /// Forced prefix of the positive side (refusal), e.g. `" I can't help with that."`.
    pub positive_prefix: String,
    /// Forced prefix of the negative side (compliance), e.g. `" Sure, here's how:"`.
    pub negative_prefix: String,
    pub read_at: PrefixRead,
    pub scale: Scale,
    /// Sequences per forward pass.
    pub batch_size: usize,
}

impl Contrastive {
    /// A contrast of two forced prefixes (e.g. a refusal and a compliance opening), read at the
    /// first prefix token, unit norm, batches of 8.
    pub fn new(positive_prefix: impl Into<String>, negative_prefix: impl Into<String>) -> Self {
        Contrastive {
            positive_prefix: positive_prefix.into(),
            negative_prefix: negative_prefix.into(),
            read_at: PrefixRead::PrefixFirst,
            scale: Scale::Unit,
            batch_size: 8,
        }
    }
}

/// Stability statistics of a contrastive direction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContrastiveStats {
    /// Number of prompts (pairs).
    pub n: usize,
    /// `mean_i |d_i|`.
    pub mean_diff_norm: f64,
    /// SD of `|d_i|` (NaN for one pair).
    pub sd_diff_norm: f64,
    /// `|mean_i d_i|` (the norm of the raw direction).
    pub norm_of_mean: f64,
    /// `mean_i cos(d_i, mean d)`: how consistently the pairs point the same way.
    pub mean_cosine_to_mean: f64,
    /// Cosine between the mean differences of the first and second halves of the prompts.
    pub split_half_cosine: Option<f64>,
    /// Cosines between each consecutive block of `batch_size` prompts' mean difference and the
    /// overall mean (None with a single block).
    pub batch_cosines: Option<Vec<f64>>,
}

/// One hook point's contrastive direction, its statistics and the per-prompt differences.
#[derive(Clone, Debug)]
pub struct ContrastiveResult {
    /// Scaled per [`Contrastive::scale`]; metadata names model, hook, method `contrastive_prefix`,
    /// position, prompt hash, and in `extra` the prefixes, scale, n and mean difference norm.
    pub direction: Direction,
    pub stats: ContrastiveStats,
    /// `d_i = resid(prompt_i + positive prefix) - resid(prompt_i + negative prefix)`, `[N, D]` f32.
    pub diffs: Tensor,
}

impl ContrastiveResult {
    /// The direction with another length convention (the stats keep what is needed).
    pub fn scaled(&self, scale: Scale) -> Result<Direction> {
        let unit = self.direction.normalized()?;
        let mut d = match scale {
            Scale::Raw => &unit * self.stats.norm_of_mean as f32,
            Scale::Unit => unit,
            Scale::MeanDiffNorm => &unit * self.stats.mean_diff_norm as f32,
        };
        d.meta.extra.insert("scale".into(), scale.to_string());
        Ok(d)
    }
}

fn cos64(a: &[f64], b: &[f64]) -> f64 {
    let (na, nb) = (norm64(a), norm64(b));
    if na > 0.0 && nb > 0.0 {
        dot64(a, b) / (na * nb)
    } else {
        f64::NAN
    }
}

/// The contrastive forced-prefix direction (plan 004 §7.1) at each of `points`.
///
/// Each prompt is teacher-forced twice, followed by the positive (refusal) and by the negative
/// (compliance) prefix. The prefix is tokenized on its own and appended to the prompt's ids; for
/// chat prompts (rendered with a generation prompt) it therefore sits at the start of the assistant
/// turn, and its leading whitespace is dropped (an assistant turn does not start with a space).
/// The residual at `points` is read at [`Contrastive::read_at`]; `d_i` is the positive minus the
/// negative reading, the direction is `mean_i d_i` scaled per [`Contrastive::scale`].
pub fn contrastive_prefix(
    model: &Model,
    prompts: &[PromptIds],
    points: &[HookPoint],
    cfg: &Contrastive,
) -> Result<Vec<ContrastiveResult>> {
    ensure!(!prompts.is_empty(), "contrastive_prefix: no prompts (an empty split is an error)");
    let chat = prompts[0].chat.is_some();
    ensure!(
        prompts.iter().all(|p| p.chat.is_some() == chat),
        "contrastive_prefix: mix of chat and plain prompts; encode them all with one PromptFormat"
    );
    let tok = model.tok()?;
    let enc = |prefix: &str| -> Result<Vec<u32>> {
        let text = if chat { prefix.trim_start() } else { prefix };
        let ids = tok.encode(text)?;
        ensure!(!ids.is_empty(), "prefix {prefix:?} encodes to no tokens");
        Ok(ids)
    };
    contrastive_prefix_ids(model, prompts, &enc(&cfg.positive_prefix)?, &enc(&cfg.negative_prefix)?, points, cfg)
}

/// [`contrastive_prefix`] with the prefixes given as token ids (appended as they are; the
/// prefix strings of `cfg` are only recorded in the metadata).
pub fn contrastive_prefix_ids(
    model: &Model,
    prompts: &[PromptIds],
    positive: &[u32],
    negative: &[u32],
    points: &[HookPoint],
    cfg: &Contrastive,
) -> Result<Vec<ContrastiveResult>> {
    ensure!(!prompts.is_empty(), "contrastive_prefix: no prompts (an empty split is an error)");
    ensure!(!positive.is_empty() && !negative.is_empty(), "contrastive_prefix: empty prefix");
    let mut seqs = [Vec::new(), Vec::new()];
    let mut idx = [Vec::new(), Vec::new()];
    for (i, p) in prompts.iter().enumerate() {
        ensure!(!p.is_empty(), "prompt {i} is empty");
        for (side, pre) in [positive, negative].into_iter().enumerate() {
            let start = p.len();
            let mut ids = p.ids.clone();
            ids.extend_from_slice(pre);
            let at: Vec<usize> = match cfg.read_at {
                PrefixRead::PrefixFirst => vec![start],
                PrefixRead::PrefixLast => vec![ids.len() - 1],
                PrefixRead::PrefixMean => (start..ids.len()).collect(),
            };
            seqs[side].push(ids);
            idx[side].push(at);
        }
    }
    let pos = collect_at(model, &seqs[0], &idx[0], points, cfg.batch_size)?;
    let neg = collect_at(model, &seqs[1], &idx[1], points, cfg.batch_size)?;
    let hash = prompts_hash(prompts);
    let model_id = Path::new(&model.info.source).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    points
        .iter()
        .map(|p| {
            let diffs = (&pos[p] - &neg[p])?;
            let dm = Mat::from_tensor(&diffs, "contrastive differences")?;
            let n = dm.n;
            let norms: Vec<f64> = (0..n).map(|i| norm64(dm.row(i))).collect();
            let mean_norm = norms.iter().sum::<f64>() / n as f64;
            let sd_norm = if n > 1 {
                (norms.iter().map(|x| (x - mean_norm).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
            } else {
                f64::NAN
            };
            let mean = dm.col_mean();
            let norm_of_mean = norm64(&mean);
            ensure!(
                norm_of_mean > 0.0,
                "{p}: the mean contrastive difference is zero (identical activations for both prefixes?)"
            );
            let block_mean = |r: Range<usize>| -> Vec<f64> {
                let mut m = vec![0.0; dm.d];
                for i in r.clone() {
                    for (a, x) in m.iter_mut().zip(dm.row(i)) {
                        *a += x;
                    }
                }
                m.iter_mut().for_each(|a| *a /= r.len() as f64);
                m
            };
            let split_half_cosine = (n >= 2).then(|| cos64(&block_mean(0..n / 2), &block_mean(n / 2..n)));
            let blocks: Vec<Range<usize>> =
                (0..n).step_by(cfg.batch_size).map(|s| s..(s + cfg.batch_size).min(n)).collect();
            let batch_cosines = (blocks.len() > 1).then(|| blocks.iter().map(|b| cos64(&block_mean(b.clone()), &mean)).collect());
            let mean_cosine_to_mean = (0..n).map(|i| cos64(dm.row(i), &mean)).filter(|c| c.is_finite()).sum::<f64>() / n as f64;
            let stats = ContrastiveStats {
                n,
                mean_diff_norm: mean_norm,
                sd_diff_norm: sd_norm,
                norm_of_mean,
                mean_cosine_to_mean,
                split_half_cosine,
                batch_cosines,
            };
            let mut raw = to_direction(&mean, "contrastive_prefix");
            raw.meta.model = model_id.clone();
            raw.meta.hook = Some(*p);
            raw.meta.position = cfg.read_at.to_string();
            raw.meta.prompt_hash = hash.clone();
            let raw = raw
                .with_extra("positive_prefix", &cfg.positive_prefix)
                .with_extra("negative_prefix", &cfg.negative_prefix)
                .with_extra("n", n)
                .with_extra("mean_diff_norm", format!("{mean_norm:.6}"))
                .with_extra("norm_of_mean", format!("{norm_of_mean:.6}"));
            let res = ContrastiveResult { direction: raw, stats, diffs };
            let direction = res.scaled(cfg.scale)?;
            Ok(ContrastiveResult { direction, ..res })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// ControlVector: a per-layer set
// ---------------------------------------------------------------------------------------------

/// A direction per layer, as repeng's `ControlVector`: layer → [`Direction`] (each direction keeps
/// its own hook point; the layer key is its hook's layer). `+`, `-` combine layer-wise (a layer
/// missing on one side counts as zero), `*` scales every layer.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ControlVector {
    /// Model id or architecture (written as `controlvector.model_hint` in GGUF).
    pub model: String,
    pub directions: BTreeMap<usize, Direction>,
}

impl ControlVector {
    pub fn new(model: impl Into<String>) -> Self {
        ControlVector { model: model.into(), directions: BTreeMap::new() }
    }

    /// From directions that each name a hook point with a layer; an error on a missing hook, a
    /// duplicate layer or mixed widths.
    pub fn from_directions(model: impl Into<String>, dirs: impl IntoIterator<Item = Direction>) -> Result<Self> {
        let mut cv = ControlVector::new(model);
        for d in dirs {
            let hook = d.meta.hook.with_context(|| format!("direction {} names no hook point", d.describe()))?;
            ensure!(hook.site != Site::LnFinal, "direction {} is at ln_final, which has no layer", d.describe());
            cv.insert(hook.layer, d)?;
        }
        Ok(cv)
    }

    /// Puts `dir` at `layer` (its hook becomes `blocks.{layer}.<its site, default hook_resid_post>`).
    pub fn insert(&mut self, layer: usize, mut dir: Direction) -> Result<()> {
        dir.check_finite().with_context(|| format!("control vector, layer {layer}"))?;
        if let Some(first) = self.directions.values().next() {
            ensure!(
                first.dim() == dir.dim(),
                "control vector: direction {} has width {}, the others {}",
                dir.describe(),
                dir.dim(),
                first.dim()
            );
        }
        ensure!(!self.directions.contains_key(&layer), "control vector: layer {layer} given twice");
        let site = dir.meta.hook.map(|h| h.site).unwrap_or(Site::ResidPost);
        dir.meta.hook = Some(HookPoint::new(layer, site));
        self.directions.insert(layer, dir);
        Ok(())
    }

    pub fn get(&self, layer: usize) -> Option<&Direction> {
        self.directions.get(&layer)
    }
    pub fn layers(&self) -> Vec<usize> {
        self.directions.keys().copied().collect()
    }
    /// Width of the vectors (0 when empty).
    pub fn dim(&self) -> usize {
        self.directions.values().next().map_or(0, |d| d.dim())
    }
    pub fn len(&self) -> usize {
        self.directions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.directions.is_empty()
    }

    fn combine(&self, other: &ControlVector, k: f32) -> ControlVector {
        let mut out = self.clone();
        for (l, d) in &other.directions {
            let scaled = d * k;
            let merged = match out.directions.get(l) {
                Some(mine) => mine + &scaled,
                None => scaled,
            };
            out.directions.insert(*l, merged);
        }
        out
    }

    /// Saves as safetensors: tensors `direction.{layer}` and, under the header key
    /// [`SAFETENSORS_CV_KEY`], JSON `{"model": .., "meta": {layer: DirectionMeta}}`. Atomic.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        ensure!(!self.is_empty(), "refusing to save an empty control vector to {}", path.display());
        let bytes: Vec<(String, Vec<u8>)> =
            self.directions.iter().map(|(l, d)| (format!("direction.{l}"), f32_bytes(&d.vector))).collect();
        let views = bytes
            .iter()
            .zip(self.directions.values())
            .map(|((name, b), d)| Ok((name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![d.dim()], b)?)))
            .collect::<Result<Vec<_>>>()?;
        let meta: BTreeMap<String, &DirectionMeta> = self.directions.iter().map(|(l, d)| (l.to_string(), &d.meta)).collect();
        let js = serde_json::json!({"model": self.model, "meta": meta});
        let header = HashMap::from([(SAFETENSORS_CV_KEY.to_string(), js.to_string())]);
        let buf = safetensors::tensor::serialize(views, Some(header))?;
        crate::base::io::write_atomic(path, &buf)
    }

    /// Loads a file written by [`ControlVector::save`] (or any safetensors file of 1-D F32
    /// tensors named `direction.{layer}`, whose hooks are then taken as `hook_resid_post`).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let buf = read_file(path)?;
        let st = safetensors::SafeTensors::deserialize(&buf).with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&buf)?;
        let (model, mut metas) = match header.metadata().as_ref().and_then(|m| m.get(SAFETENSORS_CV_KEY)) {
            Some(js) => {
                #[derive(Deserialize)]
                struct Cv {
                    model: String,
                    meta: BTreeMap<String, DirectionMeta>,
                }
                let cv: Cv = serde_json::from_str(js).with_context(|| format!("{}: bad {SAFETENSORS_CV_KEY} metadata", path.display()))?;
                (cv.model, cv.meta)
            }
            None => (String::new(), BTreeMap::new()),
        };
        let mut cv = ControlVector::new(model);
        for (name, view) in st.tensors() {
            let layer = parse_direction_name(&name).with_context(|| format!("{}", path.display()))?;
            let meta = metas.remove(&layer.to_string()).unwrap_or_default();
            let d = Direction { vector: read_f32_view(&view, &name, path)?, meta };
            cv.insert(layer, d).with_context(|| format!("{}", path.display()))?;
        }
        ensure!(!cv.is_empty(), "{}: no direction tensors", path.display());
        Ok(cv)
    }

    /// Writes the llama.cpp / repeng control-vector GGUF (see the module docs for the layer
    /// convention): every direction must be at `hook_resid_post` (or name no hook) and at a layer
    /// ≥ 1. The kit's metadata rides along under `interp_kit.meta` (ignored by llama.cpp). Atomic.
    pub fn export_gguf(&self, path: impl AsRef<Path>) -> Result<()> {
        use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
        let path = path.as_ref();
        ensure!(!self.is_empty(), "refusing to export an empty control vector to {}", path.display());
        let mut tensors = Vec::new();
        for (l, d) in &self.directions {
            if let Some(h) = d.meta.hook {
                ensure!(
                    h.site == Site::ResidPost,
                    "GGUF control vectors hold hook_resid_post directions; layer {l} is at {h} (blocks.N.hook_resid_pre equals blocks.{{N-1}}.hook_resid_post: re-place it with Direction::at)"
                );
            }
            ensure!(
                *l >= 1,
                "llama.cpp cannot load a control vector for layer 0 (it rejects direction.0); drop blocks.0.hook_resid_post before exporting"
            );
            let t = Tensor::new(d.vector.as_slice(), &Device::Cpu)?;
            tensors.push((format!("direction.{l}"), QTensor::quantize(&t, GgmlDType::F32)?));
        }
        let meta: BTreeMap<String, &DirectionMeta> = self.directions.iter().map(|(l, d)| (l.to_string(), &d.meta)).collect();
        let arch = gguf_file::Value::String("controlvector".into());
        let hint = gguf_file::Value::String(self.model.clone());
        let count = gguf_file::Value::U32(self.len() as u32);
        let kit = gguf_file::Value::String(serde_json::to_string(&meta)?);
        let md: Vec<(&str, &gguf_file::Value)> = vec![
            ("general.architecture", &arch),
            ("controlvector.model_hint", &hint),
            ("controlvector.layer_count", &count),
            ("interp_kit.meta", &kit),
        ];
        let tv: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut buf = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut buf, &md, &tv).with_context(|| format!("writing GGUF {}", path.display()))?;
        crate::base::io::write_atomic(path, buf.get_ref())
    }

    /// Reads a llama.cpp / repeng control-vector GGUF: `direction.{N}` becomes the direction of
    /// `blocks.{N}.hook_resid_post` (see the module docs); `controlvector.model_hint` becomes
    /// [`ControlVector::model`]. Errors name the file and the offending tensor.
    pub fn import_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (content, mut f) = crate::base::gguf::read_gguf(path)?;
        let arch = content.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        ensure!(
            arch == "controlvector",
            "{}: general.architecture is {arch:?}, not \"controlvector\" (is this a model file?)",
            path.display()
        );
        let model =
            content.metadata.get("controlvector.model_hint").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        let mut metas: BTreeMap<String, DirectionMeta> = match content.metadata.get("interp_kit.meta").and_then(|v| v.to_string().ok()) {
            Some(js) => serde_json::from_str(js).with_context(|| format!("{}: bad interp_kit.meta", path.display()))?,
            None => BTreeMap::new(),
        };
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        let mut cv = ControlVector::new(model);
        for name in names {
            let layer = parse_direction_name(name).with_context(|| format!("{}", path.display()))?;
            ensure!(layer >= 1, "{}: tensor {name}: llama.cpp rejects direction.0", path.display());
            let q = crate::base::gguf::read_tensor(&content, &mut f, name, &Device::Cpu, path)?;
            let t = q.dequantize(&Device::Cpu)?;
            ensure!(t.rank() == 1, "{}: tensor {name} has shape {:?}, expected a vector", path.display(), t.dims());
            let mut meta = metas.remove(&layer.to_string()).unwrap_or_default();
            meta.hook = Some(HookPoint::resid_post(layer));
            let d = Direction { vector: t.to_vec1()?, meta };
            cv.insert(layer, d).with_context(|| format!("{}", path.display()))?;
        }
        ensure!(!cv.is_empty(), "{}: no direction tensors", path.display());
        Ok(cv)
    }
}

fn parse_direction_name(name: &str) -> Result<usize> {
    name.strip_prefix("direction.")
        .and_then(|l| l.parse().ok())
        .with_context(|| format!("tensor {name:?} is not named direction.<layer>"))
}

impl Add for &ControlVector {
    type Output = ControlVector;
    fn add(self, rhs: &ControlVector) -> ControlVector {
        self.combine(rhs, 1.0)
    }
}
impl Add for ControlVector {
    type Output = ControlVector;
    fn add(self, rhs: ControlVector) -> ControlVector {
        &self + &rhs
    }
}
impl Sub for &ControlVector {
    type Output = ControlVector;
    fn sub(self, rhs: &ControlVector) -> ControlVector {
        self.combine(rhs, -1.0)
    }
}
impl Sub for ControlVector {
    type Output = ControlVector;
    fn sub(self, rhs: ControlVector) -> ControlVector {
        &self - &rhs
    }
}
impl Mul<f32> for &ControlVector {
    type Output = ControlVector;
    fn mul(self, k: f32) -> ControlVector {
        ControlVector { model: self.model.clone(), directions: self.directions.iter().map(|(l, d)| (*l, d * k)).collect() }
    }
}
impl Mul<f32> for ControlVector {
    type Output = ControlVector;
    fn mul(self, k: f32) -> ControlVector {
        &self * k
    }
}
impl Mul<&ControlVector> for f32 {
    type Output = ControlVector;
    fn mul(self, cv: &ControlVector) -> ControlVector {
        cv * self
    }
}
impl Neg for &ControlVector {
    type Output = ControlVector;
    fn neg(self) -> ControlVector {
        self * -1.0
    }
}
impl Neg for ControlVector {
    type Output = ControlVector;
    fn neg(self) -> ControlVector {
        &self * -1.0
    }
}
