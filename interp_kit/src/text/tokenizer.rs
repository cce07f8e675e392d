//! Tokenizer loading (Hugging Face directory or GGUF metadata) with the bits a chat model needs:
//! BOS / end-of-turn ids, the Jinja chat template and the special-token strings it refers to.
//!
//! ```no_run
//! use interp_kit::text::tokenizer::Tokenizer;
//! let tok = Tokenizer::from_hf_dir(std::path::Path::new("models/Qwen2.5-7B-Instruct"))?;
//! let ids = tok.encode("Hello world")?; // never adds BOS/EOS
//! assert_eq!(tok.decode(&ids, false)?, "Hello world");
//! # anyhow::Ok(())
//! ```
//!
//! Chat rendering and token positions live in [`crate::text::chat`] (`Tokenizer::render_chat`).

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use serde_json::Value as Json;
use std::path::Path;

/// Token texts treated as end-of-generation, as llama.cpp does for control tokens
/// (`<|im_end|>` for Qwen, `<|eot_id|>` for Llama-3, `<end_of_turn>` for Gemma, ...).
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<EOT>",
    "<|END_OF_TURN_TOKEN|>",
];

/// A `(start, end)` byte range in a text.
pub type ByteSpan = (usize, usize);

/// A text tokenizer plus the chat metadata of its model.
///
/// `inner` is the underlying `tokenizers::Tokenizer` for anything not wrapped here.
#[derive(Clone)]
pub struct Tokenizer {
    /// The wrapped Hugging Face `tokenizers` tokenizer.
    pub inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    chat_template: Option<String>,
    /// The file the chat template was read from, named in template errors.
    chat_template_origin: Option<String>,
    /// `(name, content)` pairs such as `("bos_token", "<bos>")`, passed to the chat template
    /// exactly as `transformers` passes its special-tokens map.
    special_tokens: Vec<(String, String)>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("special_tokens", &self.special_tokens)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` (an AddedToken dict) -> `"<s>"`; null/absent -> None.
fn token_content(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(m) => m
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing JSON in {}", path.display()))
}

/// `chat_template` as a string, or a list of `{name, template}` (the `default` one, else the first).
fn template_from_json(v: &Json, path: &Path) -> Result<Option<String>> {
    match v {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(s.clone())),
        Json::Array(items) => {
            let named = |want: Option<&str>| {
                items.iter().find_map(|it| {
                    let name = it.get("name").and_then(|n| n.as_str());
                    let tpl = it.get("template").and_then(|t| t.as_str())?;
                    (want.is_none() || name == want).then(|| tpl.to_string())
                })
            };
            match named(Some("default")).or_else(|| named(None)) {
                Some(t) => Ok(Some(t)),
                None => bail!(
                    "{}: `chat_template` is a list without any {{name, template}} entry",
                    path.display()
                ),
            }
        }
        other => bail!(
            "{}: `chat_template` must be a string or a list, found {other}",
            path.display()
        ),
    }
}

impl Tokenizer {
    /// Load from a Hugging Face model directory: `tokenizer.json` (required), `tokenizer_config.json`
    /// (special tokens, `chat_template` as a string or a list of `{name, template}`, `add_bos_token`),
    /// optional `chat_template.jinja` / `chat_template.json` (take precedence, as in transformers) and
    /// optional `generation_config.json` (`eos_token_id`, an int or a list).
    ///
    /// [`Tokenizer::bos_id`] is `bos_token` when `add_bos_token` is true or, without that key,
    /// when `tokenizer.json`'s post-processor prepends it (Llama-3, Gemma; not GPT-2).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            bail!(
                "{} not found (expected a Hugging Face tokenizer directory)",
                tok_path.display()
            );
        }
        // tokenizers 0.23 panics (`expect("Helper")`) on some malformed `decoder` entries: a
        // malformed file is an error naming it, like any other.
        let inner = match std::panic::catch_unwind(|| tokenizers::Tokenizer::from_file(&tok_path)) {
            Ok(r) => r.map_err(|e| anyhow!("{e}")).with_context(|| format!("loading {}", tok_path.display()))?,
            Err(p) => bail!(
                "loading {}: the tokenizers library failed on it ({}): a malformed tokenizer.json?",
                tok_path.display(),
                crate::base::io::panic_message(&*p)
            ),
        };

        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.is_file() {
            read_json(&cfg_path)?
        } else {
            Json::Null
        };
        let mut chat_template = match cfg.get("chat_template") {
            Some(v) => template_from_json(v, &cfg_path)?,
            None => None,
        };
        let mut chat_template_origin = chat_template.as_ref().map(|_| cfg_path.display().to_string());
        let jinja = dir.join("chat_template.jinja");
        let tpl_json = dir.join("chat_template.json");
        if jinja.is_file() {
            chat_template = Some(
                std::fs::read_to_string(&jinja)
                    .with_context(|| format!("reading {}", jinja.display()))?,
            );
            chat_template_origin = Some(jinja.display().to_string());
        } else if tpl_json.is_file() {
            let v = read_json(&tpl_json)?;
            chat_template =
                template_from_json(v.get("chat_template").unwrap_or(&Json::Null), &tpl_json)?;
            chat_template_origin = Some(tpl_json.display().to_string());
        }

        let mut special_tokens = Vec::new();
        for name in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let Some(content) = token_content(cfg.get(name)) {
                special_tokens.push((name.to_string(), content));
            }
        }
        let lookup = |name: &str| -> Result<Option<u32>> {
            match special_tokens.iter().find(|(n, _)| n == name) {
                None => Ok(None),
                Some((_, content)) => inner.token_to_id(content).map(Some).ok_or_else(|| {
                    anyhow!(
                        "{}: {name} {content:?} is not in the vocabulary of {}",
                        cfg_path.display(),
                        tok_path.display()
                    )
                }),
            }
        };
        // BOS is used if the config says so, else if the tokenizer's post-processor prepends it.
        let bos_token = lookup("bos_token")?;
        let add_bos = match cfg.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(b) => b,
            None => bos_token.is_some_and(|b| {
                inner
                    .encode("a", true)
                    .is_ok_and(|e| e.get_ids().first() == Some(&b))
            }),
        };
        let bos = if add_bos { bos_token } else { None };

        let mut eos: Vec<u32> = lookup("eos_token")?.into_iter().collect();
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            let gen = read_json(&gen_path)?;
            match gen.get("eos_token_id") {
                None | Some(Json::Null) => {}
                Some(Json::Number(n)) => eos.extend(n.as_u64().map(|x| x as u32)),
                Some(Json::Array(xs)) => {
                    eos.extend(xs.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
                }
                Some(other) => bail!(
                    "{}: eos_token_id must be an int or a list, found {other}",
                    gen_path.display()
                ),
            }
        }
        // End-of-turn markers the chat template writes are end-of-generation too.
        if let Some(t) = &chat_template {
            for text in END_OF_TURN_TOKENS {
                if t.contains(text) {
                    eos.extend(inner.token_to_id(text));
                }
            }
        }
        Ok(Self {
            inner,
            bos,
            eos: dedup(eos),
            chat_template,
            chat_template_origin,
            special_tokens,
        })
    }

    /// Load from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`) with candle's
    /// `TokenizerFromGguf`, then correct its added-token table to match Hugging Face:
    /// candle registers every token of type 2..=5 as a *special* added token; here only control
    /// (3) and unknown (2) tokens are special, user-defined tokens (4, e.g. Qwen's `<tool_call>`)
    /// are added as normal tokens (so `decode(.., skip_special=true)` keeps them), and unused
    /// padding entries (5, e.g. `[PAD151665]`) are not added at all (HF splits such text as
    /// ordinary text).
    ///
    /// BOS is reported only when `tokenizer.ggml.add_bos_token` is true (Qwen: none).
    /// End-of-generation ids: `eos`/`eot`/`eom` token ids plus control tokens named like
    /// `<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<end_of_turn>` (llama.cpp's rule).
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let md = &ct.metadata;
        let mut raw = tokenizers::Tokenizer::from_gguf(ct)
            .map_err(|e| anyhow!("{e}"))
            .context("building a tokenizer from GGUF metadata (tokenizer.ggml.*)")?;
        if let Some(pre) = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()) {
            fix_gguf_pre_tokenizer(&mut raw, pre)?;
        }
        let tokens: Vec<String> = md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .context("GGUF metadata has no tokenizer.ggml.tokens array")?
            .iter()
            .map(|v| v.to_string().map(|s| s.to_string()).unwrap_or_default())
            .collect();
        let types: Vec<u32> = match md.get("tokenizer.ggml.token_type").map(|v| v.to_vec()) {
            Some(Ok(vs)) => vs.iter().map(|v| gguf_u32(v).unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let inner = fix_gguf_added_tokens(raw, &types).context("correcting GGUF added tokens")?;

        let id_of = |key: &str| {
            md.get(key)
                .and_then(|v| gguf_u32(v).ok())
                .filter(|&i| (i as usize) < tokens.len())
        };
        let text_of = |id: u32| tokens[id as usize].clone();
        let mut special_tokens = Vec::new();
        for (name, key) in [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        ] {
            if let Some(id) = id_of(key) {
                special_tokens.push((name.to_string(), text_of(id)));
            }
        }
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let bos = if add_bos {
            id_of("tokenizer.ggml.bos_token_id")
        } else {
            None
        };

        let mut eos: Vec<u32> = [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ]
        .iter()
        .filter_map(|k| id_of(k))
        .collect();
        for (i, t) in tokens.iter().enumerate() {
            if types.get(i) == Some(&3) && END_OF_TURN_TOKENS.contains(&t.as_str()) {
                eos.push(i as u32);
            }
        }
        let chat_template = match md.get("tokenizer.chat_template") {
            None => None,
            Some(v) => Some(
                v.to_string()
                    .map_err(|e| anyhow!("{e}"))
                    .context("tokenizer.chat_template is not a string")?
                    .clone(),
            ),
        };
        let chat_template_origin = chat_template.as_ref().map(|_| "the GGUF's tokenizer.chat_template".to_string());
        Ok(Self {
            inner,
            bos,
            eos: dedup(eos),
            chat_template,
            chat_template_origin,
            special_tokens,
        })
    }

    /// Open a `.gguf` file and load its tokenizer (see [`Tokenizer::from_gguf`]).
    pub fn from_gguf_file(path: &Path) -> Result<Self> {
        let (ct, _) = crate::base::gguf::read_gguf(path)?;
        let t = Self::from_gguf(&ct).with_context(|| format!("tokenizer of {}", path.display()))?;
        Ok(t.with_gguf_path(path))
    }

    /// Names `path` as the GGUF the chat template came from (for errors).
    pub(crate) fn with_gguf_path(mut self, path: &Path) -> Self {
        if self.chat_template.is_some() {
            self.chat_template_origin = Some(format!("{} (tokenizer.chat_template)", path.display()));
        }
        self
    }

    /// The BOS id the model expects at the start of a sequence, if it uses one
    /// (Llama-3 `<|begin_of_text|>`, Gemma `<bos>`; `None` for Qwen).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// All end-of-sequence / end-of-turn ids (Qwen instruct: `<|im_end|>`, `<|endoftext|>`).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// True if `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    /// The model's Jinja chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Replace (or remove) the chat template, e.g. to try another model's format.
    pub fn set_chat_template(&mut self, template: Option<String>) {
        self.chat_template = template;
        self.chat_template_origin = None;
    }

    /// The file the chat template came from, if it was read from one.
    pub fn chat_template_origin(&self) -> Option<&str> {
        self.chat_template_origin.as_deref()
    }

    /// Special-token strings passed to the chat template (`bos_token`, `eos_token`, ...).
    pub fn special_tokens(&self) -> &[(String, String)] {
        &self.special_tokens
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of an exact token string (e.g. `"<|im_end|>"`), if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of a plain-text prompt (base models, which have no chat template): the BOS the
    /// model expects ([`Tokenizer::bos_id`]: Llama-3, Gemma) first, then `text` encoded without
    /// special tokens; models without a BOS (GPT-2, GPT-NeoX, Qwen) get `text`'s tokens only.
    /// This is HF `tokenizer(text)` (`add_special_tokens=True`) for these models, except that a
    /// text that already starts with the BOS string does not get a second BOS.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.encode(text)?;
        match self.bos {
            Some(b) if ids.first() != Some(&b) => Ok(std::iter::once(b).chain(ids).collect()),
            _ => Ok(ids),
        }
    }

    /// Encode text without adding any special token (no BOS/EOS), as `add_special_tokens=False`.
    /// Special-token strings written in `text` (e.g. `<|im_start|>`) still map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text)?.0)
    }

    /// Like [`Tokenizer::encode`], also returning each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteSpan>)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("encoding {} bytes of text", text.len()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Decode ids to text; `skip_special` drops special tokens (BOS, `<|im_end|>`, ...).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&i| self.inner.id_to_token(i).is_none()) {
            bail!(
                "token id {bad} is not in the vocabulary (size {})",
                self.vocab_size()
            );
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| anyhow!("{e}"))
            .context("decoding token ids")
    }

    /// Human-readable text of one token (decoded, special tokens kept), for tables and plots.
    /// Unknown ids give `"<unknown id N>"`.
    pub fn token_str(&self, id: u32) -> String {
        match self.decode(&[id], false) {
            Ok(s) if !s.is_empty() => s,
            _ => self
                .inner
                .id_to_token(id)
                .unwrap_or_else(|| format!("<unknown id {id}>")),
        }
    }
}

