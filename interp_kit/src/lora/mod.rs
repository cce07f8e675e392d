//! LoRA adapters: creation (PEFT's initialisation), application scoped to one call, merging and
//! PEFT-compatible save/load. Training (AdamW, warmup + decay, gradient accumulation, loss on
//! assistant tokens only) is in [`train`], the only part of `lora` that needs gradients.
//!
//! An adapter holds, for every targeted linear layer `W` (`[out, in]`), `A` (`[r, in]`) and
//! `B` (`[out, r]`) as candle [`Var`]s; the layer computes `W x + scaling · B A dropout(x)` with
//! `scaling = alpha / r` (PEFT's default; `alpha / sqrt(r)` with `use_rslora`). The base weights
//! are never modified: the adapter travels with a call in its [`Hooks`] (`Hooks::new().lora(&a)`)
//! exactly like a hook, so no adapter outlives the call it was passed to.
//!
//! ```no_run
//! use interp_kit::prelude::*;
//! let model = Model::embedded(&Device::Cpu)?;
//! let tok = model.tok()?;
//! let adapter = LoraAdapter::new(&model, &LoraConfig::qv(16, 32.0).with_seed(1))?;
//! // One example per (system prompt condition, question/answer pair).
//! let data: Vec<TrainExample> = [("What is 2+3?", "2 + 3 = 5.")]
//!     .iter()
//!     .map(|(q, a)| TrainExample::qa(tok, Some("You answer in capitals."), q, a))
//!     .collect::<anyhow::Result<_>>()?;
//! let cfg = TrainConfig { lr: 2e-4, warmup_ratio: 0.1, epochs: 1, ..Default::default() };
//! let log = train_lora(&model, &adapter, &data, &cfg, |info, _adapter| {
//!     println!("step {} loss {:.3}", info.step, info.loss);
//!     Ok(())
//! })?;
//! adapter.save("results/adapters/caps")?; // adapter_config.json + adapter_model.safetensors
//! let out = model.forward(&[data[0].ids.clone()], &Hooks::new().lora(&adapter))?;
//! let merged = lora::merge(&model, &adapter)?; // a new model; `model` is unchanged
//! # let _ = (log, out, merged);
//! # anyhow::Ok(())
//! ```
use crate::model::layers::Weight;
use crate::model::Model;
use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{DType, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use crate::hooks::Adapter;

pub mod train;
pub use train::{
    eval_loss, lora_grad, lora_grad_prefixed, lora_grad_with, prefill_prefixes, train_lora, train_lora_prefixed, train_lora_with, LoraTrainer,
    Schedule, StepInfo, TrainConfig,
};

/// PEFT's names of the linear layers of a Llama-family block, in block order.
pub const ALL_LINEAR: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The file names PEFT reads and writes.
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The PEFT version whose file format [`LoraAdapter::save`] writes.
pub const PEFT_FORMAT_VERSION: &str = "0.21.2";
/// Key prefix of every tensor in a PEFT adapter file (`PeftModel.base_model.model`).
const KEY_PREFIX: &str = "base_model.model.";

/// What to adapt and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r` of every adapted layer.
    pub r: usize,
    /// `lora_alpha`: the update is scaled by `alpha / r` (or `alpha / sqrt(r)` with `use_rslora`).
    pub alpha: f64,
    /// Dropout probability on the adapter's input, active only in training mode.
    pub dropout: f64,
    /// Module names (PEFT's: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
    /// `down_proj`).
    pub target_modules: Vec<String>,
    /// Only these layers (PEFT `layers_to_transform`); `None`: all layers.
    pub layers: Option<Vec<usize>>,
    /// Seed of `A`'s initialisation.
    pub seed: u64,
    /// Rank-stabilised scaling `alpha / sqrt(r)` (PEFT `use_rslora`; off by default).
    pub use_rslora: bool,
}

