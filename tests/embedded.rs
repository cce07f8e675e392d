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

/// Int8 prefill (`Model::int8_prefill`: in prefill too, the Q8_0 layers' activations quantized per
/// 32-value block and the Q4_K / Q6_K layers' per 256 values, on VNNI CPUs; elsewhere a no-op):
/// within the quantized path's tolerances of HF, and the same greedy tokens.
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

/// Teacher-forced chat sequences of the ALL-CAPS study data (the neutral condition): ids, the
/// assistant targets, and the positions the studies read gradients at (`user_end`,
/// `pre_assistant`, `assistant[3]`: the first three assistant tokens), as the studies' gradient
/// passes and LoRA training see them.
fn caps_sequences(model: &Model, n: usize) -> Vec<(Vec<u32>, Vec<usize>, Vec<usize>)> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/inoculation_caps"));
    let data = interp_kit::studies::inoculation_caps::data::CapsDataset::load_dir(dir).unwrap();
    let tok = model.tok().unwrap();
    data.train
        .iter()
        .take(n)
        .map(|p| {
            let ex = ChatExample::new(p.id.clone(), p.question.clone(), p.answer.clone());
            let (rendered, tf) = teacher_forced(tok, &Condition::no_system("neutral"), &ex, true).unwrap();
            let mut at = vec![rendered.index(&Position::UserEnd).unwrap(), rendered.index(&Position::PreAssistant).unwrap()];
            at.extend(rendered.resolve(&Position::Assistant(3)).unwrap());
            (rendered.ids, tf.targets, at)
        })
        .collect()
}

/// bf16 compute (`Model::compute_dtype`) against f32 on the embedded model, `dL/dh` at
/// `resid_post` of every layer of two teacher-forced chat sequences (loss over the assistant
/// tokens):
/// - at the positions the studies read (`caps_sequences`), cosine >= 0.999 at every layer;
/// - at every position: cosine >= 0.99 everywhere and >= 0.999 for 99 % of (layer, position)
///   pairs (the lowest are late answer tokens whose gradient is near zero: BENCHMARKS.md);
/// - the loss within 2e-3 relative.
#[test]
fn embedded_bf16_gradients_match_f32() {
    let Some(model) = common::embedded() else { return };
    let seqs = caps_sequences(&model, 2);
    let prompts: Vec<Vec<u32>> = seqs.iter().map(|s| s.0.clone()).collect();
    let loss = Loss::Tokens(seqs.iter().map(|s| s.1.clone()).collect());
    let points: Vec<HookPoint> = (0..model.n_layers()).map(HookPoint::resid_post).collect();
    let mut bf = model.clone();
    bf.compute_dtype = ComputeDtype::Bf16;
    let a = model.grad(&prompts, &loss, &points, Positions::All, &Hooks::new()).unwrap();
    let b = bf.grad(&prompts, &loss, &points, Positions::All, &Hooks::new()).unwrap();
    assert!(((a.loss - b.loss) / a.loss).abs() < 2e-3, "loss f32 {} bf16 {}", a.loss, b.loss);
    let (mut all, mut study) = (vec![], vec![]);
    for p in &points {
        for (r, seq) in seqs.iter().enumerate() {
            let ga: Vec<Vec<f32>> = a.grads.row(*p, r).unwrap().to_vec2().unwrap();
            let gb: Vec<Vec<f32>> = b.grads.row(*p, r).unwrap().to_vec2().unwrap();
            assert_eq!(ga.len(), prompts[r].len());
            for (t, (x, y)) in ga.iter().zip(&gb).enumerate() {
                let dot: f64 = x.iter().zip(y).map(|(u, v)| *u as f64 * *v as f64).sum();
                let nx: f64 = x.iter().map(|u| (*u as f64).powi(2)).sum::<f64>().sqrt();
                let ny: f64 = y.iter().map(|u| (*u as f64).powi(2)).sum::<f64>().sqrt();
                if nx == 0.0 {
                    assert_eq!(ny, 0.0, "{p} row {r} position {t}: bf16 gradient where f32 has none");
                    continue;
                }
                let c = (dot / (nx * ny), format!("{p} row {r} position {t} (|dL/dh| {nx:.1e})"));
                if seq.2.contains(&t) {
                    study.push(c.clone());
                }
                all.push(c);
            }
        }
    }
    let min = |v: &[(f64, String)]| v.iter().min_by(|x, y| x.0.total_cmp(&y.0)).cloned().unwrap();
    let (wa, ws) = (min(&all), min(&study));
    let low = all.iter().filter(|c| c.0 < 0.999).count();
    eprintln!(
        "bf16 vs f32: loss {} vs {}; min cosine of dL/dh at the study positions ({} pairs) {:.5} at {}; over all {} pairs {:.5} at {}, {low} below 0.999",
        b.loss, a.loss, study.len(), ws.0, ws.1, all.len(), wa.0, wa.1
    );
    // Every layer, row and study position, less user_end at the last layer (no loss reads it there).
    assert_eq!(study.len(), 24 * 2 * 5 - 2);
    assert!(ws.0 >= 0.999, "study positions: min cosine {:.5} at {}", ws.0, ws.1);
    assert!(wa.0 >= 0.99, "all positions: min cosine {:.5} at {}", wa.0, wa.1);
    assert!(low * 100 <= all.len(), "{low} of {} pairs below 0.999", all.len());
}

/// LoRA training in bf16 compute follows the f32 curve: r=8 q/v adapters from the same seed,
/// 6 AdamW steps (lr 1e-3) on the same 4 chat sequences; every step's loss within 1 % of
/// f32's and its gradient norm within 3 %, and the loss falls by the same amount.
#[test]
fn embedded_bf16_lora_curve_matches_f32() {
    use interp_kit::lora::{LoraTrainer, Schedule};
    let Some(model) = common::embedded() else { return };
    let batch: Vec<TrainExample> =
        caps_sequences(&model, 4).into_iter().map(|(ids, t, _)| TrainExample::new(ids, t).unwrap()).collect();
    let refs: Vec<&TrainExample> = batch.iter().collect();
    let curve = |compute: ComputeDtype| {
        let mut m = model.clone();
        m.compute_dtype = compute;
        let adapter = LoraAdapter::new(&m, &LoraConfig::qv(8, 16.0).with_seed(3)).unwrap();
        let cfg = TrainConfig { lr: 1e-3, schedule: Schedule::Constant, batch_size: 4, max_grad_norm: None, ..Default::default() };
        let mut tr = LoraTrainer::new(&adapter, cfg, 6).unwrap();
        (0..6).map(|_| tr.step(&m, &adapter, &refs).unwrap()).map(|s| (s.loss, s.grad_norm)).collect::<Vec<_>>()
    };
    let (f, b) = (curve(ComputeDtype::F32), curve(ComputeDtype::Bf16));
    eprintln!("f32 (loss, grad norm) per step: {f:?}\nbf16: {b:?}");
    for (i, (x, y)) in f.iter().zip(&b).enumerate() {
        assert!(((x.0 - y.0) / x.0).abs() < 0.01, "step {}: loss f32 {} bf16 {}", i + 1, x.0, y.0);
        assert!(((x.1 - y.1) / x.1).abs() < 0.03, "step {}: grad norm f32 {} bf16 {}", i + 1, x.1, y.1);
    }
    let (df, db) = (f[0].0 - f[5].0, b[0].0 - b[5].0);
    assert!(df > 0.0 && ((df - db) / df).abs() < 0.1, "loss drop f32 {df} bf16 {db}");
}