fn dedup(ids: Vec<u32>) -> Vec<u32> {
    let mut out = Vec::with_capacity(ids.len());
    for i in ids {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn gguf_u32(v: &gguf_file::Value) -> Result<u32> {
    use gguf_file::Value::*;
    Ok(match v {
        U8(x) => *x as u32,
        I8(x) => *x as u32,
        U16(x) => *x as u32,
        I16(x) => *x as u32,
        U32(x) => *x,
        I32(x) => *x as u32,
        U64(x) => *x as u32,
        I64(x) => *x as u32,
        other => bail!("expected an integer, found {other:?}"),
    })
}

/// Rebuild the tokenizer candle made (same model, normalizer, pre-tokenizer, post-processor,
/// decoder) with HF's added-token table (see [`Tokenizer::from_gguf`]): `tokenizers` cannot
/// remove added tokens in place.
fn fix_gguf_added_tokens(
    raw: tokenizers::Tokenizer,
    types: &[u32],
) -> Result<tokenizers::Tokenizer> {
    let mut added: Vec<(u32, tokenizers::AddedToken)> =
        raw.get_added_tokens_decoder().into_iter().collect();
    let needs_fix = added
        .iter()
        .any(|(id, t)| t.special && matches!(types.get(*id as usize), Some(4 | 5)));
    if !needs_fix {
        return Ok(raw);
    }
    added.sort_by_key(|(id, _)| *id);
    let mut tok = tokenizers::Tokenizer::new(raw.get_model().clone());
    if let Some(n) = raw.get_normalizer() {
        tok.with_normalizer(Some(n.clone()))
            .map_err(|e| anyhow!("{e}"))?;
    }
    tok.with_pre_tokenizer(raw.get_pre_tokenizer().cloned());
    tok.with_post_processor(raw.get_post_processor().cloned());
    tok.with_decoder(raw.get_decoder().cloned());
    for (id, t) in added {
        let added_ok = match types.get(id as usize) {
            Some(5) => continue,
            Some(4) => {
                tok.add_tokens([tokenizers::AddedToken::from(t.content, false).normalized(false)])
            }
            _ => tok.add_special_tokens([tokenizers::AddedToken::from(t.content, true)]),
        };
        added_ok.map_err(|e| anyhow!("{e}"))?;
    }
    Ok(tok)
}

/// candle's GGUF tokenizer knows llama.cpp's `qwen2` pre-tokenizer and falls back to GPT-2's
/// byte-level pre-tokenizer *with* a prefix space for every other name. Set the pre-tokenizer
/// that the HF `tokenizer.json` of these families has instead:
/// - `llama-bpe` (Llama-3): the Llama-3 split regex, then byte-level without regex or prefix space;
/// - `gpt-2`, `gpt-neox`, `phi-2`, `olmo`: GPT-2's byte-level pre-tokenizer without prefix space.
fn fix_gguf_pre_tokenizer(tok: &mut tokenizers::Tokenizer, pre: &str) -> Result<()> {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama-bpe" | "llama3" => {
            let split = Split::new(
                SplitPattern::Regex(REGEX_LLAMA3.to_string()),
                tokenizers::tokenizer::SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow!("{e}"))?;
            let seq = Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]);
            tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::PreTokenizerWrapper::from(seq)));
        }
        "gpt-2" | "gpt2" | "gpt-neox" | "phi-2" | "olmo" => {
            tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::PreTokenizerWrapper::from(ByteLevel::new(false, true, true))));
        }
        _ => {}
    }
    Ok(())
}
