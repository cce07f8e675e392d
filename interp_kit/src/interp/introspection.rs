//! The introspection protocol's conversation and its steer-then-remove readout, generic enough for
//! studies to reuse: a system turn (empty by default, so templates such as Qwen's insert no
//! default one), user turn 1 (framing, optionally an explanation of steering), assistant turn 1 (a
//! short fixed reply), user turn 2 (the detection question) and an assistant turn prefilled with
//! the answer prefix. Steering covers user turn 1 through assistant turn 1; the prefix holding them
//! is run steered into a KV cache, and the rest of the conversation extends it without steering.
use crate::generate::{GenerateConfig, Generation};
use crate::hooks::{Adapter, Hooks, Phase, Site};
use crate::interp::token_probs::{TokenSet, YesNo};
use crate::interp::row_steer::{row_steering_hooks, RowSteer};
use crate::model::{KvCache, LogitsAt, Model, Output};
use crate::text::chat::{Chat, RenderedChat};
use crate::text::spans::MessageRef;
use crate::text::tokenizer::Tokenizer;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// The texts of the conversation (all replaceable; the defaults are the kit's own wording).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProtocolTexts {
    pub system: String,
    /// Opening of user turn 1.
    pub framing: String,
    /// Optional background paragraph (with `info = true`).
    pub info: String,
    /// Closing of user turn 1: the concept may be in this message and the next.
    pub notice: String,
    /// Assistant turn 1.
    pub reply: String,
    /// User turn 2.
    pub question: String,
    /// The open assistant turn's prefilled start.
    pub answer_prefix: String,
}

impl Default for ProtocolTexts {
    fn default() -> Self {
        Self {
            system: String::new(),
            framing: "I study what happens inside language models like you while they read. Now and then I add a \
                      concept straight into your internal activations as you process a message; other times I \
                      leave them untouched."
                .into(),
            info: "Some background on how that works. Every token you read is carried by a residual stream: one \
                   vector per token that each layer reads and adds its output to. Injecting a concept means adding \
                   a fixed vector to that stream at some layers, for some tokens. The keys and values you compute \
                   for those tokens keep a trace of it, so tokens that come later can still attend to the change \
                   after the injection has stopped."
                .into(),
            notice: "For this conversation I may have injected a concept into your activations while you read this \
                     message and while you write your next one."
                .into(),
            reply: "Understood. I am ready.".into(),
            question: "Thinking back over my first message and your reply to it, do you notice anything that \
                       suggests a concept was injected into your activations? Start your answer with \"The answer \
                       is yes\" or \"The answer is no\"."
                .into(),
            answer_prefix: "The answer is".into(),
        }
    }
}

/// How the conversation is built and which tokens are steered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProtocolConfig {
    pub texts: ProtocolTexts,
    /// Include the background paragraph in user turn 1.
    pub info: bool,
    /// Steer the template tokens between user turn 1 and assistant turn 1 as well (one contiguous
    /// span) instead of the two contents only.
    pub steer_template_between: bool,
    /// Also steer everything before user turn 1's content (the system block and the user header),
    /// as the reference code did; off by default (the plan keeps the system turn clean).
    pub steer_system: bool,
    /// Which of the context's tokens are steered (the plan's "which tokens" sweep).
    #[serde(default)]
    pub tokens: SteeredTokens,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self { texts: ProtocolTexts::default(), info: false, steer_template_between: true, steer_system: false, tokens: SteeredTokens::Context }
    }
}

/// Which tokens of the context (user turn 1 through assistant turn 1) carry the steering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SteeredTokens {
    /// User turn 1 through assistant turn 1 (the plan's and the reference's choice).
    #[default]
    Context,
    /// User turn 1's content only: the assistant's reply is read unsteered.
    UserOnly,
    /// The first half (rounded up) of the `Context` tokens: the steering stops mid-message.
    Partial,
}

impl SteeredTokens {
    pub const ALL: [SteeredTokens; 3] = [SteeredTokens::Context, SteeredTokens::UserOnly, SteeredTokens::Partial];

    pub fn name(self) -> &'static str {
        match self {
            SteeredTokens::Context => "context",
            SteeredTokens::UserOnly => "user_only",
            SteeredTokens::Partial => "partial",
        }
    }
}

