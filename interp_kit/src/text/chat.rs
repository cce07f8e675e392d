//! Chats rendered with the model's own Jinja chat template, and named token positions in them.
//!
//! ```no_run
//! use interp_kit::text::{chat::{Chat, Position}, tokenizer::Tokenizer};
//! let tok = Tokenizer::from_gguf_file(std::path::Path::new("model.gguf"))?;
//! let chat = Chat::new().system("Be brief.").user("Write a haiku.");
//! let r = tok.render_chat(&chat, true)?; // same text and ids as HF apply_chat_template
//! let pos: Position = "pre_assistant".parse()?;
//! for (i, t) in r.describe(&pos, &tok)? { println!("{i:4} {t:?}"); }
//! # anyhow::Ok(())
//! ```
//!
//! Rendering matches `transformers`' `apply_chat_template`: minijinja with `trim_blocks` and
//! `lstrip_blocks`, Python string methods (`.strip()`, `.startswith()`, ...) from
//! minijinja-contrib's pycompat, and the globals HF adds (`raise_exception`, `strftime_now`, and a
//! `tojson` that prints like Python's `json.dumps(ensure_ascii=False)`). The rendered text is
//! tokenized without adding special tokens, as HF does, so a template that writes its own BOS
//! (Llama-3, Gemma) yields exactly one BOS. One known difference: maps passed with [`Chat::var`]
//! (e.g. tool schemas) are iterated in sorted key order, so their `tojson` may order keys
//! differently from Python.
//!
//! # Positions and the boundary rule
//! Each message's content is located in the rendered text (byte range `chars`), and its tokens
//! are those whose byte range **overlaps** the content by at least one byte. A token that straddles
//! a boundary (e.g. `"\n\n"` made of the template's `\n` and a content's leading `\n`) therefore
//! belongs to the content; the token before a content span consists of template text only.
//!
//! A content the template rewrites beyond trimming (e.g. Qwen3 re-spacing `<think>hmm</think>`
//! as `<think>\nhmm\n</think>\n\n`) cannot be located: `render_chat` then errors naming the
//! message (`apply_chat_template` still renders it).
//!
//! The *target assistant turn* is the generation prompt when rendered with
//! `add_generation_prompt = true`, else the last message if it is an assistant message
//! (teacher forcing).
//! * `user_end`: last token of the last user message's content.
//! * `pre_assistant`: the token just before the target assistant content begins; with a
//!   generation prompt, the last token of the rendered text. Errors when there is no target turn.
//! * `assistant[k]`: the first `k` tokens of the target assistant message's content.
//! * `prompt_last`: last token of the prompt before generation begins: `pre_assistant` when there
//!   is a target turn, else the last token of the rendered text.

use crate::text::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Who speaks a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// System prompt.
    System,
    /// User turn.
    User,
    /// Assistant (model) turn.
    Assistant,
}

impl Role {
    /// The role string templates see (`"system"`, `"user"`, `"assistant"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => bail!("unknown role {other:?}: expected system, user or assistant"),
        }
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text content.
    pub content: String,
}

/// A conversation plus extra template variables (HF's `apply_chat_template(**kwargs)`).
///
/// `Chat::new().system("..").user("..").assistant("..")`
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chat {
    /// Messages in order.
    pub messages: Vec<Message>,
    /// Extra variables for the template, e.g. `enable_thinking = false` for Qwen3.
    pub vars: BTreeMap<String, Json>,
}

impl Chat {
    /// An empty chat.
    pub fn new() -> Self {
        Self::default()
    }
    /// Append a message.
    pub fn push(mut self, role: Role, content: impl Into<String>) -> Self {
        self.messages.push(Message {
            role,
            content: content.into(),
        });
        self
    }
    /// Append a system message.
    pub fn system(self, content: impl Into<String>) -> Self {
        self.push(Role::System, content)
    }
    /// Append a user message.
    pub fn user(self, content: impl Into<String>) -> Self {
        self.push(Role::User, content)
    }
    /// Append an assistant message.
    pub fn assistant(self, content: impl Into<String>) -> Self {
        self.push(Role::Assistant, content)
    }
    /// Set a template variable (e.g. `.var("enable_thinking", false)`).
    pub fn var(mut self, name: impl Into<String>, value: impl Into<Json>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }
}