impl LoraConfig {
    /// Rank `r`, `alpha`, the given target modules; no dropout, all layers, seed 0.
    pub fn new(r: usize, alpha: f64, target_modules: &[&str]) -> Self {
        Self {
            r,
            alpha,
            dropout: 0.0,
            target_modules: target_modules.iter().map(|s| s.to_string()).collect(),
            layers: None,
            seed: 0,
            use_rslora: false,
        }
    }
    /// `q_proj`, `v_proj` (PEFT's default for Llama/Qwen).
    pub fn qv(r: usize, alpha: f64) -> Self {
        Self::new(r, alpha, &["q_proj", "v_proj"])
    }
    /// `q_proj`, `k_proj`, `v_proj`.
    pub fn qkv(r: usize, alpha: f64) -> Self {
        Self::new(r, alpha, &["q_proj", "k_proj", "v_proj"])
    }
    /// `q_proj`, `k_proj`, `v_proj`, `o_proj`.
    pub fn qkvo(r: usize, alpha: f64) -> Self {
        Self::new(r, alpha, &["q_proj", "k_proj", "v_proj", "o_proj"])
    }
    /// Every linear layer of the blocks ([`ALL_LINEAR`]; PEFT's `all-linear` minus nothing: the
    /// unembedding is never adapted).
    pub fn all_linear(r: usize, alpha: f64) -> Self {
        Self::new(r, alpha, &ALL_LINEAR)
    }
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn with_layers(mut self, layers: impl IntoIterator<Item = usize>) -> Self {
        self.layers = Some(layers.into_iter().collect());
        self
    }
    /// The factor applied to `B A x`.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
    /// Checks the values (not the model): rank, alpha, dropout, module names.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.r >= 1, "LoRA rank r must be >= 1 (got {})", self.r);
        ensure!(self.alpha.is_finite(), "LoRA alpha must be finite (got {})", self.alpha);
        ensure!(
            (0.0..1.0).contains(&self.dropout),
            "LoRA dropout must be in [0, 1) (got {})",
            self.dropout
        );
        ensure!(!self.target_modules.is_empty(), "LoRA target_modules is empty");
        for t in &self.target_modules {
            ensure!(
                ALL_LINEAR.contains(&t.as_str()),
                "unknown LoRA target module {t:?}: expected some of {ALL_LINEAR:?}"
            );
        }
        Ok(())
    }
}

/// The adapter of one linear layer.
pub struct LoraModule {
    /// `[r, in]`, f32.
    pub a: Var,
    /// `[out, r]`, f32.
    pub b: Var,
    /// Layer index of the module.
    pub layer: usize,
    /// Factor of `B A x`.
    pub scaling: f64,
}

impl LoraModule {
    /// `scaling · B A x` for `x` `[.., in]`: `[.., out]`, in `x`'s dtype (`A`, `B` are cast when
    /// it is not f32). Differentiable in `A`, `B`, `x`.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let inn = *dims.last().context("LoRA input has no dimensions")?;
        let rows = x.elem_count() / inn.max(1);
        let (a, b) = (self.a.as_tensor().to_dtype(x.dtype())?, self.b.as_tensor().to_dtype(x.dtype())?);
        let h = x.reshape((rows, inn))?.matmul(&a.t()?)?; // [rows, r]
        let y = (h * self.scaling)?.matmul(&b.t()?)?; // [rows, out]
        let mut out = dims.to_vec();
        *out.last_mut().expect("non-empty") = y.dim(1)?;
        Ok(y.reshape(out)?)
    }
    /// The weight update `scaling · B A` (`[out, in]`, detached from the graph).
    pub fn delta_weight(&self) -> Result<Tensor> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scaling)?.detach())
    }
    /// `(in, out)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok((self.a.as_tensor().dim(1)?, self.b.as_tensor().dim(0)?))
    }
}

/// A LoRA adapter for one model: per targeted linear layer (keyed by its HF module path,
/// `model.layers.3.self_attn.q_proj`), `A` and `B` as [`Var`]s.
///
/// Apply it with [`Hooks::lora`]; train it with [`train_lora`]; merge it with [`merge`]; save and
/// load it in PEFT's format. `Var`s share their storage when cloned, so this type is not `Clone`:
/// use [`LoraAdapter::snapshot`] for an independent copy.
pub struct LoraAdapter {
    pub config: LoraConfig,
    /// Written as `base_model_name_or_path` (default: the model's source; set it to a hub id such
    /// as `Qwen/Qwen2.5-Coder-0.5B-Instruct` for PEFT to find the base model by itself).
    pub base_model: String,
    modules: BTreeMap<String, LoraModule>,
    /// The `adapter_config.json` this adapter was loaded from: fields the kit does not model are
    /// written back unchanged.
    peft_config: Option<Map<String, Value>>,
}

