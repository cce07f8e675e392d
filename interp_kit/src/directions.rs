//! Directions in activation space: a value with `+ - *`, metadata, and (to come) extraction
//! methods and IO.
//!
//! A [`Direction`] is one vector at one hook point, stored on the CPU in f32 so it can be combined,
//! saved and compared without caring where the model runs; [`Direction::to_tensor`] moves it to the
//! model's device and dtype when a hook needs it.
use crate::hooks::HookPoint;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::ops::{Add, Mul, Neg, Sub};

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

    /// From a 1-D tensor (any device and float dtype).
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        if t.rank() != 1 {
            bail!("a direction must be a 1-D tensor, got shape {:?}", t.dims());
        }
        Ok(Self::new(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?))
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
