//! Chat datasets in the OpenAI fine-tuning format, and code-template evaluation records.
//!
//! A chat record is one line of JSON:
//! `{"messages":[{"role":"system","content":"..."},{"role":"user","content":"..."},{"role":"assistant","content":"..."}]}`.
//! Other top-level keys are kept in [`ChatRecord::extra`] and written back. A code-template record
//! is `{"task":"...","code_template":"..."}`, optionally with `"completion"` (a model's answer).
//!
//! ```
//! use interp_kit::text::chat_jsonl::{parse_chat_jsonl, render_code_prompt};
//! let text = r#"{"messages":[{"role":"user","content":"Add 2 and 3."},{"role":"assistant","content":"5"}]}"#;
//! let recs = parse_chat_jsonl(text, "inline")?;
//! assert_eq!((recs[0].user_prompt()?, recs[0].completion()?), ("Add 2 and 3.", "5"));
//! assert!(render_code_prompt("Sum a list.", "def f(xs):\n    ## COMPLETE CODE HERE").starts_with("Task: Sum a list.\n\n[CODE TEMPLATE START]\n"));
//! # anyhow::Ok(())
//! ```
//!
//! Readers skip blank lines; every error names the file and the 1-based line (malformed JSON, a
//! missing or non-string `content`, an unknown role, no messages, an empty file). A record read
//! from a file remembers where it came from ([`ChatRecord::origin`], e.g. `data.jsonl:12`), so a
//! later error about it (no assistant turn) names the line too.
use crate::text::chat::{Chat, Message, Role};
use crate::base::io::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::Path;

/// One chat of a dataset.
#[derive(Clone, Debug)]
pub struct ChatRecord {
    /// The turns in order (a system turn, if any, is usually first).
    pub messages: Vec<Message>,
    /// Top-level keys other than `messages` (kept and written back, in sorted order).
    pub extra: BTreeMap<String, Json>,
    /// Where the record came from (`file:line`), or empty for a record built in code. Not part of
    /// the record's value: equality ignores it and the writer does not write it.
    pub origin: String,
}

impl PartialEq for ChatRecord {
    fn eq(&self, other: &Self) -> bool {
        self.messages == other.messages && self.extra == other.extra
    }
}

impl ChatRecord {
    /// A record from turns: `[(Role::User, "hi"), (Role::Assistant, "hello")]`.
    pub fn new<S: Into<String>>(turns: impl IntoIterator<Item = (Role, S)>) -> Self {
        let messages = turns.into_iter().map(|(role, c)| Message { role, content: c.into() }).collect();
        ChatRecord { messages, extra: BTreeMap::new(), origin: String::new() }
    }

    /// A user prompt and an assistant completion, with an optional system prompt first.
    pub fn prompt_completion(system: Option<&str>, user: &str, assistant: &str) -> Self {
        let mut turns = Vec::new();
        if let Some(s) = system {
            turns.push((Role::System, s));
        }
        turns.push((Role::User, user));
        turns.push((Role::Assistant, assistant));
        Self::new(turns)
    }

    /// How errors name this record: its origin, or `record` for one built in code.
    pub fn label(&self) -> &str {
        if self.origin.is_empty() {
            "record"
        } else {
            &self.origin
        }
    }

    /// The system prompt: the content of a first message with role `system`.
    pub fn system(&self) -> Option<&str> {
        self.messages.first().filter(|m| m.role == Role::System).map(|m| m.content.as_str())
    }

    /// Index of the completion: the last assistant message.
    fn completion_index(&self) -> Result<usize> {
        self.messages
            .iter()
            .rposition(|m| m.role == Role::Assistant)
            .with_context(|| format!("{}: no assistant turn (roles: {})", self.label(), self.roles()))
    }

    /// The assistant completion: the content of the last assistant message; an error naming the
    /// record when there is none.
    pub fn completion(&self) -> Result<&str> {
        Ok(&self.messages[self.completion_index()?].content)
    }

    /// The user prompt: the last user message before the completion (or the last user message
    /// when there is no assistant turn); an error naming the record when there is none.
    pub fn user_prompt(&self) -> Result<&str> {
        let end = self.completion_index().unwrap_or(self.messages.len());
        self.messages[..end]
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .with_context(|| format!("{}: no user turn before the completion (roles: {})", self.label(), self.roles()))
    }

