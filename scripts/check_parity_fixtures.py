#!/usr/bin/env python3
"""Independent numpy (float64) re-implementation of the Qwen2/Qwen3 forward, checked against the parity fixtures.

A from-scratch executable spec of what the Rust code must compute (RoPE rotate-half, GQA head mapping,
Qwen3 q/k norm before RoPE, tied lm_head fallback, sharded loading). Usage:

    /root/.cache/interp_kit/refvenv/bin/python scripts/check_parity_fixtures.py tests/fixtures/parity/qwen2 tests/fixtures/parity/qwen3
"""
import json, sys
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

def forward(d, ids, cfg, W):
    L, H, KV = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H; eps = cfg["rms_norm_eps"]; theta = cfg["rope_theta"]
    T = len(ids); pos = np.arange(T)
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd); fr = pos[:, None] * inv[None]; emb = np.concatenate([fr, fr], -1)
    cos, sin = np.cos(emb), np.sin(emb)
    def rope(x):  # [h, T, hd]
        x1, x2 = x[..., :hd//2], x[..., hd//2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin
    h = W["model.embed_tokens.weight"][ids]; rec = {k: [] for k in ["pre","attn","mid","mlp","post"]}
    lin = lambda x, n: x @ W[n + ".weight"].T + (W[n + ".bias"] if n + ".bias" in W else 0)
    for l in range(L):
        p = f"model.layers.{l}."; rec["pre"].append(h)
        x = rms(h, W[p+"input_layernorm.weight"], eps)
        q = lin(x, p+"self_attn.q_proj").reshape(T, H, hd).transpose(1,0,2)
        k = lin(x, p+"self_attn.k_proj").reshape(T, KV, hd).transpose(1,0,2)
        v = lin(x, p+"self_attn.v_proj").reshape(T, KV, hd).transpose(1,0,2)
        if p+"self_attn.q_norm.weight" in W:
            q = rms(q, W[p+"self_attn.q_norm.weight"], eps); k = rms(k, W[p+"self_attn.k_norm.weight"], eps)
        q, k = rope(q), rope(k)
        k = np.repeat(k, H // KV, 0); v = np.repeat(v, H // KV, 0)   # kv head j serves q heads j*g..j*g+g-1
        s = q @ k.transpose(0,2,1) / np.sqrt(hd) + np.triu(np.full((T,T), -np.inf), 1)
        a = np.exp(s - s.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(1,0,2).reshape(T, H*hd); ao = lin(o, p+"self_attn.o_proj")
        rec["attn"].append(ao); h = h + ao; rec["mid"].append(h)
        x = rms(h, W[p+"post_attention_layernorm.weight"], eps)
        g = lin(x, p+"mlp.gate_proj"); m = lin((g / (1 + np.exp(-g))) * lin(x, p+"mlp.up_proj"), p+"mlp.down_proj")
        rec["mlp"].append(m); h = h + m; rec["post"].append(h)
    lnf = rms(h, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return lnf @ head.T, lnf, {k: np.stack(v) for k, v in rec.items()}

for d in sys.argv[1:]:
    d = Path(d); cfg = json.loads((d/"config.json").read_text()); W = load_ckpt(d); R = load_file(d/"reference.safetensors")
    worst = 0
    for i in (0, 1):
        logits, lnf, rec = forward(d, R[f"ids_{i}"], cfg, W)
        for name, ours in [("logits", logits), ("ln_final", lnf), ("resid_pre", rec["pre"]), ("attn_out", rec["attn"]),
                           ("resid_mid", rec["mid"]), ("mlp_out", rec["mlp"]), ("resid_post", rec["post"])]:
            ref = R[f"{name}_{i}"]; assert ref.shape == ours.shape, (name, ref.shape, ours.shape)
            diff = np.abs(ours - ref).max(); worst = max(worst, diff)
            print(f"{d.name} {name}_{i} {ref.shape} max|diff|={diff:.2e}  (max|ref|={np.abs(ref).max():.2f})")
    # greedy by full recompute
    seq = list(R["ids_0"])
    for s in range(len(R["greedy_0"])):
        lg = forward(d, np.array(seq), cfg, W)[0][-1]
        print(f"{d.name} greedy step {s}: argmax {lg.argmax()} ref {R['greedy_0'][s]}  step-logit diff {np.abs(lg - R['greedy_logits_0'][s]).max():.2e}")
        seq.append(int(lg.argmax()))
    assert seq[len(R["ids_0"]):] == list(R["greedy_0"])
    # loss
    lg = forward(d, R["ids_0"], cfg, W)[0][R["loss_positions"]]
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    loss = (lse - lg[np.arange(len(lg)), R["loss_targets"]]).mean()
    print(f"{d.name} loss {loss:.7f} ref {float(R['loss_0']):.7f}; worst act diff {worst:.2e}")
