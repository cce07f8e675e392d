//! Seeded sets of unit vectors with stable ids (train and held-out), saved with their seeds, and
//! batched concept-vector extraction (repeng style: a concept prompt against a neutral one in the
//! chat template, each followed by the same suffixes, read at the last token, `pca_center`).
//!
//! A random set draws vector `id` from its own ChaCha8 stream (`seed`, stream `id`), so a vector
//! depends only on the seed and its id: asking for more vectors, or splitting differently, never
//! changes the ones already drawn.
use crate::hooks::{HookPoint, Hooks, Positions};
use crate::interp::directions::{pca_center, random_unit_vectors, Direction};
use crate::model::{LogitsAt, Model};
use crate::text::chat::Chat;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which part of an experiment a vector belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    HeldOut,
}

/// One vector's identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VectorEntry {
    pub id: u32,
    /// `random_{id}` or the concept word.
    pub label: String,
    pub split: Split,
}

/// The JSON side of a saved set (the vectors are in the safetensors file next to it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VectorSetMeta {
    /// `random` or `concept`.
    pub kind: String,
    pub d: usize,
    /// Seed of a random set (vector `id` is stream `id` of ChaCha8 seeded with it).
    pub seed: Option<u64>,
    pub entries: Vec<VectorEntry>,
    /// Free-form provenance (model, layer, prompts...).
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, String>,
}

/// Unit vectors (rows) with ids and splits.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorSet {
    pub meta: VectorSetMeta,
    pub vectors: Vec<Vec<f32>>,
}

const TENSOR: &str = "vectors";

impl VectorSet {
    /// `n_train` train vectors (ids `0..n_train`) and `n_heldout` held-out ones (ids
    /// `n_train..n_train+n_heldout`), isotropic unit vectors of width `d`.
    pub fn random(d: usize, n_train: usize, n_heldout: usize, seed: u64) -> Result<Self> {
        ensure!(d > 0, "vector set: width must be > 0");
        let n = n_train + n_heldout;
        ensure!(n > 0, "vector set: no vectors asked for");
        let mut vectors = Vec::with_capacity(n);
        let mut entries = Vec::with_capacity(n);
        for id in 0..n {
            vectors.push(random_unit_vectors(d, 1, seed, id as u64).remove(0));
            let split = if id < n_train { Split::Train } else { Split::HeldOut };
            entries.push(VectorEntry { id: id as u32, label: format!("random_{id}"), split });
        }
        let meta = VectorSetMeta { kind: "random".into(), d, seed: Some(seed), entries, extra: Default::default() };
        Ok(Self { meta, vectors })
    }

    /// A set from labelled vectors (normalised to unit length); `heldout` lists labels that go to
    /// the held-out split. Ids follow the order given.
    pub fn from_labelled(kind: &str, items: Vec<(String, Vec<f32>)>, heldout: &[&str]) -> Result<Self> {
        ensure!(!items.is_empty(), "vector set: no vectors");
        let d = items[0].1.len();
        let mut vectors = vec![];
        let mut entries = vec![];
        for (i, (label, v)) in items.into_iter().enumerate() {
            ensure!(v.len() == d, "vector {label:?} has width {}, the first has {d}", v.len());
            let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            ensure!(n > 0.0 && n.is_finite(), "vector {label:?} has norm {n}");
            vectors.push(v.iter().map(|x| (*x as f64 / n) as f32).collect());
            let split = if heldout.contains(&label.as_str()) { Split::HeldOut } else { Split::Train };
            entries.push(VectorEntry { id: i as u32, label, split });
        }
        for h in heldout {
            ensure!(entries.iter().any(|e| e.label == *h), "held-out label {h:?} is not in the set");
        }
        Ok(Self { meta: VectorSetMeta { kind: kind.into(), d, seed: None, entries, extra: Default::default() }, vectors })
    }

    pub fn len(&self) -> usize {
        self.vectors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }
    /// Ids of a split, increasing.
    pub fn ids(&self, split: Split) -> Vec<u32> {
        self.meta.entries.iter().filter(|e| e.split == split).map(|e| e.id).collect()
    }
    /// The vector with `id`.
    pub fn get(&self, id: u32) -> Result<&[f32]> {
        let i = self.meta.entries.iter().position(|e| e.id == id).with_context(|| {
            format!("vector id {id} is not in this {} set ({} vectors)", self.meta.kind, self.len())
        })?;
        Ok(&self.vectors[i])
    }
    /// The vector labelled `label` (a concept word).
    pub fn by_label(&self, label: &str) -> Result<&[f32]> {
        let i = self.meta.entries.iter().position(|e| e.label == label).with_context(|| format!("no vector labelled {label:?} in this set"))?;
        Ok(&self.vectors[i])
    }

    /// The JSON path that goes with a safetensors path (`x.safetensors` → `x.json`).
    pub fn meta_path(path: &Path) -> PathBuf {
        path.with_extension("json")
    }