fn short_name(module: &str) -> &str {
    module.rsplit('.').next().unwrap_or(module)
}

impl LoraAdapter {
    /// A fresh adapter, initialised as PEFT does: `A` kaiming-uniform (`a = sqrt(5)`, i.e.
    /// uniform in `±1/sqrt(in)`, drawn from `config.seed`), `B` zero, so the adapted model starts
    /// equal to the base model.
    pub fn new(model: &Model, config: &LoraConfig) -> Result<Self> {
        config.validate()?;
        let n = model.n_layers();
        if let Some(ls) = &config.layers {
            ensure!(!ls.is_empty(), "LoRA layers: empty list (use None for all layers)");
            for &l in ls {
                ensure!(l < n, "LoRA layers: layer {l} is out of range, this model has {n} layers (valid 0..={})", n - 1);
            }
        }
        let linears = model.block_linears();
        let present: BTreeSet<&str> = linears.iter().map(|(_, x)| short_name(&x.name)).collect();
        for t in &config.target_modules {
            ensure!(
                present.contains(t.as_str()),
                "LoRA target module {t:?} does not exist in this model (its linear layers: {present:?})"
            );
        }
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut modules = BTreeMap::new();
        for (l, lin) in linears {
            let short = short_name(&lin.name);
            if !config.target_modules.iter().any(|t| t == short) {
                continue;
            }
            if config.layers.as_ref().is_some_and(|ls| !ls.contains(&l)) {
                continue;
            }
            let (out, inn) = (lin.out_dim(), lin.in_dim());
            let bound = 1.0 / (inn as f64).sqrt();
            let a: Vec<f32> = (0..config.r * inn).map(|_| rng.random_range(-bound..bound) as f32).collect();
            let a = Var::from_vec(a, (config.r, inn), &model.device)?;
            let b = Var::zeros((out, config.r), DType::F32, &model.device)?;
            modules.insert(lin.name.clone(), LoraModule { a, b, layer: l, scaling: config.scaling() });
        }
        Ok(Self { config: config.clone(), base_model: model.info.source.clone(), modules, peft_config: None })
    }

