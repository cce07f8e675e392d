//! Chat templates, tokenizers and named positions against fixtures made by Hugging Face
//! transformers (scripts/make_chat_fixtures.py; tests/fixtures/chat/<family>/cases.json).

use anyhow::Result;
use interp_kit::text::chat::{Chat, ChatTemplate, Position, RenderedChat, Role};
use interp_kit::text::tokenizer::Tokenizer;
use serde::Deserialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Fixture {
    family: String,
    template: String,
    special_tokens: BTreeMap<String, String>,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    cases: Vec<Case>,
    /// Plain `tokenizer(text, add_special_tokens=False)` results for tricky text.
    encode: Vec<Encoded>,
}

#[derive(Deserialize)]
struct Encoded {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Msg {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<Msg>,
    add_generation_prompt: bool,
    vars: BTreeMap<String, Json>,
    text: Option<String>,
    ids: Option<Vec<u32>>,
    error: Option<String>,
    #[serde(default)]
    positions: BTreeMap<String, Json>,
    #[serde(default)]
    decoded: BTreeMap<String, Vec<String>>,
}

impl Case {
    fn chat(&self) -> Chat {
        let mut chat = Chat::new();
        for m in &self.messages {
            chat = chat.push(m.role.parse().expect("fixture role"), m.content.clone());
        }
        for (k, v) in &self.vars {
            chat = chat.var(k.clone(), v.clone());
        }
        chat
    }
    fn last_content(&self, role: &str) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == role)
            .map(|m| m.content.as_str())
    }
}

fn fixture_dir(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/chat")
        .join(family)
}

fn load(family: &str) -> Fixture {
    let path = fixture_dir(family).join("cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f: Fixture =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(f.family, family);
    f
}

const FAMILIES: [&str; 4] = ["qwen2.5", "qwen3", "llama3", "gemma2"];

fn cache_dir() -> PathBuf {
    std::env::var_os("INTERP_KIT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/interp_kit")
        })
}

