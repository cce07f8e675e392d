//! BOS audit (`interp_kit::text::bos`) and plain prompts with the model's BOS, against Hugging Face
//! references: the Llama-3 parity fixture's `tokenizer_cases.json` (`prompt_ids` = HF
//! `tokenizer(text)`), and the Llama-3 / Gemma-2 chat fixtures (`cases.json`: HF
//! `apply_chat_template` ids, with one BOS; `encode`: HF `tokenizer(text, add_special_tokens=False)`,
//! to which HF `tokenizer(text)` prepends the BOS because both tokenizers set `add_bos_token`).
use interp_kit::text::bos;
use interp_kit::interp::directions::{PromptFormat, PromptIds};
use interp_kit::model::Model;
use interp_kit::text::tokenizer::Tokenizer;
use candle_core::{DType, Device};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn read(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// A model directory: `weights` parity checkpoint + the `family` chat fixture's tokenizer.
fn model_with_chat_tokenizer(family: &str, weights: &str) -> (Model, PathBuf) {
    let dir = std::env::temp_dir().join(format!("interp_kit_bos_{family}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("parity").join(weights).join(f), dir.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(fixtures().join("chat").join(family).join(f), dir.join(f)).unwrap();
    }
    (Model::from_hf_dir(&dir, &Device::Cpu, DType::F32).unwrap(), dir)
}

#[test]
fn plain_prompts_get_exactly_one_bos_like_hf() {
    // Llama-3 parity fixture: HF's own tokenizer(text) ids.
    let dir = fixtures().join("parity/llama");
    let m = Model::from_hf_dir(&dir, &Device::Cpu, DType::F32).unwrap();
    let cases = read(&dir.join("tokenizer_cases.json"));
    let bos = m.tok().unwrap().bos_id().unwrap();
    for t in cases["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let p = PromptIds::encode(&m, text, &PromptFormat::Plain).unwrap();
        assert_eq!(p.ids, ids(&t["prompt_ids"]), "llama plain {text:?}");
        let a = bos::check(m.tok().unwrap(), &p.ids).unwrap();
        assert_eq!((a.bos_id, a.expected, a.leading, a.positions.clone()), (Some(bos), 1, 1, vec![0]));
    }
    // Gemma-2 and Llama-3 chat fixtures: [BOS] + HF's add_special_tokens=False ids.
    for (family, weights) in [("gemma2", "gemma2"), ("llama3", "llama")] {
        let (m, tmp) = model_with_chat_tokenizer(family, weights);
        let f = read(&fixtures().join("chat").join(family).join("cases.json"));
        let bos = f["bos_id"].as_u64().unwrap() as u32;
        assert_eq!(m.tok().unwrap().bos_id(), Some(bos));
        for e in f["encode"].as_array().unwrap() {
            let text = e["text"].as_str().unwrap();
            let want: Vec<u32> = std::iter::once(bos).chain(ids(&e["ids"])).collect();
            let p = PromptIds::encode(&m, text, &PromptFormat::Plain).unwrap();
            assert_eq!(p.ids, want, "{family} plain {text:?}");
            // The same text without special tokens lacks the BOS: the audit says so.
            let bare = m.tok().unwrap().encode(text).unwrap();
            let err = bos::check(m.tok().unwrap(), &bare).unwrap_err().to_string();
            assert!(err.contains("missing BOS") && err.contains(&bos.to_string()), "{family}: {err}");
        }
        // A prompt that writes the BOS itself gets no second one.
        let bos_text = m.tok().unwrap().token_str(bos);
        let p = PromptIds::encode(&m, &format!("{bos_text}Hello there"), &PromptFormat::Plain).unwrap();
        assert_eq!(p.ids, PromptIds::encode(&m, "Hello there", &PromptFormat::Plain).unwrap().ids);
        // In a chat, a user message that writes the BOS string makes a second BOS: an error
        // naming both positions.
        let e = PromptIds::encode(&m, &format!("{bos_text}Hello"), &PromptFormat::chat()).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("double BOS") && e.contains("positions 0 and"), "{family}: {e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

#[test]
fn chat_renders_pass_and_hf_double_bos_is_named() {
    for family in ["llama3", "gemma2"] {
        let tok = Tokenizer::from_hf_dir(&fixtures().join("chat").join(family)).unwrap();
        let f = read(&fixtures().join("chat").join(family).join("cases.json"));
        let bos = f["bos_id"].as_u64().unwrap() as u32;
        let mut n = 0;
        for c in f["cases"].as_array().unwrap() {
            let Some(hf) = c.get("ids").filter(|v| !v.is_null()) else { continue };
            let hf = ids(hf);
            // HF apply_chat_template ids: exactly one BOS, first.
            let a = bos::check(&tok, &hf).unwrap();
            assert_eq!((a.expected, a.leading, a.positions.clone()), (1, 1, vec![0]), "{family} {}", c["name"]);
            assert!(a.matches_expected());
            // HF tokenizer(apply_chat_template(.., tokenize=False)) adds a BOS before the
            // template's own: positions 0 and 1.
            let text = c["text"].as_str().unwrap();
            let doubled: Vec<u32> = std::iter::once(bos).chain(tok.encode(text).unwrap()).collect();
            assert_eq!(&doubled[1..], hf.as_slice());
            let a = bos::audit(&tok, &doubled);
            assert_eq!((a.leading, a.is_ok()), (2, false));
            let e = bos::check(&tok, &doubled).unwrap_err().to_string();
            assert!(e.contains("double BOS") && e.contains("positions 0 and 1"), "{e}");
            // Two renderings concatenated: the second BOS is named at its position.
            let joined: Vec<u32> = hf.iter().chain(&hf).copied().collect();
            let e = bos::check(&tok, &joined).unwrap_err().to_string();
            assert!(e.contains(&format!("positions 0 and {}", hf.len())), "{e}");
            n += 1;
        }
        assert!(n >= 3, "{family}: only {n} cases with ids");
        // A BOS that is not first.
        let e = bos::check(&tok, &[tok.encode("Hi").unwrap()[0], bos]).unwrap_err().to_string();
        assert!(e.contains("position 1, not 0"), "{e}");
    }
}

#[test]
fn models_without_a_bos_expect_none() {
    // Qwen3's tokenizer sets no BOS: nothing is expected and chat renders pass.
    let dir = fixtures().join("chat/qwen3");
    let tok = Tokenizer::from_hf_dir(&dir).unwrap();
    let f = read(&dir.join("cases.json"));
    for c in f["cases"].as_array().unwrap() {
        if let Some(hf) = c.get("ids").filter(|v| !v.is_null()) {
            let a = bos::check(&tok, &ids(hf)).unwrap();
            assert_eq!((a.expected, a.leading), (0, 0));
        }
    }
    // GPT-NeoX names a bos_token (<|endoftext|>) but adds none: a sequence starting with it is
    // reported (not what the model expects) without an error; two of them are a double BOS.
    let tok = Tokenizer::from_hf_dir(&fixtures().join("parity/gpt_neox")).unwrap();
    assert_eq!(tok.bos_id(), None);
    let eot = tok.token_id("<|endoftext|>").unwrap();
    let mut seq = vec![eot];
    seq.extend(tok.encode("hello").unwrap());
    let a = bos::audit(&tok, &seq);
    assert_eq!((a.bos_id, a.expected, a.leading, a.matches_expected(), a.is_ok()), (Some(eot), 0, 1, false, true));
    let plain = bos::check(&tok, &tok.encode("hello").unwrap()).unwrap();
    assert!(plain.matches_expected());
    seq.insert(0, eot);
    assert!(bos::check(&tok, &seq).unwrap_err().to_string().contains("positions 0 and 1"));
}
