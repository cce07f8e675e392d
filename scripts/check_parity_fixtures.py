#!/usr/bin/env python3
"""Independent numpy (float64) re-implementation of every fixture family's forward, checked against
the parity fixtures (no transformers): Qwen2, Qwen3, Llama (llama3 rope scaling), Gemma-2, GPT-NeoX
(parallel and sequential residual) and GPT-2.

A from-scratch executable spec of what the Rust code must compute (RoPE rotate-half and partial
rotary, GQA head mapping, Qwen3 q/k norm before RoPE, Gemma's (1+w) norms / scaled embeddings /
softcaps / sliding window, GPT-NeoX's per-head interleaved qkv, GPT-2's Conv1D and learned
positions, tied heads, sharded loading). Usage:

    /root/.cache/interp_kit/refvenv/bin/python scripts/check_parity_fixtures.py tests/fixtures/parity/*/
"""
import json, math, sys
from pathlib import Path
import numpy as np
from safetensors.numpy import load_file


def load_ckpt(d):
    d = Path(d); W = {}
    idx = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    for f in files: W.update(load_file(d / f))
    return {k: v.astype(np.float64) for k, v in W.items()}


def rms(x, w, eps): return w * x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)
def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True); var = ((x - mu)**2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b
def silu(x): return x / (1 + np.exp(-x))
def gelu_tanh(x): return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
def gelu_erf(x): return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
def softmax(s): a = np.exp(s - s.max(-1, keepdims=True)); return a / a.sum(-1, keepdims=True)


def rope_params(cfg):
    """(theta, rotary dims, inverse frequencies) from either config form."""
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    H = cfg.get("num_attention_heads", cfg.get("n_head"))
    hd = cfg.get("head_dim") or cfg.get("hidden_size", cfg.get("n_embd")) // H
    theta = rp.get("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", 10000.0)))
    partial = rp.get("partial_rotary_factor", cfg.get("rotary_pct", 1.0))
    rot = int(hd * partial)
    inv = 1.0 / theta ** (np.arange(0, rot, 2) / rot)
    if rp.get("rope_type", rp.get("type")) == "llama3":  # HF _compute_llama3_parameters
        f, lo, hi, old = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"], rp["original_max_position_embeddings"]
        wl = 2 * math.pi / inv
        scaled = np.where(wl > old / lo, inv / f, inv)
        s = (old / wl - lo) / (hi - lo)
        smooth = (1 - s) * scaled / f + s * scaled
        medium = ~(wl < old / hi) & ~(wl > old / lo)
        inv = np.where(medium, smooth, scaled)
    return rot, inv