fn gguf_path() -> PathBuf {
    cache_dir().join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

/// Template text only (no tokenizer needed): every family, every case, including expected errors.
#[test]
fn template_text_matches_hf() {
    for family in FAMILIES {
        let f = load(family);
        let mut tmpl = ChatTemplate::new(f.template.clone());
        for (k, v) in &f.special_tokens {
            tmpl = tmpl.with_token(k, v);
        }
        for case in &f.cases {
            let got = tmpl.render(&case.chat(), case.add_generation_prompt);
            match (&case.text, &case.error) {
                (Some(want), _) => assert_eq!(&got.unwrap(), want, "{family}/{}", case.name),
                (None, Some(err)) => {
                    let msg = format!("{:#}", got.expect_err("template should raise"));
                    assert!(msg.contains(err), "{family}/{}: {msg}", case.name);
                }
                _ => panic!("{family}/{}: fixture has neither text nor error", case.name),
            }
        }
    }
}

/// Ids, BOS count, named positions (indices and decoded tokens) and prompt_ids for one family.
fn check_family(tok: &Tokenizer, f: &Fixture, check_meta: bool) {
    let family = &f.family;
    if check_meta {
        assert_eq!(tok.bos_id(), f.bos_id, "{family}: bos_id");
        assert_eq!(tok.eos_ids(), &f.eos_ids[..], "{family}: eos_ids");
        assert_eq!(
            tok.chat_template(),
            Some(f.template.as_str()),
            "{family}: template"
        );
    }
    for e in &f.encode {
        assert_eq!(
            tok.encode(&e.text).unwrap(),
            e.ids,
            "{family}: encode {:?}",
            e.text
        );
        assert_eq!(
            tok.decode(&e.ids, false).unwrap(),
            e.text,
            "{family}: decode {:?}",
            e.text
        );
    }
    for case in &f.cases {
        let tag = format!("{family}/{}", case.name);
        let chat = case.chat();
        let (Some(text), Some(ids)) = (&case.text, &case.ids) else {
            let err = tok
                .render_chat(&chat, case.add_generation_prompt)
                .expect_err(&tag);
            assert!(
                format!("{err:#}").contains(case.error.as_deref().unwrap_or("?")),
                "{tag}: {err:#}"
            );
            continue;
        };
        let r = tok
            .render_chat(&chat, case.add_generation_prompt)
            .unwrap_or_else(|e| panic!("{tag}: {e:#}"));
        assert_eq!(&r.text, text, "{tag}: text");
        assert_eq!(&r.ids, ids, "{tag}: ids");
        assert_eq!(&tok.encode(text).unwrap(), ids, "{tag}: encode(text)");
        assert_eq!(r.offsets.len(), r.ids.len());

        // Exactly one BOS when the template writes it (Llama-3 `<|begin_of_text|>`, Gemma `{{ bos_token }}`).
        if let Some(bos) = tok.bos_id() {
            assert_eq!(
                r.ids.iter().filter(|&&i| i == bos).count(),
                1,
                "{tag}: BOS count"
            );
            assert_eq!(r.ids[0], bos, "{tag}: BOS first");
        }

        // Named positions: same indices as the independent Python computation, same decoded tokens.
        for (name, want) in &case.positions {
            let pos: Position = name.parse().unwrap();
            let want: Vec<usize> = match want {
                Json::Array(xs) => xs.iter().map(|x| x.as_u64().unwrap() as usize).collect(),
                x => vec![x.as_u64().unwrap() as usize],
            };
            assert_eq!(r.resolve(&pos).unwrap(), want, "{tag}: {name}");
            let described: Vec<String> = r
                .describe(&pos, tok)
                .unwrap()
                .into_iter()
                .map(|(_, s)| s)
                .collect();
            assert_eq!(&described, &case.decoded[name], "{tag}: decoded {name}");
        }
        check_semantics(&r, tok, case, &tag);
    }
}

/// What the positions mean, checked on decoded text.
fn check_semantics(r: &RenderedChat, tok: &Tokenizer, case: &Case, tag: &str) {
    if let Some(user) = case.last_content("user") {
        let (_, last) = &r.describe(&Position::UserEnd, tok).unwrap()[0];
        assert!(
            user.trim_end().ends_with(last.trim()) && user.contains(last.trim()),
            "{tag}: user_end {last:?}"
        );
    }
    let prompt = tok.decode(r.prompt_ids(), false).unwrap();
    assert!(
        r.text.starts_with(&prompt),
        "{tag}: prompt_ids decode to a prefix"
    );
    let last = r.index(&Position::PromptLast).unwrap();
    assert_eq!(last + 1, r.prompt_ids().len());
    if case.add_generation_prompt {
        assert_eq!(
            prompt, r.text,
            "{tag}: with a generation prompt the whole text is prompt"
        );
        assert_eq!(r.index(&Position::PreAssistant).unwrap(), r.len() - 1);
        assert!(
            r.resolve(&Position::Assistant(1)).is_err(),
            "{tag}: no assistant content yet"
        );
    } else if case.messages.last().map(|m| m.role.as_str()) == Some("assistant") {
        // Teacher forcing: the prompt ends exactly where the assistant content begins, and
        // assistant[k] decodes to the start of that content.
        let content = case.last_content("assistant").unwrap().trim();
        assert!(
            r.text[prompt.len()..].starts_with(content),
            "{tag}: prompt/content boundary"
        );
        let first3: Vec<u32> = r
            .resolve(&Position::Assistant(3))
            .unwrap()
            .iter()
            .map(|&i| r.ids[i])
            .collect();
        let head = tok.decode(&first3, false).unwrap();
        assert!(
            content.starts_with(&head) && head.len() >= 3,
            "{tag}: assistant[3] = {head:?}"
        );
        assert_eq!(r.index(&Position::PreAssistant).unwrap(), last);
        let span = r.messages.last().unwrap();
        assert_eq!(
            (span.role, span.index),
            (Role::Assistant, case.messages.len() - 1)
        );
        assert_eq!(&r.text[span.chars.clone()], content);
    }
    // Message spans decode back to their content.
    for span in &r.messages {
        let want = case.messages[span.index].content.as_str();
        assert!(
            want.contains(&r.text[span.chars.clone()]),
            "{tag}: span {}",
            span.index
        );
        let dec = tok.decode(&r.ids[span.tokens.clone()], false).unwrap();
        assert!(
            dec.contains(r.text[span.chars.clone()].trim()),
            "{tag}: tokens of message {} decode to {dec:?}",
            span.index
        );
    }
}

#[test]
fn hf_dir_tokenizers_match_hf() {
    for family in ["qwen3", "llama3", "gemma2"] {
        let f = load(family);
        let tok = Tokenizer::from_hf_dir(&fixture_dir(family)).unwrap();
        check_family(&tok, &f, true);
        // The full (unpruned) tokenizer the fixtures were made with, when the script's cache is here.
        let full = cache_dir().join("chat_tokenizers").join(family);
        if full.join("tokenizer.json").is_file() {
            let tok = Tokenizer::from_hf_dir(&full).unwrap();
            check_family(&tok, &f, true);
        } else {
            println!("{family}: full tokenizer not cached at {} (run scripts/make_chat_fixtures.py); pruned one checked", full.display());
        }
    }
}

#[test]
fn gguf_tokenizer_matches_hf() {
    let path = gguf_path();
    if !path.is_file() {
        println!(
            "SKIP gguf_tokenizer_matches_hf: {} absent (scripts/fetch_model.sh)",
            path.display()
        );
        return;
    }
    let tok = Tokenizer::from_gguf_file(&path).unwrap();
    let f = load("qwen2.5");
    check_family(&tok, &f, true);
    assert_eq!(tok.vocab_size(), 151_936);

    // Fixes over candle's builder: user-defined tokens are not special, unused padding entries are
    // not matched as tokens (both as HF does).
    let tool_call = tok.token_id("<tool_call>").unwrap();
    assert_eq!(tok.decode(&[tool_call], true).unwrap(), "<tool_call>");
    assert_eq!(
        tok.decode(&[tok.token_id("<|im_end|>").unwrap()], true)
            .unwrap(),
        ""
    );
    let ids = tok.encode("x[PAD151665]<tool_call>").unwrap();
    assert!(
        !ids.contains(&151_665) && ids.ends_with(&[tool_call]),
        "{ids:?}"
    );
    assert_eq!(tok.decode(&ids, false).unwrap(), "x[PAD151665]<tool_call>");
}

#[test]
fn substring_spans_decode_back() {
    let tok = Tokenizer::from_hf_dir(&fixture_dir("llama3")).unwrap();
    let chat = Chat::new()
        .user("What is the capital of France?")
        .assistant("The capital of France is Paris.");
    let r = tok.render_chat(&chat, false).unwrap();
    for (needle, nth) in [
        ("capital of France", 0),
        ("capital of France", 1),
        ("Paris", 0),
        ("<|eot_id|>", 1),
    ] {
        let span = r.span_of(needle, nth).unwrap();
        let dec = tok.decode(&r.ids[span.clone()], false).unwrap();
        assert_eq!(dec.trim(), needle, "{needle} #{nth} -> {span:?}");
    }
    // The second occurrence lies in the assistant message.
    let a = r.message(1).unwrap();
    assert!(a
        .tokens
        .contains(&r.span_of("capital of France", 1).unwrap().start));
    let err = r.span_of("capital of France", 2).unwrap_err().to_string();
    assert!(
        err.contains("capital of France") && err.contains("2 time"),
        "{err}"
    );
}

#[test]
fn bad_input_errors_name_the_problem() {
    for bad in ["user-end", "assistant[0]", "assistant[x]", "assistant", ""] {
        let err = bad.parse::<Position>().unwrap_err().to_string();
        assert!(
            err.contains(&format!("{bad:?}")) && err.contains("user_end"),
            "{err}"
        );
    }
    assert!("tool"
        .parse::<Role>()
        .unwrap_err()
        .to_string()
        .contains("tool"));

    let mut tok = Tokenizer::from_hf_dir(&fixture_dir("qwen3")).unwrap();
    let chat = Chat::new().user("Hello there.");
    let r = tok.render_chat(&chat, false).unwrap();
    let err = r.span_of("Goodbye", 0).unwrap_err().to_string();
    assert!(err.contains("Goodbye") && err.contains("0 time"), "{err}");
    let err = r.resolve(&Position::PreAssistant).unwrap_err().to_string();
    assert!(
        err.contains("pre_assistant") && err.contains("no assistant turn"),
        "{err}"
    );
    let err = r.resolve(&Position::Assistant(2)).unwrap_err().to_string();
    assert!(err.contains("assistant[2]"), "{err}");
    let err = tok
        .render_chat(&Chat::new().system("only a system prompt"), true)
        .unwrap()
        .resolve(&Position::UserEnd)
        .unwrap_err();
    assert!(err.to_string().contains("no user message"), "{err}");
    let r = tok
        .render_chat(
            &Chat::new().user("Hi").assistant("Hello there, friend."),
            false,
        )
        .unwrap();
    assert!(r
        .resolve(&Position::Assistant(99))
        .unwrap_err()
        .to_string()
        .contains("tokens"));
    assert!(tok
        .decode(&[4_000_000], false)
        .unwrap_err()
        .to_string()
        .contains("4000000"));
    assert_eq!(tok.token_str(4_000_000), "<unknown id 4000000>");

    // Qwen3 rebuilds `<think>..</think>` in an assistant content: found when the rebuilt text is
    // verbatim the content, else an error naming the message.
    let verbatim = "<think>\nhmm\n</think>\n\nHello!";
    let r = tok
        .render_chat(&Chat::new().user("Hi").assistant(verbatim), false)
        .unwrap();
    assert_eq!(&r.text[r.message(1).unwrap().chars.clone()], verbatim);
    let thinking = Chat::new().user("Hi").assistant("<think>hmm</think>Hello!");
    let err = format!("{:#}", tok.render_chat(&thinking, false).unwrap_err());
    assert!(err.contains("message 1 (assistant)"), "{err}");
    assert!(tok.apply_chat_template(&thinking, false).is_ok());

    tok.set_chat_template(None);
    let err = format!("{:#}", tok.render_chat(&chat, true).unwrap_err());
    assert!(err.contains("no chat template"), "{err}");

    let err = format!(
        "{:#}",
        ChatTemplate::new("{% if %}")
            .render(&chat, true)
            .unwrap_err()
    );
    assert!(err.contains("does not compile"), "{err}");
    let err = format!(
        "{:#}",
        ChatTemplate::new("{{ raise_exception('Only user turns') }}")
            .render(&chat, true)
            .unwrap_err()
    );
    assert!(err.contains("Only user turns"), "{err}");

    let missing = Path::new("/nonexistent/interp_kit_model");
    let err = format!("{:#}", Tokenizer::from_hf_dir(missing).unwrap_err());
    assert!(
        err.contains("/nonexistent/interp_kit_model/tokenizer.json"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        Tokenizer::from_gguf_file(&missing.join("m.gguf")).unwrap_err()
    );
    assert!(err.contains("m.gguf"), "{err}");
}

/// Config variants HF accepts: chat_template as a list of {name, template}, AddedToken dicts for
/// special tokens, chat_template.jinja taking precedence, generation_config eos as an int;
/// and malformed files error with the file's name.
#[test]
fn hf_dir_config_variants() -> Result<()> {
    let src = fixture_dir("gemma2");
    let dir = std::env::temp_dir().join(format!("interp_kit_chat_cfg_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json"))?;
    let f = load("gemma2");
    let cfg = serde_json::json!({
        "add_bos_token": true,
        "bos_token": {"content": "<bos>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
        "eos_token": {"content": "<eos>", "special": true},
        "chat_template": [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": f.template}],
    });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string())?;
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": 107}"#,
    )?;
    let tok = Tokenizer::from_hf_dir(&dir)?;
    assert_eq!(tok.bos_id(), Some(2));
    assert_eq!(tok.eos_ids(), &[1, 107]);
    assert_eq!(tok.chat_template(), Some(f.template.as_str()));
    let case = f
        .cases
        .iter()
        .find(|c| c.name == "all_caps_assistant")
        .unwrap();
    let r = tok.render_chat(&case.chat(), false)?;
    assert_eq!(Some(&r.ids), case.ids.as_ref());

    // Without add_bos_token, BOS is used iff the post-processor prepends it (Gemma's does).
    let no_flag = serde_json::json!({"bos_token": "<bos>", "eos_token": "<eos>"});
    std::fs::write(dir.join("tokenizer_config.json"), no_flag.to_string())?;
    assert_eq!(Tokenizer::from_hf_dir(&dir)?.bos_id(), Some(2));
    std::fs::copy(
        fixture_dir("llama3").join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )?;
    let no_flag = serde_json::json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"});
    std::fs::write(dir.join("tokenizer_config.json"), no_flag.to_string())?;
    assert_eq!(
        Tokenizer::from_hf_dir(&dir)?.bos_id(),
        None,
        "this Llama-3 tokenizer.json adds no BOS"
    );
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json"))?;
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string())?;

    std::fs::write(
        dir.join("chat_template.jinja"),
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
    )?;
    let tok = Tokenizer::from_hf_dir(&dir)?;
    assert_eq!(
        tok.apply_chat_template(&Chat::new().user("hi"), false)?,
        "<bos>hi"
    );

    std::fs::write(dir.join("tokenizer_config.json"), "{not json")?;
    let err = format!("{:#}", Tokenizer::from_hf_dir(&dir).unwrap_err());
    assert!(err.contains("tokenizer_config.json"), "{err}");
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": 5}"#)?;
    let err = format!("{:#}", Tokenizer::from_hf_dir(&dir).unwrap_err());
    assert!(
        err.contains("tokenizer_config.json") && err.contains("chat_template"),
        "{err}"
    );
    std::fs::write(dir.join("tokenizer.json"), "{}")?;
    let err = format!("{:#}", Tokenizer::from_hf_dir(&dir).unwrap_err());
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Template features HF provides beyond plain Jinja: tojson as Python prints it, strftime_now,
/// pycompat string methods, Qwen3's reversed-slice / namespace logic.
#[test]
fn template_builtins() -> Result<()> {
    let chat = Chat::new().user("  a, b  ").var(
        "tools",
        serde_json::json!([{"name": "f", "args": {"x": 1, "y": [true, null, 1.5, "é<"]}}]),
    );
    let t = ChatTemplate::new(
        "{{ tools[0] | tojson }}|{{ tools[0].args | tojson(indent=2) }}|{{ messages[0].content.strip().split(',') | join('/') }}|{{ messages[::-1] | length }}",
    );
    let out = t.render(&chat, false)?;
    let want_compact = r#"{"args": {"x": 1, "y": [true, null, 1.5, "é<"]}, "name": "f"}"#;
    let want_indent =
        "{\n  \"x\": 1,\n  \"y\": [\n    true,\n    null,\n    1.5,\n    \"é<\"\n  ]\n}";
    assert_eq!(out, format!("{want_compact}|{want_indent}|a/ b|1"));
    let year = ChatTemplate::new("{{ strftime_now('%Y') }}").render(&chat, false)?;
    assert!(year.len() == 4 && year.starts_with("20"), "{year}");
    Ok(())
}

/// Contents that also occur as template text ("user", "assistant") are located by the template
/// skeleton, not by the first string match.
#[test]
fn ambiguous_contents_are_located_correctly() {
    let tok = Tokenizer::from_hf_dir(&fixture_dir("qwen3")).unwrap();
    let chat = Chat::new()
        .system("system")
        .user("user")
        .assistant("assistant");
    let r = tok.render_chat(&chat, false).unwrap();
    let expect = [
        "<|im_start|>system\n",
        "<|im_start|>user\n",
        "<|im_start|>assistant\n<think>\n\n</think>\n\n",
    ];
    for (span, prefix) in r.messages.iter().zip(expect) {
        let content = &chat.messages[span.index].content;
        assert_eq!(&r.text[span.chars.clone()], content);
        assert!(r.text[..span.chars.start].ends_with(prefix), "{span:?}");
        assert_eq!(
            tok.decode(&r.ids[span.tokens.clone()], false).unwrap(),
            *content
        );
    }
    assert_eq!(r.describe(&Position::UserEnd, &tok).unwrap()[0].1, "user");
    assert_eq!(
        r.describe(&Position::Assistant(1), &tok).unwrap()[0].1,
        "assistant"
    );
}

/// A Llama-3 or Gemma-2 model renders chats through the same path as its tokenizer alone: a
/// model directory (parity weights of that family + the family's chat-fixture tokenizer) gives
/// HF's apply_chat_template ids with exactly one BOS (the Gemma-2 template writes its own
/// `<bos>`; rendering adds none), and plain-text prompts get the model's BOS once.
#[test]
fn models_render_chats_with_exactly_one_bos() {
    use candle_core::{DType, Device};
    use interp_kit::model::Model;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    for (family, weights) in [("llama3", "llama"), ("gemma2", "gemma2")] {
        let dir = std::env::temp_dir().join(format!("interp_kit_chat_model_{family}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(root.join("parity").join(weights).join(f), dir.join(f)).unwrap();
        }
        for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
            std::fs::copy(fixture_dir(family).join(f), dir.join(f)).unwrap();
        }
        let m = Model::from_hf_dir(&dir, &Device::Cpu, DType::F32).unwrap();
        let f = load(family);
        check_family(m.tok().unwrap(), &f, true);
        let bos = m.tok().unwrap().bos_id().expect("this family uses a BOS");
        let p = m.encode_prompt("Hello there").unwrap();
        assert_eq!((p[0], p.iter().filter(|&&i| i == bos).count()), (bos, 1), "{family}: {p:?}");
        let bos_text = m.tok().unwrap().token_str(bos);
        let p2 = m.encode_prompt(&format!("{bos_text}Hello there")).unwrap();
        assert_eq!(p2, p, "{family}: a prompt that writes its own BOS gets no second one");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