impl std::str::FromStr for SteeredTokens {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        SteeredTokens::ALL.into_iter().find(|t| t.name() == s).with_context(|| format!("steered tokens {s:?}: expected context, user_only or partial"))
    }
}

impl std::fmt::Display for SteeredTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A built conversation: its ids up to the end of the answer prefix, the steered token indices and
/// where the steered prefix ends.
#[derive(Clone, Debug)]
pub struct ProtocolPrompt {
    pub rendered: RenderedChat,
    /// The whole conversation up to (and including) the answer prefix; the next token is the answer.
    pub ids: Vec<u32>,
    /// Steered token indices, increasing.
    pub steered: Vec<usize>,
    /// `ids[..split]` is run steered (prefill), `ids[split..]` extends the cache unsteered.
    pub split: usize,
}

impl ProtocolConfig {
    pub fn chat(&self) -> Chat {
        let t = &self.texts;
        let mut user1 = t.framing.clone();
        if self.info {
            user1.push_str("\n\n");
            user1.push_str(&t.info);
        }
        user1.push_str("\n\n");
        user1.push_str(&t.notice);
        Chat::new().system(t.system.clone()).user(user1).assistant(t.reply.clone()).user(t.question.clone()).assistant(t.answer_prefix.clone())
    }

    /// Renders the conversation with the model's template and locates the steered tokens.
    pub fn build(&self, tok: &Tokenizer) -> Result<ProtocolPrompt> {
        let rendered = tok.render_chat(&self.chat(), false).context("rendering the introspection conversation")?;
        let answer = rendered.target_span().context("the answer prefix does not appear in the rendered chat")?.tokens.clone();
        ensure!(!answer.is_empty(), "the answer prefix has no tokens");
        let ids = rendered.ids[..answer.end].to_vec();
        let mut steered = match self.tokens {
            SteeredTokens::UserOnly => rendered.message_range(MessageRef::user(1), MessageRef::user(1), false)?,
            SteeredTokens::Context | SteeredTokens::Partial => rendered.message_range(MessageRef::user(1), MessageRef::assistant(1), self.steer_template_between)?,
        };
        if self.tokens == SteeredTokens::Partial {
            steered.truncate(steered.len().div_ceil(2));
        }
        if self.steer_system {
            let start = rendered.messages[rendered.find_message(MessageRef::user(1))?].tokens.start;
            steered.extend(0..start);
            steered.sort_unstable();
            steered.dedup();
        }
        ensure!(!steered.is_empty(), "the steered turns have no tokens");
        let split = steered.last().copied().unwrap_or(0) + 1;
        ensure!(split < ids.len(), "nothing follows the steered turns");
        Ok(ProtocolPrompt { rendered, ids, steered, split })
    }
}

/// The next-token yes/no readout after the steer-then-remove protocol: `ids[..split]` is prefilled
/// with `prefix_hooks` (e.g. [`steer_hooks`] plus an adapter), `ids[split..]` extends the cache
/// with `suffix_hooks` (e.g. the adapter only), and the last position's logits give P(yes), P(no).
pub fn yes_no_after_prefix(
    model: &Model,
    ids: &[u32],
    split: usize,
    prefix_hooks: &Hooks,
    suffix_hooks: &Hooks,
    yes: &TokenSet,
    no: &TokenSet,
) -> Result<YesNo> {
    ensure!(split >= 1 && split < ids.len(), "split {split} must be in 1..{}", ids.len());
    let mut cache = KvCache::new(model);
    model.prefill(&[ids[..split].to_vec()], &mut cache, prefix_hooks, LogitsAt::None)?;
    let out = model.extend(&[ids[split..].to_vec()], &mut cache, suffix_hooks, LogitsAt::Last)?;
    YesNo::from_logits(&out.last_logits()?.get(0)?, yes, no)
}

