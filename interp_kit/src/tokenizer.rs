//! Minimal tokenizer wrapper (the chat branch replaces this with the full version).
use anyhow::{Context, Result};
use candle_core::quantized::gguf_file;
use std::path::Path;

pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    eos: Vec<u32>,
}

impl Tokenizer {
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let p = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        Ok(Self { inner, eos: vec![] })
    }
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        use candle_core::quantized::tokenizer::TokenizerFromGguf;
        let inner = tokenizers::Tokenizer::from_gguf(ct)?;
        let eos = ct.metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok()).into_iter().collect();
        Ok(Self { inner, eos })
    }
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(|e| anyhow::anyhow!("{e}")).context("encode")?.get_ids().to_vec())
    }
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| anyhow::anyhow!("{e}"))
    }
}