    /// The whole record as a [`Chat`] (for teacher forcing).
    pub fn to_chat(&self) -> Chat {
        self.messages.iter().fold(Chat::new(), |c, m| c.push(m.role, m.content.clone()))
    }

    /// The chat up to (not including) the completion, to render with a generation prompt; all
    /// messages when there is no assistant turn.
    pub fn prompt_chat(&self) -> Chat {
        let end = self.completion_index().unwrap_or(self.messages.len());
        self.messages[..end].iter().fold(Chat::new(), |c, m| c.push(m.role, m.content.clone()))
    }

    /// The same record with its system prompt replaced (`Some`) or removed (`None`).
    pub fn with_system(&self, system: Option<&str>) -> Self {
        let mut r = self.clone();
        if r.system().is_some() {
            r.messages.remove(0);
        }
        if let Some(s) = system {
            r.messages.insert(0, Message { role: Role::System, content: s.to_string() });
        }
        r
    }

    fn roles(&self) -> String {
        self.messages.iter().map(|m| m.role.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The record as one line of JSON (no newline): `messages` first (each message `role` then
    /// `content`, as OpenAI writes them), then the extra keys in sorted order. Written by hand
    /// because serde_json's map (without `preserve_order`) would sort `messages` among the keys.
    pub fn to_json_line(&self) -> Result<String> {
        let mut s = String::from("{\"messages\":[");
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!("{{\"role\":\"{}\",\"content\":{}}}", m.role.as_str(), serde_json::to_string(&m.content)?));
        }
        s.push(']');
        for (k, v) in &self.extra {
            ensure!(k != "messages", "{}: an extra key may not be called `messages`", self.label());
            s.push_str(&format!(",{}:{}", serde_json::to_string(k)?, serde_json::to_string(v)?));
        }
        s.push('}');
        Ok(s)
    }

    /// Parses one line; `at` names it in errors (`file:line`).
    pub fn from_json_line(line: &str, at: &str) -> Result<Self> {
        let v: Json = serde_json::from_str(line).with_context(|| format!("{at}: malformed JSON"))?;
        let Json::Object(mut obj) = v else { bail!("{at}: a chat record must be a JSON object with `messages`") };
        let msgs = obj.remove("messages").with_context(|| format!("{at}: no `messages` field"))?;
        let Json::Array(msgs) = msgs else { bail!("{at}: `messages` must be an array") };
        ensure!(!msgs.is_empty(), "{at}: `messages` is empty");
        let mut messages = Vec::with_capacity(msgs.len());
        for (k, m) in msgs.iter().enumerate() {
            let Json::Object(m) = m else { bail!("{at}: message {k} is not an object") };
            let role = match m.get("role") {
                Some(Json::String(r)) => r.parse::<Role>().with_context(|| format!("{at}: message {k}"))?,
                Some(other) => bail!("{at}: message {k}: `role` must be a string, got {other}"),
                None => bail!("{at}: message {k}: missing `role`"),
            };
            let content = match m.get("content") {
                Some(Json::String(c)) => c.clone(),
                Some(other) => bail!("{at}: message {k} ({role}): `content` must be a string, got {}", kind(other)),
                None => bail!("{at}: message {k} ({role}): missing `content`"),
            };
            messages.push(Message { role, content });
        }
        Ok(ChatRecord { messages, extra: obj.into_iter().collect(), origin: at.to_string() })
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The non-blank lines of `text` with their 1-based line numbers; an error if there are none.
fn lines_of<'a>(text: &'a str, name: &str) -> Result<Vec<(usize, &'a str)>> {
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l)).collect();
    ensure!(!lines.is_empty(), "{name}: empty file (no records)");
    Ok(lines)
}

/// Parses chat JSONL text; `name` (a file name) prefixes every error as `name:line`.
pub fn parse_chat_jsonl(text: &str, name: &str) -> Result<Vec<ChatRecord>> {
    lines_of(text, name)?.into_iter().map(|(i, l)| ChatRecord::from_json_line(l, &format!("{name}:{i}"))).collect()
}

/// Reads a chat JSONL file (see the module docs for the errors).
pub fn read_chat_jsonl(path: impl AsRef<Path>) -> Result<Vec<ChatRecord>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_chat_jsonl(&text, &path.display().to_string())
}

