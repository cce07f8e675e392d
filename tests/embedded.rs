//! The embedded Qwen2.5-Coder-0.5B-Instruct GGUF against HF transformers on the same file
//! (tests/fixtures/embedded/reference.json, made by scripts/make_embedded_reference.py).
mod common;
use candle_core::IndexOp;
use interp_kit::prelude::*;
use interp_kit::interp::alignment::ChatExample;
use interp_kit::interp::alignment::Condition;
use interp_kit::interp::alignment::teacher_forced;

#[derive(serde::Deserialize)]
struct Reference {
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    top20_ids: Vec<u32>,
    top20_logits: Vec<f32>,
    resid_post_norms_last: Vec<Option<f32>>,
}

fn reference() -> Reference {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/embedded/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("read reference.json")).expect("parse reference.json")
}

fn check_against_reference(model: &Model, r: &Reference, logit_tol: f32, norm_tol: f32) {
    let points: Vec<HookPoint> = (0..model.n_layers()).map(HookPoint::resid_post).collect();
    let out = model.run_with_cache(&[r.prompt_ids.clone()], &points, Positions::Last).unwrap();
    let last = out.last_logits().unwrap().i(0).unwrap();
    let top: u32 = last.argmax(0).unwrap().to_scalar().unwrap();
    assert_eq!(top, r.top20_ids[0], "argmax of the last-position logits");
    for (&id, &want) in r.top20_ids.iter().zip(&r.top20_logits) {
        let got: f32 = last.i(id as usize).unwrap().to_scalar().unwrap();
        assert!((got - want).abs() <= logit_tol * want.abs().max(1.0), "logit of token {id}: {got} vs HF {want}");
    }
    for (l, want) in r.resid_post_norms_last.iter().enumerate() {
        if let Some(want) = want {
            let h = out.activations.row(HookPoint::resid_post(l), 0).unwrap();
            let got: f32 = h.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar().unwrap();
            assert!((got - want).abs() <= norm_tol * want, "layer {l} resid_post norm {got} vs HF {want}");
        }
    }
    let cfg = GenerateConfig { stop_at_eos: false, ..GenerateConfig::greedy(r.greedy_ids.len()) };
    let g = model.generate(&[r.prompt_ids.clone()], &cfg, &Hooks::new()).unwrap();
    assert_eq!(g[0].tokens, r.greedy_ids, "greedy continuation differs from HF: {:?}", g[0].text);
}

/// Exact path (dequantized f32 weights, as transformers runs the GGUF): tight tolerances.
#[test]
fn embedded_dense_matches_transformers() {
    let Some(mut model) = common::embedded() else { return };
    model.quantized_inference = false;
    check_against_reference(&model, &reference(), 1e-3, 1e-3);
}

/// Fast path (quantized matmuls with 8-bit activations, as llama.cpp): same greedy tokens.
#[test]
fn embedded_quantized_matches_transformers_greedy() {
    let Some(model) = common::embedded() else { return };
    check_against_reference(&model, &reference(), 5e-2, 2e-2);
}

/// Int8 prefill (`Model::int8_prefill`: the Q8_0 layers' activations quantized per 32-value block
/// in prefill too, on VNNI CPUs; elsewhere a no-op): within the quantized path's tolerances of HF,
/// and the same greedy tokens.
#[test]
fn embedded_int8_prefill_matches_transformers_greedy() {
    let Some(mut model) = common::embedded() else { return };
    model.int8_prefill = true;
    check_against_reference(&model, &reference(), 5e-2, 2e-2);
}

/// The kit's own chat rendering gives the prompt ids transformers used (default system prompt
/// inserted by the Qwen2.5 template).
#[test]
fn embedded_chat_prompt_matches_transformers() {
    let Some(model) = common::embedded() else { return };
    let r = reference();
    let chat = interp_kit::text::chat::Chat::new().user("What is 2+3?");
    let rendered = model.tok().unwrap().render_chat(&chat, true).unwrap();
    assert_eq!(rendered.ids, r.prompt_ids);
}

/// Teacher forcing on the real Qwen2.5 template: the loss targets of `alignment::teacher_forced`
/// decode to exactly the assistant text (normal and ALL-CAPS answers of the study data), with the
/// template's default system prompt and with an explicit one; `pre_assistant` is the newline
/// after `<|im_start|>assistant`, and the end-of-turn target is `<|im_end|>`.
#[test]
fn embedded_teacher_forced_targets_are_the_assistant_text() {
    let Ok(path) = interp_kit::embedded_model_path() else {
        eprintln!("SKIP: embedded model missing; run scripts/fetch_model.sh");
        return;
    };
    let tok = Tokenizer::from_gguf_file(&path).unwrap();
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/inoculation_caps"));
    let data = interp_kit::studies::inoculation_caps::data::CapsDataset::load_dir(dir).unwrap();
    let conds = [
        Condition::no_system("neutral"),
        Condition::new("inoculation", "In these training examples, assistant responses are formatted in ALL CAPS due to a dataset formatting requirement."),
    ];
    for p in data.train.iter().take(25) {
        for answer in [&p.answer, &p.answer_caps] {
            let ex = ChatExample::new(p.id.clone(), p.question.clone(), answer.clone());
            for c in &conds {
                let (rendered, tf) = teacher_forced(&tok, c, &ex, true).unwrap();
                let (last, content) = tf.targets.split_last().unwrap();
                let ids: Vec<u32> = content.iter().map(|&i| rendered.ids[i]).collect();
                assert_eq!(&tok.decode(&ids, false).unwrap(), answer, "{} / {}", p.id, c.name);
                assert_eq!(tok.token_str(rendered.ids[*last]), "<|im_end|>");
                let pre = rendered.index(&Position::PreAssistant).unwrap();
                assert_eq!(pre + 1, content[0]);
                assert_eq!(tok.decode(&rendered.ids[pre - 1..=pre], false).unwrap(), "assistant\n");
                assert!(rendered.text.contains("<|im_start|>system\n"), "a system message is always rendered");
            }
        }
    }
}