    /// The module adapting linear layer `name` (HF module path), if any.
    pub fn module(&self, name: &str) -> Option<&LoraModule> {
        self.modules.get(name)
    }
    /// `(module path, module)` in name order.
    pub fn modules(&self) -> impl Iterator<Item = (&str, &LoraModule)> {
        self.modules.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// The trainable variables, `A` then `B` per module, in name order.
    pub fn vars(&self) -> Vec<Var> {
        self.modules.values().flat_map(|m| [m.a.clone(), m.b.clone()]).collect()
    }
    /// Number of trainable parameters.
    pub fn n_params(&self) -> usize {
        self.modules.values().map(|m| m.a.elem_count() + m.b.elem_count()).sum()
    }
    /// An independent copy (new storage for every `A` and `B`).
    pub fn snapshot(&self) -> Result<Self> {
        let mut modules = BTreeMap::new();
        for (k, m) in &self.modules {
            modules.insert(
                k.clone(),
                LoraModule {
                    a: Var::from_tensor(&m.a.as_tensor().detach())?,
                    b: Var::from_tensor(&m.b.as_tensor().detach())?,
                    layer: m.layer,
                    scaling: m.scaling,
                },
            );
        }
        Ok(Self {
            config: self.config.clone(),
            base_model: self.base_model.clone(),
            modules,
            peft_config: self.peft_config.clone(),
        })
    }

    /// Checks that every module exists in `model` with the adapter's shapes.
    pub fn check_model(&self, model: &Model) -> Result<()> {
        model.check_adapter(self)
    }

    /// Saves like [`LoraAdapter::save`] into a temporary sibling directory, then renames it over
    /// `dir`: a crash never leaves a half-written adapter where a finished one is expected.
    pub fn save_atomic(&self, dir: &Path) -> Result<()> {
        self.save_atomic_with(dir, |_| Ok(()))
    }

    /// [`LoraAdapter::save_atomic`] with more files: `extra(tmp)` writes them (a training log, say)
    /// into the temporary directory before the rename, so the adapter and its files appear
    /// together or not at all.
    pub fn save_atomic_with(&self, dir: &Path, extra: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let parent = dir.parent().context("adapter directory has no parent")?;
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let name = dir.file_name().context("adapter directory has no name")?.to_string_lossy().to_string();
        // Named like the kit's other temporary files, so a resumed run removes it if this process
        // is killed before the rename (base::io::remove_stale_temps).
        let tmp = parent.join(format!("{}dir", crate::base::io::temp_prefix_for(&name)));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        self.save(&tmp)?;
        extra(&tmp)?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing the old {}", dir.display()))?;
        }
        std::fs::rename(&tmp, dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
        Ok(())
    }

    /// Loads a PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`)
    /// for `model`. Every tensor key must be `base_model.model.<module>.lora_{A,B}.weight` for a
    /// linear layer of the model, with shape `[r, in]` / `[out, r]`; errors name the file and key.
    /// Options the kit does not implement (DoRA, bias training, rank/alpha patterns, ...) are
    /// refused with the field named.
    pub fn load(dir: impl AsRef<Path>, model: &Model) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join(CONFIG_FILE);
        let txt = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
        let v: Value = serde_json::from_str(&txt).with_context(|| format!("parsing {}", cfg_path.display()))?;
        let obj = v.as_object().with_context(|| format!("{}: not a JSON object", cfg_path.display()))?.clone();
        let (config, base_model) = parse_peft_config(&obj).with_context(|| cfg_path.display().to_string())?;
        let w_path = dir.join(WEIGHTS_FILE);
        ensure!(
            w_path.exists(),
            "{}: no {WEIGHTS_FILE} (only safetensors adapters are supported{})",
            dir.display(),
            if dir.join("adapter_model.bin").exists() { "; this one has adapter_model.bin" } else { "" }
        );
        let tensors = candle_core::safetensors::load(&w_path, &model.device)
            .with_context(|| format!("reading {}", w_path.display()))?;
        let linears = model.block_linears();
        let dims: BTreeMap<&str, (usize, usize, usize)> =
            linears.iter().map(|(l, x)| (x.name.as_str(), (*l, x.in_dim(), x.out_dim()))).collect();
        let r = config.r;
        let mut parts: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        let mut keys: Vec<&String> = tensors.keys().collect();
        keys.sort();
        for key in keys {
            let bad = || {
                anyhow!(
                    "{}: tensor {key:?} is not a LoRA weight of a linear layer \
                     (expected {KEY_PREFIX}<module>.lora_A.weight or .lora_B.weight)",
                    w_path.display()
                )
            };
            let rest = key.strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
            let (module, is_a) = match (rest.strip_suffix(".lora_A.weight"), rest.strip_suffix(".lora_B.weight")) {
                (Some(m), _) => (m, true),
                (_, Some(m)) => (m, false),
                _ => return Err(bad()),
            };
            let &(_, inn, out) = dims.get(module).with_context(|| {
                format!("{}: tensor {key:?}: the model has no linear layer {module:?}", w_path.display())
            })?;
            let t = &tensors[key];
            let want = if is_a { [r, inn] } else { [out, r] };
            ensure!(
                t.dims() == want,
                "{}: tensor {key:?} has shape {:?}; the model's {module} ({inn} -> {out} features) with r = {r} ({CONFIG_FILE}) needs {want:?}",
                w_path.display(),
                t.dims()
            );
            let t = t.to_dtype(DType::F32)?;
            let e = parts.entry(module.to_string()).or_default();
            if is_a {
                e.0 = Some(t);
            } else {
                e.1 = Some(t);
            }
        }
        ensure!(!parts.is_empty(), "{}: no LoRA tensors", w_path.display());
        let mut modules = BTreeMap::new();
        for (name, (a, b)) in parts {
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                (None, _) => bail!("{}: {KEY_PREFIX}{name}.lora_A.weight is missing", w_path.display()),
                (_, None) => bail!("{}: {KEY_PREFIX}{name}.lora_B.weight is missing", w_path.display()),
            };
            let layer = dims[name.as_str()].0;
            modules.insert(
                name,
                LoraModule { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)?, layer, scaling: config.scaling() },
            );
        }
        // What the config says must be what the file holds.
        for (l, lin) in &linears {
            let targeted = config.target_modules.iter().any(|t| t == short_name(&lin.name))
                && config.layers.as_ref().is_none_or(|ls| ls.contains(l));
            ensure!(
                targeted == modules.contains_key(&lin.name),
                "{}: {} {} by target_modules/layers_to_transform in {CONFIG_FILE}, but {WEIGHTS_FILE} has {} weights for it",
                dir.display(),
                lin.name,
                if targeted { "is targeted" } else { "is not targeted" },
                if targeted { "no" } else { "LoRA" }
            );
        }
        Ok(Self { config, base_model, modules, peft_config: Some(obj) })
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if
    /// needed) in PEFT's format, so `PeftModel.from_pretrained(base, dir)` loads it. Each file
    /// is written atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cfg = self.peft_config_json()?;
        let mut txt = serde_json::to_string_pretty(&cfg)?;
        txt.push('\n');
        write_atomic(&dir.join(CONFIG_FILE), txt.as_bytes())?;
        let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = vec![];
        for (name, m) in &self.modules {
            for (suffix, v) in [("lora_A", &m.a), ("lora_B", &m.b)] {
                let t = v.as_tensor().to_dtype(DType::F32)?;
                let bytes: Vec<u8> = t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect();
                data.push((format!("{KEY_PREFIX}{name}.{suffix}.weight"), bytes, t.dims().to_vec()));
            }
        }
        let views = data
            .iter()
            .map(|(k, b, s)| Ok((k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?)))
            .collect::<Result<Vec<_>>>()?;
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::tensor::serialize(views, Some(meta))?;
        write_atomic(&dir.join(WEIGHTS_FILE), &bytes)
    }

    /// The `adapter_config.json` content: PEFT 0.21.2's fields (or those of the file this adapter
    /// was loaded from) with the adapter's values.
    fn peft_config_json(&self) -> Result<Value> {
        let mut m = match &self.peft_config {
            Some(m) => m.clone(),
            None => default_peft_config(),
        };
        let c = &self.config;
        let alpha = if c.alpha.fract() == 0.0 && c.alpha.abs() < 1e15 { json!(c.alpha as i64) } else { json!(c.alpha) };
        let mut targets = c.target_modules.clone();
        targets.sort();
        targets.dedup();
        m.insert("base_model_name_or_path".into(), json!(self.base_model));
        m.insert("r".into(), json!(c.r));
        m.insert("lora_alpha".into(), alpha);
        m.insert("lora_dropout".into(), json!(c.dropout));
        m.insert("target_modules".into(), json!(targets));
        m.insert("layers_to_transform".into(), json!(c.layers));
        m.insert("use_rslora".into(), json!(c.use_rslora));
        m.insert("peft_type".into(), json!("LORA"));
        m.insert("inference_mode".into(), json!(true));
        Ok(Value::Object(m))
    }
}