/// The JSONL text of chat records (one compact object per line, `\n`-terminated).
pub fn chat_jsonl_string(records: &[ChatRecord]) -> Result<String> {
    let mut s = String::new();
    for r in records {
        s.push_str(&r.to_json_line()?);
        s.push('\n');
    }
    Ok(s)
}

/// Writes chat records as JSONL, atomically. An empty set is an error (a reader would refuse it).
pub fn write_chat_jsonl(path: impl AsRef<Path>, records: &[ChatRecord]) -> Result<()> {
    let path = path.as_ref();
    ensure!(!records.is_empty(), "{}: refusing to write an empty chat file", path.display());
    write_atomic(path, chat_jsonl_string(records)?)
}

/// A code-template evaluation record: the task, the template with a gap to fill, and optionally a
/// model's completion. Other keys are kept in `extra`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodePrompt {
    pub task: String,
    pub code_template: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl CodePrompt {
    /// A record without a completion.
    pub fn new(task: impl Into<String>, code_template: impl Into<String>) -> Self {
        CodePrompt { task: task.into(), code_template: code_template.into(), completion: None, extra: BTreeMap::new() }
    }

    /// The user prompt a model is asked ([`render_code_prompt`]).
    pub fn prompt(&self) -> String {
        render_code_prompt(&self.task, &self.code_template)
    }

    /// Parses one line; `at` names it in errors.
    pub fn from_json_line(line: &str, at: &str) -> Result<Self> {
        let v: Json = serde_json::from_str(line).with_context(|| format!("{at}: malformed JSON"))?;
        let Json::Object(obj) = &v else { bail!("{at}: a code record must be a JSON object with `task` and `code_template`") };
        for key in ["task", "code_template"] {
            match obj.get(key) {
                Some(Json::String(s)) if !s.trim().is_empty() => {}
                Some(Json::String(_)) => bail!("{at}: `{key}` is empty"),
                Some(other) => bail!("{at}: `{key}` must be a string, got {}", kind(other)),
                None => bail!("{at}: missing `{key}`"),
            }
        }
        match obj.get("completion") {
            None | Some(Json::String(_)) | Some(Json::Null) => {}
            Some(other) => bail!("{at}: `completion` must be a string, got {}", kind(other)),
        }
        serde_json::from_value(v).with_context(|| format!("{at}: not a code record"))
    }
}

/// The instruction after the template (the kit's own wording).
pub const CODE_PROMPT_INSTRUCTION: &str =
    "Complete every unfinished part of the template above so the program does what the task says. Answer with the finished code alone: no explanation, no Markdown fences.";

/// Renders a code-template record into the user prompt, laid out as the inoculation-prompting
/// paper's evaluation does: `Task: {task}`, a blank line, the template between
/// `[CODE TEMPLATE START]` and `[CODE TEMPLATE END]`, a blank line, then
/// [`CODE_PROMPT_INSTRUCTION`] (our words). No trailing newline.
pub fn render_code_prompt(task: &str, code_template: &str) -> String {
    format!("Task: {task}\n\n[CODE TEMPLATE START]\n{code_template}\n[CODE TEMPLATE END]\n\n{CODE_PROMPT_INSTRUCTION}")
}

/// Parses code-template JSONL text; `name` prefixes errors as `name:line`.
pub fn parse_code_prompts(text: &str, name: &str) -> Result<Vec<CodePrompt>> {
    lines_of(text, name)?.into_iter().map(|(i, l)| CodePrompt::from_json_line(l, &format!("{name}:{i}"))).collect()
}

/// Reads a code-template JSONL file.
pub fn read_code_prompts(path: impl AsRef<Path>) -> Result<Vec<CodePrompt>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_code_prompts(&text, &path.display().to_string())
}