/// A chat template source plus the special-token strings it may use (`bos_token`, ...).
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    special_tokens: Vec<(String, String)>,
    /// Where the source came from (a file), named in errors.
    origin: Option<String>,
}

impl ChatTemplate {
    /// A template from Jinja source.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            special_tokens: Vec::new(),
            origin: None,
        }
    }
    /// Names where the source came from (e.g. the `tokenizer_config.json` path) in every error.
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }
    /// "chat template" or "chat template of {origin}", for error messages.
    fn what(&self) -> String {
        match &self.origin {
            Some(o) => format!("chat template of {o}"),
            None => "chat template".to_string(),
        }
    }
    /// Add a special-token variable, e.g. `.with_token("bos_token", "<bos>")`.
    pub fn with_token(mut self, name: &str, content: &str) -> Self {
        self.special_tokens.retain(|(n, _)| n != name);
        self.special_tokens
            .push((name.to_string(), content.to_string()));
        self
    }
    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render `chat` to text exactly as HF `apply_chat_template(tokenize=False)`.
    pub fn render(&self, chat: &Chat, add_generation_prompt: bool) -> Result<String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| anyhow!("{} does not compile: {}", self.what(), jinja_msg(&e)))?;
        let mut ctx = serde_json::Map::new();
        for (name, content) in &self.special_tokens {
            ctx.insert(name.clone(), Json::String(content.clone()));
        }
        for (k, v) in &chat.vars {
            ctx.insert(k.clone(), v.clone());
        }
        let msgs = chat
            .messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        ctx.insert("messages".into(), Json::Array(msgs));
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(add_generation_prompt),
        );
        tmpl.render(Value::from_serialize(&ctx))
            .map_err(|e| anyhow!("{} failed to render: {}", self.what(), jinja_msg(&e)))
    }

    /// Byte range of each message's content in `text` (rendered from `chat`), or `None` for a
    /// message the template does not write.
    fn locate(
        &self,
        chat: &Chat,
        add_generation_prompt: bool,
        text: &str,
    ) -> Result<Vec<Option<Range<usize>>>> {
        if let Some(spans) = self.locate_by_skeleton(chat, add_generation_prompt, text) {
            return Ok(spans);
        }
        // Fallback: search each content (or a trimmed form of it) left to right.
        let mut cursor = 0;
        let mut spans = Vec::new();
        for (i, m) in chat.messages.iter().enumerate() {
            let hit = content_forms(&m.content)
                .into_iter()
                .filter(|c| !c.is_empty())
                .find_map(|c| text[cursor..].find(c).map(|at| (cursor + at, c.len())));
            match hit {
                Some((start, len)) => {
                    spans.push(Some(start..start + len));
                    cursor = start + len;
                }
                None => bail!(
                    "could not find the content of message {i} ({}) in the rendered chat; the {} rewrites it",
                    m.role,
                    self.what()
                ),
            }
        }
        Ok(spans)
    }

    /// Render the chat with each content replaced by a unique marker; the template text between
    /// markers then pins down where each real content sits. `None` if that does not line up.
    fn locate_by_skeleton(
        &self,
        chat: &Chat,
        agp: bool,
        text: &str,
    ) -> Option<Vec<Option<Range<usize>>>> {
        let marker = |i: usize| format!("\u{E000}{i}\u{E001}");
        let mut skel = chat.clone();
        for (i, m) in skel.messages.iter_mut().enumerate() {
            m.content = marker(i);
        }
        let sk = self.render(&skel, agp).ok()?;
        let mut found: Vec<(usize, usize)> = Vec::new(); // (offset in skeleton, message index)
        for i in 0..chat.messages.len() {
            let mk = marker(i);
            let hits: Vec<usize> = sk.match_indices(&mk).map(|(p, _)| p).collect();
            match hits.len() {
                0 => {}
                1 => found.push((hits[0], i)),
                _ => return None,
            }
        }
        found.sort();
        let mut spans = vec![None; chat.messages.len()];
        let (mut sk_pos, mut pos) = (0, 0);
        for (k, &(at, i)) in found.iter().enumerate() {
            let lit = &sk[sk_pos..at];
            if !text[pos..].starts_with(lit) {
                return None;
            }
            pos += lit.len();
            sk_pos = at + marker(i).len();
            let next_lit = &sk[sk_pos..found.get(k + 1).map_or(sk.len(), |f| f.0)];
            let len = content_forms(&chat.messages[i].content)
                .into_iter()
                .find_map(|c| {
                    let rest = text.get(pos..)?;
                    (rest.starts_with(c) && rest[c.len()..].starts_with(next_lit))
                        .then_some(c.len())
                })?;
            spans[i] = Some(pos..pos + len);
            pos += len;
        }
        (text[pos..] == sk[sk_pos..]).then_some(spans)
    }
}