    /// Writes `path` (safetensors, `vectors` `[n, d]` f32) and its JSON metadata, both atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let flat: Vec<f32> = self.vectors.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (self.len(), self.meta.d), &Device::Cpu)?;
        let buf = safetensors::serialize([(TENSOR, TensorBytes(&t))], None).with_context(|| format!("serialising {}", path.display()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::base::io::write_atomic(path, &buf)?;
        crate::base::io::write_json(Self::meta_path(path), &self.meta)
    }

    /// Reads a set written by [`VectorSet::save`]; shapes and ids are checked against the metadata.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta: VectorSetMeta = crate::base::io::read_json(Self::meta_path(path))?;
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).with_context(|| format!("reading {}", path.display()))?;
        let t = tensors.get(TENSOR).with_context(|| format!("{}: no tensor {TENSOR:?}", path.display()))?;
        let (n, d) = t.dims2().with_context(|| format!("{}: {TENSOR} must be [n, d]", path.display()))?;
        ensure!(d == meta.d, "{}: vectors have width {d}, the metadata says {}", path.display(), meta.d);
        ensure!(n == meta.entries.len(), "{}: {n} vectors, the metadata lists {}", path.display(), meta.entries.len());
        let mut seen = std::collections::BTreeSet::new();
        for e in &meta.entries {
            if !seen.insert(e.id) {
                bail!("{}: vector id {} appears twice", Self::meta_path(path).display(), e.id);
            }
        }
        let vectors = t.to_dtype(candle_core::DType::F32)?.to_vec2()?;
        Ok(Self { meta, vectors })
    }
}

/// A candle tensor as a safetensors view (f32, CPU).
struct TensorBytes<'a>(&'a Tensor);

impl safetensors::View for TensorBytes<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.0.dims()
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let v: Vec<f32> = self.0.flatten_all().and_then(|t| t.to_vec1()).unwrap_or_default();
        std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.0.elem_count() * 4
    }
}

/// The contrast of a concept extraction. `{concept}` in `positive` is replaced by the concept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConceptPrompts {
    pub positive: String,
    pub negative: String,
    /// System message (`Some("")` keeps templates such as Qwen's from inserting their default one).
    pub system: Option<String>,
}

impl Default for ConceptPrompts {
    fn default() -> Self {
        Self { positive: "Tell me about {concept}.".into(), negative: "Tell me about whatever you like.".into(), system: Some(String::new()) }
    }
}

impl ConceptPrompts {
    /// Token ids of a user `text` in the chat template with the assistant turn opened, followed by
    /// the `suffix` as the start of the reply.
    pub fn ids(&self, model: &Model, text: &str, suffix: &str) -> Result<Vec<u32>> {
        let tok = model.tok()?;
        let mut chat = Chat::new();
        if let Some(s) = &self.system {
            chat = chat.system(s.clone());
        }
        let mut ids = tok.render_chat(&chat.user(text), true)?.ids;
        ids.extend(tok.encode(suffix)?);
        Ok(ids)
    }
}

/// For each concept, one direction per entry of `layers` (read at `resid_post`): the positive and
/// negative prompt, each followed by every suffix, read at the last token, then
/// [`pca_center`] over the suffix pairs. Forwards run in batches of `batch_size` prompts.
pub fn concept_vectors(
    model: &Model,
    concepts: &[String],
    suffixes: &[String],
    layers: &[usize],
    prompts: &ConceptPrompts,
    batch_size: usize,
) -> Result<Vec<Vec<Direction>>> {
    ensure!(!concepts.is_empty(), "concept vectors: no concepts");
    ensure!(suffixes.len() >= 2, "concept vectors: pca_center needs at least 2 suffixes, got {}", suffixes.len());
    ensure!(!layers.is_empty(), "concept vectors: no layers");
    ensure!(batch_size >= 1, "concept vectors: batch_size must be >= 1");
    ensure!(prompts.positive.contains("{concept}"), "concept prompt {:?} has no {{concept}} placeholder", prompts.positive);
    let points: Vec<HookPoint> = layers.iter().map(|&l| HookPoint::resid_post(l)).collect();
    model.check_points(points.iter())?;
    // The negative side does not depend on the concept: computed once.
    let neg_ids: Vec<Vec<u32>> = suffixes.iter().map(|s| prompts.ids(model, &prompts.negative, s)).collect::<Result<_>>()?;
    let neg = last_token_acts(model, &neg_ids, &points, batch_size)?;
    let mut all_pos = vec![];
    for c in concepts {
        let text = prompts.positive.replace("{concept}", c);
        for s in suffixes {
            all_pos.push(prompts.ids(model, &text, s)?);
        }
    }
    let pos = last_token_acts(model, &all_pos, &points, batch_size)?;
    let n = suffixes.len();
    let mut out = Vec::with_capacity(concepts.len());
    for (ci, c) in concepts.iter().enumerate() {
        let mut per_layer = Vec::with_capacity(layers.len());
        for (li, p) in points.iter().enumerate() {
            let pm = pos[li].narrow(0, ci * n, n)?;
            let d = pca_center(&pm, &neg[li]).with_context(|| format!("concept {c:?} at {p}"))?;
            per_layer.push(d.at(*p).with_extra("concept", c));
        }
        out.push(per_layer);
    }
    Ok(out)
}

/// `[n_prompts, d]` f32 per point: the last token's activation of each prompt.
fn last_token_acts(model: &Model, prompts: &[Vec<u32>], points: &[HookPoint], batch_size: usize) -> Result<Vec<Tensor>> {
    let mut per_point: HashMap<HookPoint, Vec<Tensor>> = HashMap::new();
    for chunk in prompts.chunks(batch_size) {
        let hooks = Hooks::new().cache_many(points.iter().copied(), Positions::Last);
        let out = model.forward_at(chunk, &hooks, LogitsAt::None)?;
        for p in points {
            for r in out.activations.get(*p)? {
                per_point.entry(*p).or_default().push(r.to_dtype(candle_core::DType::F32)?.to_device(&Device::Cpu)?);
            }
        }
    }
    points.iter().map(|p| Ok(Tensor::cat(&per_point[p], 0)?)).collect()
}