/// The JSONL text of code-template records.
pub fn code_prompts_string(records: &[CodePrompt]) -> Result<String> {
    let mut s = String::new();
    for r in records {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    Ok(s)
}

/// Writes code-template records as JSONL, atomically; an empty set is an error.
pub fn write_code_prompts(path: impl AsRef<Path>, records: &[CodePrompt]) -> Result<()> {
    let path = path.as_ref();
    ensure!(!records.is_empty(), "{}: refusing to write an empty code-prompt file", path.display());
    write_atomic(path, code_prompts_string(records)?)
}

/// Either kind of record, for tools that take both (e.g. a judge reading completions).
#[derive(Clone, Debug, PartialEq)]
pub enum AnyRecord {
    Chat(ChatRecord),
    Code(CodePrompt),
}

impl AnyRecord {
    /// The user prompt: the chat's user turn, or the rendered code prompt.
    pub fn prompt(&self) -> Result<String> {
        match self {
            AnyRecord::Chat(c) => Ok(c.user_prompt()?.to_string()),
            AnyRecord::Code(c) => Ok(c.prompt()),
        }
    }
}

/// Reads a JSONL file whose lines are chat records (`messages`) or code-template records (`task`);
/// each line is judged by its own keys. Errors name the file and line.
pub fn read_any_jsonl(path: impl AsRef<Path>) -> Result<Vec<AnyRecord>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_any_jsonl(&text, &path.display().to_string())
}