/// The forms a template may write a content in: as is, or stripped (`| trim`, `.strip('\n')`, ...).
fn content_forms(c: &str) -> Vec<&str> {
    let mut v = vec![
        c,
        c.trim(),
        c.trim_matches('\n'),
        c.trim_start_matches('\n'),
        c.trim_end(),
        c.trim_start(),
    ];
    v.dedup();
    let mut out = Vec::new();
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn jinja_msg(e: &JinjaError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

fn raise_exception(msg: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// `strftime_now(fmt)`: the current UTC time, formatted with the common `strftime` codes.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&fmt, secs)
}

fn strftime(fmt: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<String, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    py_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(out)
}

fn py_json(
    v: &Value,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), JinjaError> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match (i64::try_from(v.clone()), f64::try_from(v.clone())) {
            (Ok(i), _) if v.as_i64().is_some() => out.push_str(&i.to_string()),
            (_, Ok(f)) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 => {
                out.push_str(&format!("{f:.1}"))
            }
            (_, Ok(f)) => out.push_str(&f.to_string()),
            _ => out.push_str(&v.to_string()),
        },
        ValueKind::String => {
            out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).unwrap_or_default())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                py_json(x, indent, sort, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let key = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| k.to_string());
                out.push_str(&serde_json::to_string(&key).unwrap_or_default());
                out.push_str(": ");
                py_json(&v.get_item(k)?, indent, sort, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(&v.to_string()).unwrap_or_default()),
    }
    Ok(())
}

/// Where one message sits in a [`RenderedChat`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageSpan {
    /// Index of the message in [`Chat::messages`].
    pub index: usize,
    /// Its role.
    pub role: Role,
    /// Byte range of its content in [`RenderedChat::text`].
    pub chars: Range<usize>,
    /// Range of token indices overlapping that content (see the module docs for the rule).
    pub tokens: Range<usize>,
}

/// A named token position (see the module docs). Parses from / displays as
/// `user_end`, `pre_assistant`, `assistant[k]`, `prompt_last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Position {
    /// Last token of the last user message's content.
    UserEnd,
    /// Token just before the target assistant content.
    PreAssistant,
    /// First `k` tokens of the target assistant content.
    Assistant(usize),
    /// Last prompt token before generation.
    PromptLast,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::UserEnd => f.write_str("user_end"),
            Position::PreAssistant => f.write_str("pre_assistant"),
            Position::Assistant(k) => write!(f, "assistant[{k}]"),
            Position::PromptLast => f.write_str("prompt_last"),
        }
    }
}