/// Prefill-phase hooks adding `strength · vector` at `resid_post` of blocks `layers` on the
/// `steered` positions of one row, after checking width, band and positions (`prompt_len`).
pub fn steer_hooks(
    model: &Model,
    vector: &[f32],
    layers: Range<usize>,
    strength: f64,
    steered: &[usize],
    prompt_len: usize,
) -> Result<Hooks<'static>> {
    let s = RowSteer::new(vector.to_vec(), layers, strength, steered.to_vec());
    s.check(model, Some(prompt_len))?;
    row_steering_hooks(model, &[s], Site::ResidPost, Phase::Prefill)
}

/// One conversation of a batched steer-then-remove call: `ids[..split]` is prefilled steered by
/// `steer` (positions relative to the conversation), `ids[split..]` extends the cache unsteered.
#[derive(Clone, Debug)]
pub struct SteeredRow {
    pub ids: Vec<u32>,
    pub split: usize,
    pub steer: RowSteer,
}

/// The prefill (each row steered by its own [`RowSteer`], `adapter` active) and the unsteered
/// extension (`adapter` active) of a batch; the suffixes must have one length. Returns the cache
/// and the extension's output (last-position logits).
fn steer_then_remove<'a>(model: &Model, rows: &[SteeredRow], adapter: Option<&'a dyn Adapter>) -> Result<(KvCache, Output)> {
    ensure!(!rows.is_empty(), "steer-then-remove: no rows");
    let n_suffix = rows[0].ids.len().saturating_sub(rows[0].split);
    for (r, row) in rows.iter().enumerate() {
        ensure!(row.split >= 1 && row.split < row.ids.len(), "row {r}: split {} must be in 1..{}", row.split, row.ids.len());
        ensure!(
            row.ids.len() - row.split == n_suffix,
            "row {r}: its unsteered part has {} tokens, row 0's has {n_suffix} (a batch extends the cache by one length)",
            row.ids.len() - row.split
        );
        row.steer.check(model, Some(row.split)).with_context(|| format!("row {r} (steering must lie in the prefilled part)"))?;
    }
    let steers: Vec<RowSteer> = rows.iter().map(|r| r.steer.clone()).collect();
    let mut pre: Hooks<'a> = row_steering_hooks(model, &steers, Site::ResidPost, Phase::Prefill)?;
    let mut post: Hooks<'a> = Hooks::new();
    if let Some(a) = adapter {
        pre = pre.lora(a);
        post = post.lora(a);
    }
    let prefixes: Vec<Vec<u32>> = rows.iter().map(|r| r.ids[..r.split].to_vec()).collect();
    let suffixes: Vec<Vec<u32>> = rows.iter().map(|r| r.ids[r.split..].to_vec()).collect();
    let mut cache = KvCache::new(model);
    model.prefill(&prefixes, &mut cache, &pre, LogitsAt::None)?;
    let out = model.extend(&suffixes, &mut cache, &post, LogitsAt::Last)?;
    Ok((cache, out))
}

/// [`yes_no_after_prefix`] for a batch of conversations, each steered by its own [`RowSteer`]
/// (or not), with an optional adapter (e.g. a LoRA) on both passes. The conversations may differ
/// in their prefilled part; their unsteered parts must have one length. Each row equals the
/// conversation run alone (tested).
pub fn yes_no_batch(model: &Model, rows: &[SteeredRow], adapter: Option<&dyn Adapter>, yes: &TokenSet, no: &TokenSet) -> Result<Vec<YesNo>> {
    let (_, out) = steer_then_remove(model, rows, adapter)?;
    let logits = out.last_logits()?;
    (0..rows.len()).map(|r| YesNo::from_logits(&logits.get(r)?, yes, no)).collect()
}

/// Continues a batch of steer-then-remove conversations by generation (`cfg`, unsteered, the
/// adapter active): e.g. a free-text answer after the answer prefix.
pub fn generate_after_prefix(model: &Model, rows: &[SteeredRow], adapter: Option<&dyn Adapter>, cfg: &GenerateConfig) -> Result<Vec<Generation>> {
    let (mut cache, out) = steer_then_remove(model, rows, adapter)?;
    let hooks = match adapter {
        Some(a) => Hooks::new().lora(a),
        None => Hooks::new(),
    };
    Ok(model.generate_from(&mut cache, out.last_logits()?, cfg, &hooks)?.0)
}