/// The fields PEFT 0.21.2 writes for a LoRA adapter of a causal LM, with its defaults.
impl Adapter for LoraAdapter {
    fn targets(&self, module: &str) -> bool {
        self.module(module).is_some()
    }
    fn delta(&self, module: &str, x: &Tensor) -> Result<Tensor> {
        self.module(module).with_context(|| format!("the LoRA adapter does not target {module}"))?.delta(x)
    }
    fn dropout(&self) -> f64 {
        self.config.dropout
    }
    fn module_dims(&self) -> Result<Vec<(String, (usize, usize))>> {
        self.modules.iter().map(|(n, m)| Ok((n.clone(), m.dims()?))).collect()
    }
}

fn default_peft_config() -> Map<String, Value> {
    let v = json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": null,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": 8,
        "lora_bias": false,
        "lora_dropout": 0.0,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": PEFT_FORMAT_VERSION,
        "qalora_group_size": 16,
        "r": 8,
        "rank_pattern": {},
        "revision": null,
        "target_modules": null,
        "target_parameters": null,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
        "velora_config": null
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Reads the fields the kit models from a PEFT config and refuses what it does not implement.
fn parse_peft_config(obj: &Map<String, Value>) -> Result<(LoraConfig, String)> {
    let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);
    let peft_type = get("peft_type").as_str().unwrap_or("");
    ensure!(peft_type == "LORA", "peft_type is {:?}: only LORA adapters are supported", get("peft_type"));
    // Options that change the computation and are not implemented: refuse rather than differ.
    let refuse = |k: &str, ok: &dyn Fn(&Value) -> bool| -> Result<()> {
        let v = get(k);
        ensure!(ok(v), "{k} = {v} is not supported by interp_kit's LoRA");
        Ok(())
    };
    let null_or_empty = |v: &Value| match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    let falsy = |v: &Value| v.is_null() || v == &json!(false);
    refuse("use_dora", &falsy)?;
    refuse("lora_bias", &falsy)?;
    refuse("fan_in_fan_out", &falsy)?;
    refuse("use_qalora", &falsy)?;
    refuse("bias", &|v| v.is_null() || v == &json!("none"))?;
    for k in [
        "modules_to_save",
        "rank_pattern",
        "alpha_pattern",
        "layer_replication",
        "target_parameters",
        "trainable_token_indices",
        "alora_invocation_tokens",
        "exclude_modules",
    ] {
        refuse(k, &null_or_empty)?;
    }
    let r = get("r").as_u64().context("r: expected a positive integer")? as usize;
    let alpha = get("lora_alpha").as_f64().context("lora_alpha: expected a number")?;
    let dropout = match get("lora_dropout") {
        Value::Null => 0.0,
        v => v.as_f64().context("lora_dropout: expected a number")?,
    };
    let use_rslora = get("use_rslora").as_bool().unwrap_or(false);
    let target_modules: Vec<String> = match get("target_modules") {
        Value::String(s) if s == "all-linear" => ALL_LINEAR.iter().map(|s| s.to_string()).collect(),
        Value::String(s) => bail!("target_modules = {s:?}: regular expressions are not supported; give a list of module names"),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(String::from).context("target_modules: expected a list of strings"))
            .collect::<Result<_>>()?,
        v => bail!("target_modules = {v}: expected a list of module names"),
    };
    let layers = match get("layers_to_transform") {
        Value::Null => None,
        Value::Number(n) => Some(vec![n.as_u64().context("layers_to_transform: expected a layer index")? as usize]),
        Value::Array(a) => Some(
            a.iter()
                .map(|x| x.as_u64().map(|x| x as usize).context("layers_to_transform: expected layer indices"))
                .collect::<Result<_>>()?,
        ),
        v => bail!("layers_to_transform = {v}: expected an integer or a list of integers"),
    };
    ensure!(
        get("layers_pattern").is_null() || layers.is_none() || get("layers_pattern") == &json!("layers"),
        "layers_pattern = {} is not supported (the kit's layers are model.layers.<i>)",
        get("layers_pattern")
    );
    let config = LoraConfig { r, alpha, dropout, target_modules, layers, seed: 0, use_rslora };
    config.validate()?;
    let base = get("base_model_name_or_path").as_str().unwrap_or("").to_string();
    Ok((config, base))
}

use crate::base::io::write_atomic;

/// A copy of `model` with `adapter` merged into its weights (`W + scaling · B A`, computed in
/// f32; merged quantized weights become dense). `model` itself is unchanged and the copy shares
/// every other weight with it. The merged model gives the logits of `model` with the adapter
/// applied unmerged (exactly so up to f32 rounding when both use dense weights).
pub fn merge(model: &Model, adapter: &LoraAdapter) -> Result<Model> {
    adapter.check_model(model)?;
    let mut merged = model.clone();
    for block in merged.blocks.iter_mut() {
        for lin in block.linears_mut() {
            let Some(m) = adapter.module(&lin.name) else { continue };
            let w = lin.weight.dense()?.to_dtype(DType::F32)?;
            let w = (w + m.delta_weight()?)?.to_dtype(model.dtype)?;
            lin.weight = Weight::from_dense(w);
        }
    }
    Ok(merged)
}