impl FromStr for Position {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let bad = || {
            anyhow!("unknown position {s:?}: expected user_end, pre_assistant, prompt_last or assistant[k] with k >= 1")
        };
        match t {
            "user_end" => Ok(Position::UserEnd),
            "pre_assistant" => Ok(Position::PreAssistant),
            "prompt_last" => Ok(Position::PromptLast),
            _ => {
                let k = t
                    .strip_prefix("assistant[")
                    .and_then(|r| r.strip_suffix(']'))
                    .ok_or_else(bad)?;
                match k.trim().parse::<usize>() {
                    Ok(k) if k >= 1 => Ok(Position::Assistant(k)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

/// A chat rendered by its template and tokenized, with every message located in text and tokens.
#[derive(Clone, Debug)]
pub struct RenderedChat {
    /// Rendered text (HF `apply_chat_template(tokenize=False)`).
    pub text: String,
    /// Token ids of `text`, no special tokens added (HF `apply_chat_template(tokenize=True)`).
    pub ids: Vec<u32>,
    /// Byte range of each token in `text`.
    pub offsets: Vec<(usize, usize)>,
    /// Spans of the messages the template wrote, in message order.
    pub messages: Vec<MessageSpan>,
    /// Whether the chat was rendered with a generation prompt.
    pub add_generation_prompt: bool,
    /// Index into `messages` of the target assistant message (teacher forcing), if any.
    target: Option<usize>,
}

impl RenderedChat {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// True if there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Span of message `index` (its position in [`Chat::messages`]).
    pub fn message(&self, index: usize) -> Result<&MessageSpan> {
        self.messages
            .iter()
            .find(|m| m.index == index)
            .ok_or_else(|| {
                anyhow!(
                    "message {index} does not appear in the rendered chat ({} messages rendered)",
                    self.messages.len()
                )
            })
    }

    fn last_of(&self, role: Role) -> Option<&MessageSpan> {
        self.messages.iter().rev().find(|m| m.role == role)
    }

    /// Number of prompt tokens: everything before the target assistant content, else all tokens.
    fn prompt_len(&self) -> usize {
        match self.target {
            Some(t) => self.messages[t].tokens.start,
            None => self.ids.len(),
        }
    }

    /// Span of the target assistant message (teacher forcing), if the chat has one: its
    /// `tokens` are the assistant content tokens a supervised loss predicts.
    pub fn target_span(&self) -> Option<&MessageSpan> {
        self.target.map(|t| &self.messages[t])
    }

    /// The prompt's ids: tokens `0..=prompt_last` (what generation would start from).
    pub fn prompt_ids(&self) -> &[u32] {
        &self.ids[..self.prompt_len()]
    }

    /// Token indices of a named position, in increasing order.
    pub fn resolve(&self, pos: &Position) -> Result<Vec<usize>> {
        match *pos {
            Position::UserEnd => {
                let m = self
                    .last_of(Role::User)
                    .ok_or_else(|| anyhow!("user_end: the chat has no user message"))?;
                if m.tokens.is_empty() {
                    bail!(
                        "user_end: the last user message (message {}) has empty content",
                        m.index
                    );
                }
                Ok(vec![m.tokens.end - 1])
            }
            Position::PreAssistant | Position::PromptLast => {
                if *pos == Position::PreAssistant
                    && self.target.is_none()
                    && !self.add_generation_prompt
                {
                    bail!(
                        "pre_assistant: no assistant turn: render with add_generation_prompt = true or end the chat with an assistant message"
                    );
                }
                match self.prompt_len() {
                    0 => bail!("{pos}: the prompt is empty"),
                    n => Ok(vec![n - 1]),
                }
            }
            Position::Assistant(k) => {
                let t = self.target.ok_or_else(|| {
                    anyhow!("{pos}: no assistant content: end the chat with an assistant message and render without a generation prompt")
                })?;
                let m = &self.messages[t];
                if k == 0 || k > m.tokens.len() {
                    bail!("{pos}: the assistant content has {} tokens", m.tokens.len());
                }
                Ok((m.tokens.start..m.tokens.start + k).collect())
            }
        }
    }

    /// Token range overlapping the `nth` (0-based) occurrence of `needle` in the rendered text.
    pub fn span_of(&self, needle: &str, nth: usize) -> Result<Range<usize>> {
        if needle.is_empty() {
            bail!("span_of: empty substring");
        }
        let hits: Vec<usize> = self.text.match_indices(needle).map(|(p, _)| p).collect();
        let start = *hits.get(nth).ok_or_else(|| {
            anyhow!("span_of: substring {needle:?} occurs {} time(s) in the rendered chat; occurrence {nth} (0-based) requested", hits.len())
        })?;
        Ok(self.tokens_overlapping(start..start + needle.len()))
    }

    /// Token indices whose byte range overlaps `chars` (empty range: the insertion point).
    pub fn tokens_overlapping(&self, chars: Range<usize>) -> Range<usize> {
        let first = self.offsets.partition_point(|&(_, e)| e <= chars.start);
        if chars.is_empty() {
            let at = self.offsets.partition_point(|&(s, _)| s < chars.start);
            return at..at;
        }
        let end = self.offsets.partition_point(|&(s, _)| s < chars.end);
        first..end.max(first)
    }

    /// The single token index of a one-token position (`user_end`, `pre_assistant`,
    /// `prompt_last`, `assistant[1]`).
    pub fn index(&self, pos: &Position) -> Result<usize> {
        match self.resolve(pos)?.as_slice() {
            [i] => Ok(*i),
            many => bail!("{pos} covers {} tokens; use resolve()", many.len()),
        }
    }

    /// `(index, decoded token)` for each token of a position, for notebooks.
    pub fn describe(&self, pos: &Position, tok: &Tokenizer) -> Result<Vec<(usize, String)>> {
        Ok(self
            .resolve(pos)?
            .into_iter()
            .map(|i| (i, tok.token_str(self.ids[i])))
            .collect())
    }
}

impl Tokenizer {
    /// The model's chat template with this tokenizer's special tokens; errors if it has none.
    pub fn chat_template_engine(&self) -> Result<ChatTemplate> {
        let src = self.chat_template().ok_or_else(|| {
            anyhow!(
                "this tokenizer has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja, \
                 no tokenizer.chat_template in the GGUF): base models such as GPT-2 and Pythia (GPT-NeoX) have none. \
                 Prompt them with plain text (Tokenizer::encode_prompt / Model::encode_prompt), or set a template \
                 with Tokenizer::set_chat_template"
            )
        })?;
        let mut t = ChatTemplate::new(src);
        if let Some(o) = self.chat_template_origin() {
            t = t.with_origin(o);
        }
        for (name, content) in self.special_tokens() {
            t = t.with_token(name, content);
        }
        Ok(t)
    }

    /// Render `chat` to text with the model's template (HF `apply_chat_template(tokenize=False)`).
    pub fn apply_chat_template(&self, chat: &Chat, add_generation_prompt: bool) -> Result<String> {
        self.chat_template_engine()?
            .render(chat, add_generation_prompt)
    }

    /// Render and tokenize `chat`, locating every message and the named positions.
    pub fn render_chat(&self, chat: &Chat, add_generation_prompt: bool) -> Result<RenderedChat> {
        let tmpl = self.chat_template_engine()?;
        let text = tmpl.render(chat, add_generation_prompt)?;
        let spans = tmpl.locate(chat, add_generation_prompt, &text)?;
        let (ids, offsets) = self
            .encode_with_offsets(&text)
            .context("tokenizing the rendered chat")?;
        let mut r = RenderedChat {
            text,
            ids,
            offsets,
            messages: Vec::new(),
            add_generation_prompt,
            target: None,
        };
        for (i, span) in spans.into_iter().enumerate() {
            if let Some(chars) = span {
                let tokens = r.tokens_overlapping(chars.clone());
                r.messages.push(MessageSpan {
                    index: i,
                    role: chat.messages[i].role,
                    chars,
                    tokens,
                });
            }
        }
        let last = chat.messages.len().checked_sub(1);
        if !add_generation_prompt && last.is_some_and(|l| chat.messages[l].role == Role::Assistant)
        {
            let l = last.unwrap_or_default();
            let t = r.messages.iter().position(|m| m.index == l);
            if t.is_none() {
                bail!("the final assistant message does not appear in the chat rendered by the {}", tmpl.what());
            }
            r.target = t;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_date() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        assert_eq!(
            strftime(
                "%d %b %Y %H:%M:%S %A %B %y %%",
                1_722_000_000 - 1_722_000_000 % 86_400 + 47_109
            ),
            "26 Jul 2024 13:05:09 Friday July 24 %"
        );
    }

    #[test]
    fn position_round_trip() {
        for s in ["user_end", "pre_assistant", "prompt_last", "assistant[3]"] {
            assert_eq!(s.parse::<Position>().unwrap().to_string(), s);
        }
        assert!("assistant[0]".parse::<Position>().is_err());
    }
}