def rope_fn(cfg, T):
    rot, inv = rope_params(cfg)
    fr = np.arange(T)[:, None] * inv[None]; emb = np.concatenate([fr, fr], -1)
    cos, sin = np.cos(emb), np.sin(emb)
    def rope(x):  # [h, T, hd]: the first `rot` dims rotate (rotate-half), the rest pass
        xr, xp = x[..., :rot], x[..., rot:]
        x1, x2 = xr[..., :rot // 2], xr[..., rot // 2:]
        return np.concatenate([xr * cos + np.concatenate([-x2, x1], -1) * sin, xp], -1)
    return rope


def attention(q, k, v, scale, softcap=None, window=None):
    """q [H, T, hd], k/v [KV, T, hd]; kv head j serves q heads j*g .. j*g+g-1."""
    H, T, _ = q.shape
    k = np.repeat(k, H // k.shape[0], 0); v = np.repeat(v, H // v.shape[0], 0)
    s = q @ k.transpose(0, 2, 1) * scale
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    i, j = np.arange(T)[:, None], np.arange(T)[None]
    allowed = (j <= i) if window is None else ((j <= i) & (i - j < window))
    s = np.where(allowed, s, -np.inf)
    return (softmax(s) @ v).transpose(1, 0, 2).reshape(T, -1)


def forward(ids, cfg, W):
    """(logits, ln_final, per-layer {pre, attn, mid, mlp, post}) for one prompt."""
    mt = cfg["model_type"]; T = len(ids)
    rec = {k: [] for k in ["pre", "attn", "mid", "mlp", "post"]}
    lin = lambda x, n: x @ W[n + ".weight"].T + (W[n + ".bias"] if n + ".bias" in W else 0)
    if mt in ("qwen2", "qwen3", "llama", "gemma2"):
        L, H, KV = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        hd = cfg.get("head_dim") or cfg["hidden_size"] // H; eps = cfg["rms_norm_eps"]
        gemma = mt == "gemma2"
        norm = (lambda x, n: rms(x, 1 + W[n], eps)) if gemma else (lambda x, n: rms(x, W[n], eps))
        rope = rope_fn(cfg, T)
        h = W["model.embed_tokens.weight"][ids]
        if gemma:
            h = h * np.float32(math.sqrt(cfg["hidden_size"]))
            lt = cfg.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(L)]
        for l in range(L):
            p = f"model.layers.{l}."; rec["pre"].append(h)
            x = norm(h, p + "input_layernorm.weight")
            q = lin(x, p + "self_attn.q_proj").reshape(T, H, hd).transpose(1, 0, 2)
            k = lin(x, p + "self_attn.k_proj").reshape(T, KV, hd).transpose(1, 0, 2)
            v = lin(x, p + "self_attn.v_proj").reshape(T, KV, hd).transpose(1, 0, 2)
            if p + "self_attn.q_norm.weight" in W:
                q = rms(q, W[p + "self_attn.q_norm.weight"], eps); k = rms(k, W[p + "self_attn.k_norm.weight"], eps)
            q, k = rope(q), rope(k)
            if gemma:
                o = attention(q, k, v, cfg["query_pre_attn_scalar"] ** -0.5, cfg.get("attn_logit_softcapping"),
                              cfg["sliding_window"] if lt[l] == "sliding_attention" else None)
                ao = norm(lin(o, p + "self_attn.o_proj"), p + "post_attention_layernorm.weight")
            else:
                ao = lin(attention(q, k, v, hd ** -0.5), p + "self_attn.o_proj")
            rec["attn"].append(ao); h = h + ao; rec["mid"].append(h)
            x = norm(h, p + ("pre_feedforward_layernorm.weight" if gemma else "post_attention_layernorm.weight"))
            act = gelu_tanh if gemma else silu
            m = lin(act(lin(x, p + "mlp.gate_proj")) * lin(x, p + "mlp.up_proj"), p + "mlp.down_proj")
            if gemma:
                m = norm(m, p + "post_feedforward_layernorm.weight")
            rec["mlp"].append(m); h = h + m; rec["post"].append(h)
        lnf = norm(h, "model.norm.weight")
        logits = lnf @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T
        if gemma and cfg.get("final_logit_softcapping") is not None:
            c = cfg["final_logit_softcapping"]; logits = c * np.tanh(logits / c)
    elif mt == "gpt_neox":
        L, H, d = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]; hd = d // H
        eps = cfg["layer_norm_eps"]; parallel = cfg.get("use_parallel_residual", True)
        ln = lambda x, n: layer_norm(x, W[n + ".weight"], W[n + ".bias"], eps)
        rope = rope_fn(cfg, T)
        h = W["gpt_neox.embed_in.weight"][ids]
        for l in range(L):
            p = f"gpt_neox.layers.{l}."; rec["pre"].append(h)
            qkv = lin(ln(h, p + "input_layernorm"), p + "attention.query_key_value").reshape(T, H, 3, hd)  # per-head [q k v]
            q, k, v = (qkv[:, :, i].transpose(1, 0, 2) for i in range(3))
            ao = lin(attention(rope(q), rope(k), v, hd ** -0.5), p + "attention.dense"); rec["attn"].append(ao)
            if parallel:
                m = lin(gelu_erf(lin(ln(h, p + "post_attention_layernorm"), p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
                h = m + ao + h
            else:
                h = h + ao; rec["mid"].append(h)
                m = lin(gelu_erf(lin(ln(h, p + "post_attention_layernorm"), p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
                h = h + m
            rec["mlp"].append(m); rec["post"].append(h)
        lnf = ln(h, "gpt_neox.final_layer_norm")
        logits = lnf @ W.get("embed_out.weight", W.get("lm_head.weight", W["gpt_neox.embed_in.weight"])).T
    elif mt == "gpt2":
        L, H, d = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]; hd = d // H; eps = cfg["layer_norm_epsilon"]
        ln = lambda x, n: layer_norm(x, W[n + ".weight"], W[n + ".bias"], eps)
        conv = lambda x, n: x @ W[n + ".weight"] + W[n + ".bias"]  # Conv1D: weight [in, out]
        h = W["transformer.wte.weight"][ids] + W["transformer.wpe.weight"][np.arange(T)]
        for l in range(L):
            p = f"transformer.h.{l}."; rec["pre"].append(h)
            q, k, v = np.split(conv(ln(h, p + "ln_1"), p + "attn.c_attn"), 3, -1)
            q, k, v = (t.reshape(T, H, hd).transpose(1, 0, 2) for t in (q, k, v))
            ao = conv(attention(q, k, v, hd ** -0.5), p + "attn.c_proj"); rec["attn"].append(ao)
            h = h + ao; rec["mid"].append(h)
            m = conv(gelu_tanh(conv(ln(h, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
            rec["mlp"].append(m); h = h + m; rec["post"].append(h)
        lnf = ln(h, "transformer.ln_f")
        logits = lnf @ W.get("lm_head.weight", W["transformer.wte.weight"]).T
    else:
        raise ValueError(f"no numpy forward for model_type {mt!r}")
    return logits, lnf, {k: np.stack(v) for k, v in rec.items() if v}


worst_all = 0
for d in sys.argv[1:]:
    d = Path(d); cfg = json.loads((d / "config.json").read_text()); W = load_ckpt(d); R = load_file(d / "reference.safetensors")
    worst = 0
    for i in (0, 1):
        logits, lnf, rec = forward(R[f"ids_{i}"], cfg, W)
        assert ("mid" in rec) == (f"resid_mid_{i}" in R), f"{d.name}: resid_mid presence"
        for name, key in [("logits", None), ("ln_final", None), ("resid_pre", "pre"), ("attn_out", "attn"),
                          ("resid_mid", "mid"), ("mlp_out", "mlp"), ("resid_post", "post")]:
            if key is not None and key not in rec:
                continue
            ours = {"logits": logits, "ln_final": lnf}.get(name, rec.get(key))
            ref = R[f"{name}_{i}"]; assert ref.shape == ours.shape, (name, ref.shape, ours.shape)
            diff = np.abs(ours - ref).max(); worst = max(worst, diff / max(np.abs(ref).max(), 1e-6))
            print(f"{d.name} {name}_{i} {ref.shape} max|diff|={diff:.2e}  (max|ref|={np.abs(ref).max():.2f})")
    # greedy by full recompute
    seq = list(R["ids_0"])
    for s in range(len(R["greedy_0"])):
        lg = forward(np.array(seq), cfg, W)[0][-1]
        print(f"{d.name} greedy step {s}: argmax {lg.argmax()} ref {R['greedy_0'][s]}  step-logit diff {np.abs(lg - R['greedy_logits_0'][s]).max():.2e}")
        seq.append(int(lg.argmax()))
    assert seq[len(R["ids_0"]):] == list(R["greedy_0"]), f"{d.name}: greedy differs"
    # loss
    lg = forward(R["ids_0"], cfg, W)[0][R["loss_positions"]]
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    loss = (lse - lg[np.arange(len(lg)), R["loss_targets"]]).mean()
    print(f"{d.name} loss {loss:.7f} ref {float(R['loss_0']):.7f}; worst relative act diff {worst:.2e}")
    assert abs(loss - float(R["loss_0"])) < 1e-5 and worst < 1e-4, f"{d.name}: numpy forward disagrees with the reference"
    worst_all = max(worst_all, worst)
print(f"all fixtures agree with the float64 numpy forward (worst relative diff {worst_all:.2e})")
