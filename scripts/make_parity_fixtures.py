#!/usr/bin/env python3
"""Generate HF-transformers parity fixtures for interp_kit's Rust transformer code.

For one architecture this builds a TINY random-weight model with HF transformers (f32, CPU, eager
attention), saves it with ``save_pretrained`` (f32 safetensors) and records reference activations,
logits, gradients and a greedy continuation computed by transformers itself.  The Rust tests load
the same checkpoint with interp_kit and must reproduce the references.

Usage (the Python env with torch + transformers lives in the reference venv)::

    PY=/root/.cache/interp_kit/refvenv/bin/python
    $PY scripts/make_parity_fixtures.py --arch qwen2
    $PY scripts/make_parity_fixtures.py --arch qwen3
    $PY scripts/make_parity_fixtures.py --arch all          # every registered arch
    $PY scripts/make_parity_fixtures.py --arch qwen2 --out /tmp/fx   # elsewhere (default tests/fixtures/parity)

Output, per arch, in ``<out>/<arch>/`` (the directory's model files are replaced on each run):

    config.json, generation_config.json       HF config (config.json additionally carries the legacy
                                              top-level ``rope_theta`` and ``torch_dtype`` keys that
                                              pre-v5 hub checkpoints have; HF reads both forms)
    model.safetensors                         unsharded checkpoint, or
    model-0000k-of-0000n.safetensors + model.safetensors.index.json   (sharded archs)
    reference.safetensors                     reference tensors (see meta.json / the README)
    meta.json                                 documents every reference tensor, hook point, the loss
                                              definition, versions and the self-checks' results

The run is deterministic: fixed seeds, float32, CPU, one thread,
``torch.use_deterministic_algorithms(True)``.  Re-running with the same torch/transformers versions
reproduces the files.  The script asserts a set of internal consistency checks (batched vs
unbatched logits, resid_post[l] == resid_pre[l+1], saved checkpoint reloads to the same logits,
cached greedy generation == full-recompute greedy, gradients via retain_grad == gradients via a
detached leaf) and aborts if any fails. scripts/check_parity_fixtures.py re-derives the references with an
independent float64 numpy forward (no transformers).

Adding an architecture (llama, gemma2, gpt_neox, gpt2, ...) is one entry in ``ARCHS``: the config
and model classes, tiny config kwargs, and -- if the module names differ from the Llama-style
``model.layers[i].self_attn / .mlp`` and ``model.norm`` -- a ``modules`` function returning the
(layers, attn modules, mlp modules, final norm) to hook.  Architectures whose block does not have
the ``resid_pre -> +attn -> resid_mid -> +mlp -> resid_post`` shape (gpt_neox parallel residual,
gemma2 post-norms) need their own ``resid_mid`` definition; see ``hook_points`` below.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "parity"

SEED = 20240611
PAD_ID = 0
PROMPT_LENS = (11, 7)  # prompt 0 and prompt 1; the padded batch is left-padded to max(PROMPT_LENS)
N_LOSS_TARGETS = 4  # loss over the last N_LOSS_TARGETS next-token predictions of prompt 0
GREEDY_NEW_TOKENS = 8


# ------------------------------------------------------------------------------------------------
# Architecture registry
# ------------------------------------------------------------------------------------------------


def llama_style_modules(model):
    """(blocks, attention modules, mlp modules, final norm) for Llama-style HF causal LMs."""
    layers = list(model.model.layers)
    return layers, [l.self_attn for l in layers], [l.mlp for l in layers], model.model.norm


@dataclass
class ArchSpec:
    config_cls: Callable
    model_cls: Callable
    config_kwargs: dict
    # sharding: None -> single model.safetensors; else the max_shard_size passed to save_pretrained
    max_shard_size: int | str | None = None
    modules: Callable = llama_style_modules
    # std of the embedding init (tied archs: also the lm_head, so it sets the logit scale)
    embed_std: float = 0.2
    notes: list[str] = field(default_factory=list)


COMMON_TINY = dict(
    vocab_size=300,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA: 2 query heads per kv head
    intermediate_size=160,
    hidden_act="silu",
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    attention_dropout=0.0,
    use_cache=True,
    pad_token_id=None,  # keeps every embedding row random (no zeroed padding_idx row)
    bos_token_id=None,
    eos_token_id=None,  # no eos: greedy generation always runs GREEDY_NEW_TOKENS steps
)


def _qwen2() -> ArchSpec:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return ArchSpec(
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(COMMON_TINY, tie_word_embeddings=False, use_sliding_window=False),
        max_shard_size=None,
        notes=[
            "untied lm_head (tie_word_embeddings=false), single model.safetensors",
            "q/k/v projections have (non-zero, random) biases; o_proj has none",
            "head_dim = hidden_size / num_attention_heads = 16",
        ],
    )


def _qwen3() -> ArchSpec:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return ArchSpec(
        Qwen3Config,
        Qwen3ForCausalLM,
        # head_dim is explicit in Qwen3 and, as in the real Qwen3 checkpoints, heads*head_dim (96)
        # != hidden_size (64), so code that derives head_dim from hidden_size fails loudly.
        dict(COMMON_TINY, head_dim=24, attention_bias=False, tie_word_embeddings=True, use_sliding_window=False),
        max_shard_size=200_000,  # bytes -> several shards + model.safetensors.index.json
        # tied: with std 0.2 the current token's own embedding dominates the logits and greedy
        # decoding just repeats one token; 0.05 gives a varied greedy continuation
        embed_std=0.05,
        notes=[
            "tied lm_head (tie_word_embeddings=true): lm_head.weight is NOT in the checkpoint, use model.embed_tokens.weight",
            "sharded checkpoint: model-0000k-of-0000n.safetensors + model.safetensors.index.json",
            "per-head RMSNorm q_norm/k_norm (weights random, not ones), applied before RoPE",
            "explicit head_dim = 24, num_attention_heads*head_dim = 96 != hidden_size = 64",
            "no attention biases (attention_bias=false)",
        ],
    )


# arch name -> zero-arg function returning its ArchSpec (imports lazily so one missing model class
# does not break the others)
ARCHS: dict[str, Callable[[], ArchSpec]] = {
    "qwen2": _qwen2,
    "qwen3": _qwen3,
}


# ------------------------------------------------------------------------------------------------
# Deterministic, non-degenerate initialisation
# ------------------------------------------------------------------------------------------------


def init_weights(model: torch.nn.Module, seed: int, embed_std: float = 0.2) -> dict:
    """Re-initialise every parameter from a seeded generator, in sorted-name order.

    * 1-D ``*.weight`` (all norm scales, incl. Qwen3 q_norm/k_norm): uniform(0.75, 1.25) -- never all ones
    * 1-D ``*.bias``: normal(0, 0.1) -- non-zero
    * embeddings (``*embed*`` / ``wte`` / ``wpe``): normal(0, embed_std) (ArchSpec.embed_std, default 0.2)
    * other 2-D weights [out, in]: normal(0, 0.8 / sqrt(in))  (0.1 for in=64, ~0.063 for in=160)
    """
    gen = torch.Generator().manual_seed(seed)
    rules = {}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):  # tied params listed once
            if p.ndim == 1 and name.endswith("weight"):
                p.copy_(0.75 + 0.5 * torch.rand(p.shape, generator=gen))
                rules[name] = "uniform(0.75,1.25)"
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
                rules[name] = "normal(0,0.1)"
            elif "embed" in name or name.split(".")[-2] in ("wte", "wpe"):
                p.copy_(embed_std * torch.randn(p.shape, generator=gen))
                rules[name] = f"normal(0,{embed_std})"
            elif p.ndim == 2:
                std = 0.8 / p.shape[1] ** 0.5
                p.copy_(std * torch.randn(p.shape, generator=gen))
                rules[name] = f"normal(0,{std:.4g})"
            else:
                raise ValueError(f"no init rule for {name} {tuple(p.shape)}")
    return rules


# ------------------------------------------------------------------------------------------------
# Hooked forward
# ------------------------------------------------------------------------------------------------


def first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


class Recorder:
    """Forward hooks capturing the residual stream for a batch-1 (or batch-B) forward pass.

    hook points (L = num layers, block l = model.model.layers[l]):
      resid_pre[l]  = input hidden_states of block l               (forward-pre-hook on block l)
      attn_out[l]   = output of block l's self_attn (after o_proj) (forward hook on self_attn, output[0])
      resid_mid[l]  = resid_pre[l] + attn_out[l]                   (the block's post-attention residual add)
      mlp_out[l]    = output of block l's mlp (after down_proj)    (forward hook on mlp)
      resid_post[l] = output of block l                            (forward hook on block l)
      ln_final      = output of the final norm model.model.norm    (forward hook on the norm)
    """

    def __init__(self, model, spec: ArchSpec, retain_grad: bool = False):
        self.layers, self.attns, self.mlps, self.norm = spec.modules(model)
        self.retain_grad = retain_grad
        self.handles = []
        self.reset()

    def reset(self):
        n = len(self.layers)
        self.resid_pre = [None] * n
        self.attn_out = [None] * n
        self.resid_mid = [None] * n
        self.mlp_out = [None] * n
        self.resid_post = [None] * n
        self.ln_final = None

    def __enter__(self):
        for l, (blk, attn, mlp) in enumerate(zip(self.layers, self.attns, self.mlps)):

            def pre(mod, args, kwargs, l=l):
                h = args[0] if args else kwargs["hidden_states"]
                if self.retain_grad and h.requires_grad:
                    h.retain_grad()
                self.resid_pre[l] = h

            def post(mod, args, kwargs, out, l=l):
                h = first(out)
                if self.retain_grad and h.requires_grad:
                    h.retain_grad()
                self.resid_post[l] = h

            def attn_hook(mod, args, out, l=l):
                a = first(out)
                self.attn_out[l] = a
                self.resid_mid[l] = self.resid_pre[l] + a  # same op/order as the HF block: residual + attn

            def mlp_hook(mod, args, out, l=l):
                self.mlp_out[l] = first(out)

            self.handles += [
                blk.register_forward_pre_hook(pre, with_kwargs=True),
                blk.register_forward_hook(post, with_kwargs=True),
                attn.register_forward_hook(attn_hook),
                mlp.register_forward_hook(mlp_hook),
            ]

        def norm_hook(mod, args, out):
            self.ln_final = first(out)

        self.handles.append(self.norm.register_forward_hook(norm_hook))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []


def stack(xs):
    """[L] list of [1, T, d] -> [L, T, d] (detached, contiguous f32)."""
    return torch.stack([x.detach()[0] for x in xs]).contiguous()


def batch_position_ids(mask: torch.Tensor) -> torch.Tensor:
    """position ids as HF generate derives them for left padding: cumsum(mask)-1, pads set to 1."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def setup_determinism(seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)


def save_checkpoint(model, spec: ArchSpec, out_dir: Path):
    """save_pretrained into a temp dir, then replace the model files in out_dir."""
    with tempfile.TemporaryDirectory() as tmp:
        kw = {}
        if spec.max_shard_size is not None:
            kw["max_shard_size"] = spec.max_shard_size
        model.save_pretrained(tmp, safe_serialization=True, **kw)
        cfg_path = Path(tmp) / "config.json"
        cfg = json.loads(cfg_path.read_text())
        # Legacy (pre-transformers-v5) keys, as in the real hub checkpoints: loaders that only know
        # the old format (candle-transformers configs) find them; transformers reads either.
        rp = cfg.get("rope_parameters") or {}
        if "rope_theta" in rp and "rope_theta" not in cfg:
            cfg["rope_theta"] = rp["rope_theta"]
        cfg.setdefault("torch_dtype", "float32")
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.iterdir():
            if old.name.startswith("model") or old.name in ("config.json", "generation_config.json"):
                old.unlink()
        files = sorted(os.listdir(tmp))
        for f in files:
            shutil.copyfile(Path(tmp) / f, out_dir / f)
    return files


def run_arch(arch: str, out_root: Path, seed: int = SEED):
    setup_determinism(seed)
    spec = ARCHS[arch]()
    out_dir = out_root / arch
    print(f"== {arch} -> {out_dir}")

    config = spec.config_cls(**spec.config_kwargs)
    config._attn_implementation = "eager"
    model = spec.model_cls(config).to(torch.float32).eval()
    init_rules = init_weights(model, seed, spec.embed_std)
    files = save_checkpoint(model, spec, out_dir)
    probe = torch.arange(1, 17)[None] % config.vocab_size
    with torch.no_grad():
        probe_logits = model(input_ids=probe, use_cache=False).logits

    # Everything below uses the checkpoint as reloaded from disk, so the references are exactly
    # what the saved files produce.
    model = (
        spec.model_cls.from_pretrained(out_dir, attn_implementation="eager", dtype=torch.float32).eval()
    )
    cfg = model.config
    L, d, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    checks = {}

    def close(name, a, b, atol):
        diff = (a - b).abs().max().item() if a.numel() else 0.0
        checks[name] = diff
        assert diff <= atol, f"{arch}: check {name} failed: max|diff|={diff:g} > {atol:g}"

    # checkpoint sanity: reloaded == in-memory model, tied or not as configured, all f32
    with torch.no_grad():
        close("reloaded checkpoint logits == in-memory model", model(input_ids=probe, use_cache=False).logits, probe_logits, 0.0)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == emb.data_ptr()
    assert tied == bool(cfg.tie_word_embeddings), f"{arch}: tie mismatch"
    sharded = spec.max_shard_size is not None
    if sharded:
        shards = [f for f in files if f.startswith("model-") and f.endswith(".safetensors")]
        assert len(shards) >= 2 and "model.safetensors.index.json" in files, files
    stored_keys = set()
    for f in files:
        if f.endswith(".safetensors"):
            with safetensors.safe_open(out_dir / f, "pt") as fh:
                stored_keys |= set(fh.keys())
                for k in fh.keys():
                    assert fh.get_tensor(k).dtype == torch.float32, k
    assert ("lm_head.weight" in stored_keys) == (not tied), f"{arch}: lm_head.weight presence"

    # prompts: random ids in [1, V) (never PAD_ID)
    gen = torch.Generator().manual_seed(seed + 1)
    prompts = [torch.randint(1, V, (n,), generator=gen) for n in PROMPT_LENS]

    refs: dict[str, torch.Tensor] = {}
    desc: dict[str, str] = {}

    def put(name, t, what):
        refs[name] = t.detach().contiguous().clone()
        desc[name] = what

    # ---- per-prompt unbatched forward (with hooks) --------------------------------------------
    final_norm = spec.modules(model)[3]
    logits_unbatched = []
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            T = ids.numel()
            put(f"ids_{i}", ids, f"int64 [{T}] prompt {i} token ids")
            with Recorder(model, spec) as rec:
                out = model(input_ids=ids[None], use_cache=False, output_hidden_states=True)
            logits = out.logits[0]
            logits_unbatched.append(logits)
            put(f"logits_{i}", logits, f"[T={T}, V={V}] logits of prompt {i}, unbatched, no mask, positions 0..T-1")
            put(f"resid_pre_{i}", stack(rec.resid_pre), f"[L={L}, T, d={d}] input of block l (= HF hidden_states[l])")
            put(f"attn_out_{i}", stack(rec.attn_out), "[L, T, d] output of block l's self_attn (after o_proj)")
            put(f"resid_mid_{i}", stack(rec.resid_mid), "[L, T, d] resid_pre[l] + attn_out[l] (before post_attention_layernorm/MLP)")
            put(f"mlp_out_{i}", stack(rec.mlp_out), "[L, T, d] output of block l's mlp (after down_proj)")
            put(f"resid_post_{i}", stack(rec.resid_post), "[L, T, d] output of block l (= resid_mid[l] + mlp_out[l])")
            put(f"ln_final_{i}", rec.ln_final.detach()[0], "[T, d] output of the final norm (model.model.norm); logits = lm_head(ln_final)")

            # consistency of the hook points with each other and with HF's hidden_states
            hs = out.hidden_states
            assert len(hs) == L + 1
            for l in range(L):
                close(f"p{i}.hidden_states[{l}]==resid_pre[{l}]", hs[l][0], refs[f"resid_pre_{i}"][l], 0.0)
                close(f"p{i}.resid_mid+mlp_out==resid_post[{l}]", refs[f"resid_mid_{i}"][l] + refs[f"mlp_out_{i}"][l], refs[f"resid_post_{i}"][l], 0.0)
                if l + 1 < L:
                    close(f"p{i}.resid_post[{l}]==resid_pre[{l+1}]", refs[f"resid_post_{i}"][l], refs[f"resid_pre_{i}"][l + 1], 0.0)
            close(f"p{i}.hidden_states[L]==ln_final", hs[L][0], refs[f"ln_final_{i}"], 0.0)
            close(f"p{i}.norm(resid_post[L-1])==ln_final", final_norm(refs[f"resid_post_{i}"][L - 1]), refs[f"ln_final_{i}"], 0.0)
            close(f"p{i}.lm_head(ln_final)==logits", model.get_output_embeddings()(refs[f"ln_final_{i}"]), logits, 1e-6)
            close(f"p{i}.embed(ids)==resid_pre[0]", model.get_input_embeddings()(ids), refs[f"resid_pre_{i}"][0], 0.0)

    # ---- left-padded batch ----------------------------------------------------------------------
    Tmax = max(PROMPT_LENS)
    batch_ids = torch.full((len(prompts), Tmax), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), Tmax), dtype=torch.long)
    for i, ids in enumerate(prompts):
        batch_ids[i, Tmax - ids.numel():] = ids
        mask[i, Tmax - ids.numel():] = 1
    pos = batch_position_ids(mask)
    with torch.no_grad():
        blogits = model(input_ids=batch_ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    put("batch_ids", batch_ids, f"int64 [B=2, {Tmax}] prompts left-padded with pad id {PAD_ID}")
    put("batch_attention_mask", mask, "int64 [B, Tmax] 1 = real token, 0 = left padding")
    put("batch_position_ids", pos, "int64 [B, Tmax] cumsum(mask)-1 with padded positions set to 1 (HF generate convention)")
    put("batch_logits", blogits, "[B, Tmax, V] logits of the padded batch run with the mask and position ids; ONLY positions with mask==1 are meaningful")
    for i, ids in enumerate(prompts):
        T = ids.numel()
        close(f"batch_logits[{i}] real positions == logits_{i}", blogits[i, Tmax - T:], logits_unbatched[i], 1e-5)

    # ---- gradient (prompt 0) --------------------------------------------------------------------
    ids0 = prompts[0]
    T0 = ids0.numel()
    loss_pos = torch.arange(T0 - 1 - N_LOSS_TARGETS, T0 - 1)  # positions t predicting ids[t+1]
    loss_tgt = ids0[loss_pos + 1]
    model.zero_grad(set_to_none=True)
    with torch.enable_grad(), Recorder(model, spec, retain_grad=True) as rec:
        out = model(input_ids=ids0[None], use_cache=False)
        loss = F.cross_entropy(out.logits[0, loss_pos], loss_tgt, reduction="mean")
        loss.backward()
        grad_post = torch.stack([h.grad[0] for h in rec.resid_post])
        grad_pre = torch.stack([h.grad[0] for h in rec.resid_pre])
    close("loss forward == no-grad logits", out.logits[0].detach(), logits_unbatched[0], 0.0)
    put("loss_positions", loss_pos, f"int64 [{N_LOSS_TARGETS}] positions t of prompt 0 whose logits enter the loss")
    put("loss_targets", loss_tgt, f"int64 [{N_LOSS_TARGETS}] targets = ids_0[t+1] for t in loss_positions")
    put("loss_0", loss.detach().reshape(()), "f32 scalar (shape []) mean cross-entropy of logits_0[loss_positions] vs loss_targets")
    put("grad_resid_post_0", grad_post, "[L, T0, d] dloss_0/d resid_post[l] (gradient wrt block l's output; rows t > max(loss_positions) are 0)")
    put("grad_resid_pre_0", grad_pre, "[L, T0, d] dloss_0/d resid_pre[l] (l=0: wrt the embedding output; l>0 equals grad_resid_post_0[l-1])")
    for l in range(L - 1):
        close(f"grad_resid_pre[{l+1}]==grad_resid_post[{l}]", grad_pre[l + 1], grad_post[l], 0.0)
    close("grad rows after last loss position are 0", grad_post[:, int(loss_pos.max()) + 1:], torch.zeros(()), 0.0)
    # independent check: replace block l's output by a detached leaf and differentiate wrt it
    blocks = spec.modules(model)[0]
    for l in range(L):
        leaf = {}

        def swap(mod, args, kwargs, out, l=l):
            h = first(out).detach().requires_grad_(True)
            leaf["h"] = h
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

        hnd = blocks[l].register_forward_hook(swap, with_kwargs=True)
        try:
            with torch.enable_grad():
                lo = model(input_ids=ids0[None], use_cache=False).logits[0, loss_pos]
                (g,) = torch.autograd.grad(F.cross_entropy(lo, loss_tgt), leaf["h"])
        finally:
            hnd.remove()
        close(f"grad_resid_post[{l}] via detached leaf", g[0], grad_post[l], 1e-7)
    model.zero_grad(set_to_none=True)

    # ---- greedy generation (prompt 0) ----------------------------------------------------------
    with torch.no_grad():
        g = model.generate(
            input_ids=ids0[None],
            attention_mask=torch.ones_like(ids0)[None],
            do_sample=False,
            max_new_tokens=GREEDY_NEW_TOKENS,
            min_new_tokens=GREEDY_NEW_TOKENS,
            eos_token_id=None,
            pad_token_id=PAD_ID,
            use_cache=True,
        )
        greedy = g[0, T0:]
        assert greedy.numel() == GREEDY_NEW_TOKENS, greedy
        # full-recompute greedy (no KV cache) must agree; record the top-1 / top-2 logit margins
        seq = ids0.clone()
        margins, step_logits = [], []
        for _ in range(GREEDY_NEW_TOKENS):
            last = model(input_ids=seq[None], use_cache=False).logits[0, -1]
            step_logits.append(last)
            top2 = last.topk(2).values
            margins.append((top2[0] - top2[1]).item())
            seq = torch.cat([seq, last.argmax().reshape(1)])
        assert torch.equal(seq[T0:], greedy), (seq[T0:], greedy)
    put("greedy_0", greedy, f"int64 [{GREEDY_NEW_TOKENS}] greedily generated ids continuing prompt 0 (new tokens only, no eos)")
    put("greedy_logits_0", torch.stack(step_logits), f"[{GREEDY_NEW_TOKENS}, V] logits of the last position at each greedy step: row s = logits for predicting greedy_0[s] given ids_0 ++ greedy_0[:s] (full recompute, no cache)")
    checks["greedy min top1-top2 logit margin"] = min(margins)
    assert min(margins) > 1e-3, f"{arch}: greedy step too close to a tie ({min(margins):g}); pick another seed"

    # ---- write references + meta ---------------------------------------------------------------
    refs = {k: v.contiguous() for k, v in refs.items()}
    for k, v in refs.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    save_file(refs, str(out_dir / "reference.safetensors"), metadata={"generator": f"scripts/make_parity_fixtures.py --arch {arch}"})  # one key: multi-key metadata order is not stable

    meta = {
        "arch": arch,
        "generator": "scripts/make_parity_fixtures.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
        "seed": seed,
        "dtype": "float32",
        "device": "cpu",
        "attn_implementation": "eager",
        "model_class": spec.model_cls.__name__,
        "config": {
            "num_hidden_layers": L,
            "hidden_size": d,
            "vocab_size": V,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads,
            "intermediate_size": cfg.intermediate_size,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_parameters["rope_theta"],
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        },
        "checkpoint": {
            "files": files,
            "sharded": sharded,
            "tied_lm_head": tied,
            "lm_head_weight_stored": "lm_head.weight" in stored_keys,
            "config_json_note": "config.json has both transformers-v5 'rope_parameters' and legacy top-level 'rope_theta'/'torch_dtype'",
        },
        "arch_notes": spec.notes,
        "init": {"rule": init_weights.__doc__.strip(), "per_parameter": init_rules},
        "pad_id": PAD_ID,
        "prompt_lengths": list(PROMPT_LENS),
        "loss": {
            "prompt": 0,
            "positions": loss_pos.tolist(),
            "targets": loss_tgt.tolist(),
            "definition": "loss_0 = mean_k cross_entropy(logits_0[positions[k]], targets[k]), targets[k] = ids_0[positions[k]+1]",
        },
        "hook_points": {
            "resid_pre[l]": "input hidden_states of model.model.layers[l] (l=0: embedding output; l>0: resid_post[l-1]); HF output_hidden_states[l] for l < L",
            "attn_out[l]": "output of model.model.layers[l].self_attn, i.e. after o_proj",
            "resid_mid[l]": "resid_pre[l] + attn_out[l]: residual stream after the attention add, input of post_attention_layernorm",
            "mlp_out[l]": "output of model.model.layers[l].mlp, i.e. after down_proj",
            "resid_post[l]": "output of model.model.layers[l] = resid_mid[l] + mlp_out[l]",
            "ln_final": "output of model.model.norm applied to resid_post[L-1]; HF output_hidden_states[L] (v5 ties the last hidden state to the normed one)",
        },
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""), "description": desc[k]}
            for k, v in sorted(refs.items())
        },
        "checks_max_abs_diff": checks,
        "greedy_top1_top2_margins": margins,
        "suggested_tolerances_f32": {
            "logits / activations": "atol ~1e-4 (expected agreement ~1e-6..1e-5)",
            "gradients": "atol ~1e-5 relative to max|grad|",
            "greedy_0": "exact",
        },
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    print(f"   wrote {len(refs)} reference tensors, {len(files)} checkpoint files, {size/1024:.0f} KiB total")
    print(f"   loss_0={loss.item():.6f}  greedy_0={greedy.tolist()}  min margin={min(margins):.4g}")
    print(f"   checks ok ({len(checks)}), worst nonzero: "
          f"{max((v for k, v in checks.items() if 'margin' not in k), default=0.0):.3g}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, choices=sorted(ARCHS) + ["all"])
    ap.add_argument("--seed", type=int, default=SEED, help=f"weights/prompt seed (default {SEED}; the committed fixtures use the default)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output root (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    for arch in sorted(ARCHS) if args.arch == "all" else [args.arch]:
        run_arch(arch, args.out, args.seed)


if __name__ == "__main__":
    sys.exit(main())