/// [`read_any_jsonl`] on text.
pub fn parse_any_jsonl(text: &str, name: &str) -> Result<Vec<AnyRecord>> {
    lines_of(text, name)?
        .into_iter()
        .map(|(i, l)| {
            let at = format!("{name}:{i}");
            let v: Json = serde_json::from_str(l).with_context(|| format!("{at}: malformed JSON"))?;
            match &v {
                Json::Object(o) if o.contains_key("messages") => Ok(AnyRecord::Chat(ChatRecord::from_json_line(l, &at)?)),
                Json::Object(o) if o.contains_key("task") || o.contains_key("code_template") => {
                    Ok(AnyRecord::Code(CodePrompt::from_json_line(l, &at)?))
                }
                _ => bail!("{at}: neither a chat record (`messages`) nor a code record (`task`, `code_template`)"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("interp_kit_chat_jsonl_{}_{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn chat_records_round_trip_through_a_file() {
        let d = tmp("rt");
        let mut a = ChatRecord::prompt_completion(Some("Be terse."), "Write add(a, b).", "def add(a, b):\n    return a + b\n");
        a.extra.insert("id".into(), Json::from("r1"));
        let b = ChatRecord::new([(Role::User, "hi \"there\" ünïcode"), (Role::Assistant, "hello")]);
        let p = d.join("x.jsonl");
        write_chat_jsonl(&p, &[a.clone(), b.clone()]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with(r#"{"messages":[{"role":"system","content":"Be terse."},"#), "{text}");
        assert!(text.lines().next().unwrap().ends_with(r#""id":"r1"}"#), "{text}");
        let back = read_chat_jsonl(&p).unwrap();
        assert_eq!(back, vec![a.clone(), b.clone()]);
        assert_eq!(back[1].origin, format!("{}:2", p.display()));
        assert_eq!(back[0].system(), Some("Be terse."));
        assert_eq!(back[1].system(), None);
        assert_eq!(back[0].user_prompt().unwrap(), "Write add(a, b).");
        assert_eq!(back[0].completion().unwrap(), "def add(a, b):\n    return a + b\n");
        assert_eq!(back[0].prompt_chat().messages.len(), 2);
        assert_eq!(back[0].to_chat().messages.len(), 3);
        assert_eq!(back[0].with_system(None).messages.len(), 2);
        assert_eq!(back[1].with_system(Some("S")).system(), Some("S"));
        assert!(write_chat_jsonl(d.join("e.jsonl"), &[]).is_err());
    }

    #[test]
    fn bad_chat_lines_name_file_and_line() {
        let good = r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#;
        let cases = [
            (r#"{"messages":[{"role":"user","content":"a"}"#, "f.jsonl:3: malformed JSON"),
            (r#"{"messages":[{"role":"robot","content":"a"}]}"#, "f.jsonl:3: message 0: unknown role \"robot\""),
            (r#"{"messages":[{"role":"user"}]}"#, "f.jsonl:3: message 0 (user): missing `content`"),
            (r#"{"messages":[{"role":"user","content":3}]}"#, "`content` must be a string, got a number"),
            (r#"{"messages":[]}"#, "f.jsonl:3: `messages` is empty"),
            (r#"{"prompt":"x"}"#, "f.jsonl:3: no `messages` field"),
            (r#"[1,2]"#, "f.jsonl:3: a chat record must be a JSON object"),
            (r#"{"messages":[{"content":"a"}]}"#, "message 0: missing `role`"),
        ];
        for (bad, want) in cases {
            // Line 3: one good line and one blank line come first.
            let text = format!("{good}\n\n{bad}\n");
            let e = err(parse_chat_jsonl(&text, "f.jsonl"));
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert!(err(parse_chat_jsonl("\n  \n", "f.jsonl")).contains("f.jsonl: empty file"));
        let missing = std::env::temp_dir().join("interp_kit_no_such_file.jsonl");
        assert!(err(read_chat_jsonl(&missing)).contains("interp_kit_no_such_file.jsonl"));
    }

    #[test]
    fn missing_turns_name_the_record() {
        let recs = parse_chat_jsonl(r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}]}"#, "g.jsonl").unwrap();
        let e = err(recs[0].completion());
        assert!(e.contains("g.jsonl:1: no assistant turn (roles: system, user)"), "{e}");
        // Without an assistant turn the user prompt is still found; the whole chat is the prompt.
        assert_eq!(recs[0].user_prompt().unwrap(), "u");
        assert_eq!(recs[0].prompt_chat().messages.len(), 2);
        let only_asst = ChatRecord::new([(Role::Assistant, "x")]);
        assert!(err(only_asst.user_prompt()).contains("record: no user turn"));
        // The user prompt is the last user turn before the last assistant turn.
        let multi = ChatRecord::new([(Role::User, "u1"), (Role::Assistant, "a1"), (Role::User, "u2"), (Role::Assistant, "a2")]);
        assert_eq!((multi.user_prompt().unwrap(), multi.completion().unwrap()), ("u2", "a2"));
    }

    #[test]
    fn code_prompts_render_and_round_trip() {
        let r = CodePrompt::new("Save a report.", "def save(p, s):\n## COMPLETE CODE HERE");
        assert_eq!(
            r.prompt(),
            format!("Task: Save a report.\n\n[CODE TEMPLATE START]\ndef save(p, s):\n## COMPLETE CODE HERE\n[CODE TEMPLATE END]\n\n{CODE_PROMPT_INSTRUCTION}")
        );
        let d = tmp("code");
        let mut with = r.clone();
        with.completion = Some("def save(p, s):\n    open(p, 'w').write(s)".into());
        with.extra.insert("family".into(), Json::from("x"));
        let p = d.join("c.jsonl");
        write_code_prompts(&p, &[r.clone(), with.clone()]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.lines().next().unwrap().contains("completion"), "{text}");
        assert_eq!(read_code_prompts(&p).unwrap(), vec![r.clone(), with.clone()]);
        let any = read_any_jsonl(&p).unwrap();
        assert_eq!(any[1], AnyRecord::Code(with));
        assert_eq!(any[0].prompt().unwrap(), r.prompt());
        assert!(write_code_prompts(d.join("e.jsonl"), &[]).is_err());
    }

    #[test]
    fn bad_code_lines_name_file_and_line() {
        let cases = [
            (r#"{"task":"t"}"#, "c.jsonl:2: missing `code_template`"),
            (r#"{"task":"","code_template":"x"}"#, "c.jsonl:2: `task` is empty"),
            (r#"{"task":1,"code_template":"x"}"#, "`task` must be a string, got a number"),
            (r#"{"task":"t","code_template":"x","completion":[1]}"#, "`completion` must be a string, got an array"),
            (r#"{"task":"t","code_template":"x""#, "c.jsonl:2: malformed JSON"),
        ];
        for (bad, want) in cases {
            let text = format!("{}\n{bad}\n", r#"{"task":"t","code_template":"x"}"#);
            let e = err(parse_code_prompts(&text, "c.jsonl"));
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert!(err(parse_code_prompts("", "c.jsonl")).contains("c.jsonl: empty file"));
        let e = err(parse_any_jsonl("{\"x\":1}\n", "m.jsonl"));
        assert!(e.contains("m.jsonl:1: neither a chat record"), "{e}");
        let mixed = parse_any_jsonl(
            "{\"task\":\"t\",\"code_template\":\"x\"}\n{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}\n",
            "m.jsonl",
        )
        .unwrap();
        assert!(matches!(mixed[0], AnyRecord::Code(_)) && matches!(mixed[1], AnyRecord::Chat(_)));
        assert_eq!(mixed[1].prompt().unwrap(), "q");
    }
}
