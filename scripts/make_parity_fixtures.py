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
    # parallel residual (GPT-NeoX): no resid_mid exists; resid_post = resid_pre + attn_out + mlp_out
    parallel_residual: bool = False
    # rewrites the saved config.json dict into the form the real hub checkpoints have (legacy keys)
    config_edit: Callable[[dict], dict] | None = None
    # the residual stream entering block 0 for ids [T] (default: the input embedding module)
    embed_fn: Callable | None = None
    # config changes that must change the logits (proves the feature is exercised by the fixture)
    ablations: list[tuple[str, dict]] = field(default_factory=list)
    # "gpt2" or "llama3": write a tiny byte-level BPE tokenizer (vocab = the model's) into the dir
    tokenizer: str | None = None
    # a short description of the hook points, for meta.json
    hook_notes: dict[str, str] | None = None


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


def gemma2_modules(model):
    """Gemma-2: attn_out / mlp_out are the outputs of the post-attention / post-feedforward norms,
    i.e. exactly what the block adds to the residual stream."""
    layers = list(model.model.layers)
    return layers, [l.post_attention_layernorm for l in layers], [l.post_feedforward_layernorm for l in layers], model.model.norm


def gpt_neox_modules(model):
    layers = list(model.gpt_neox.layers)
    return layers, [l.attention for l in layers], [l.mlp for l in layers], model.gpt_neox.final_layer_norm


def gpt2_modules(model):
    layers = list(model.transformer.h)
    return layers, [l.attn for l in layers], [l.mlp for l in layers], model.transformer.ln_f


def gpt2_embed(model, ids):
    """GPT-2's residual stream at block 0: token + learned position embeddings (positions 0..T-1)."""
    t = model.transformer
    return t.wte(ids) + t.wpe(torch.arange(ids.numel()))


TINY_BASE = dict(
    vocab_size=300,
    max_position_embeddings=128,
    use_cache=True,
    pad_token_id=None,
    bos_token_id=None,
    eos_token_id=None,
)


def _llama() -> ArchSpec:
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        # small, so that with head_dim 16 the three llama3 regimes (kept / smoothed / divided) all occur
        "original_max_position_embeddings": 64,
    }

    def hub_form(cfg):
        # Llama-3.1 hub config.json: top-level rope_theta + rope_scaling (no rope_parameters)
        rp = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rp.pop("rope_theta")
        cfg["rope_scaling"] = rp
        return cfg

    return ArchSpec(
        LlamaConfig,
        LlamaForCausalLM,
        dict(COMMON_TINY, intermediate_size=128, rope_parameters=rope, tie_word_embeddings=False, attention_bias=False, mlp_bias=False),
        config_edit=hub_form,
        ablations=[("llama3 rope scaling", {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}})],
        tokenizer="llama3",
        notes=[
            "Llama-3.1-style rope: rope_scaling {rope_type: llama3, factor 8, low_freq_factor 1, high_freq_factor 4, "
            "original_max_position_embeddings 64}, rope_theta 500000 (config.json in the hub form: top-level rope_theta + rope_scaling)",
            "GQA 4 query / 2 kv heads, head_dim 16, untied lm_head, no biases",
            "tokenizer: tiny Llama-3-style byte-level BPE (vocab 300, <|begin_of_text|> ... <|eot_id|>) with the Llama-3 chat template",
        ],
    )


def _gemma2() -> ArchSpec:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return ArchSpec(
        Gemma2Config,
        Gemma2ForCausalLM,
        dict(
            TINY_BASE,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,  # 4*24 = 96 != hidden_size, as in the real Gemma-2 (8*256 != 2304)
            intermediate_size=128,
            hidden_activation="gelu_pytorch_tanh",
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            attention_bias=False,
            query_pre_attn_scalar=32,  # != head_dim: the scale is query_pre_attn_scalar^-1/2
            sliding_window=4,  # < prompt lengths (11, 7): the window masks keys on sliding layers 0 and 2
            attn_logit_softcapping=5.0,
            final_logit_softcapping=2.0,
            tie_word_embeddings=True,
        ),
        modules=gemma2_modules,
        embed_std=0.05,
        ablations=[
            ("sliding window", {"sliding_window": 4096}),
            ("attention logit softcap", {"attn_logit_softcapping": None}),
            ("final logit softcap", {"final_logit_softcapping": None}),
            ("query_pre_attn_scalar", {"query_pre_attn_scalar": 24}),
        ],
        hook_notes={
            "attn_out[l]": "output of post_attention_layernorm (the normed attention output that is added to the residual)",
            "mlp_out[l]": "output of post_feedforward_layernorm (the normed MLP output that is added to the residual)",
            "resid_pre[0]": "embed_tokens(ids) * sqrt(hidden_size) (Gemma2TextScaledWordEmbedding)",
        },
        notes=[
            "Gemma-2: (1+w) RMSNorms (raw weights ~U(0.75,1.25), so the scale is ~2), four norms per block, "
            "embeddings scaled by sqrt(64)=8, gelu_pytorch_tanh gated MLP",
            "query_pre_attn_scalar 32 (head_dim 24), attn_logit_softcapping 5, final_logit_softcapping 2 (small, so they bite)",
            "sliding_window 4 on layers 0 and 2 (HF default layer_types: layer i slides iff (i+1) % 2 == 1), layer 1 global",
            "tied lm_head, GQA 4/2",
        ],
    )


def _gpt_neox(parallel: bool) -> Callable[[], ArchSpec]:
    def make() -> ArchSpec:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        def hub_form(cfg):
            # Pythia hub config.json: rotary_pct / rotary_emb_base (no rope_parameters)
            rp = cfg.pop("rope_parameters")
            cfg.pop("rope_theta", None)
            cfg["rotary_pct"] = rp["partial_rotary_factor"]
            cfg["rotary_emb_base"] = rp["rope_theta"]
            return cfg

        return ArchSpec(
            GPTNeoXConfig,
            GPTNeoXForCausalLM,
            dict(
                TINY_BASE,
                hidden_size=64,
                num_hidden_layers=3,
                num_attention_heads=4,
                intermediate_size=128,
                hidden_act="gelu",
                layer_norm_eps=1e-5,
                use_parallel_residual=parallel,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
                attention_bias=True,
                tie_word_embeddings=False,
                hidden_dropout=0.0,
                attention_dropout=0.0,
            ),
            modules=gpt_neox_modules,
            parallel_residual=parallel,
            config_edit=hub_form,
            ablations=[
                ("use_parallel_residual", {"use_parallel_residual": not parallel}),
                ("partial rotary", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}}),
            ],
            tokenizer="gpt2",
            hook_notes=(
                {
                    "resid_mid[l]": "ABSENT: parallel residual, resid_post = resid_pre + attn_out + mlp_out (HF: mlp + attn + hidden)",
                    "attn_out[l]": "output of gpt_neox.layers[l].attention (after the dense projection)",
                    "mlp_out[l]": "output of gpt_neox.layers[l].mlp, whose input is post_attention_layernorm(resid_pre[l])",
                }
                if parallel
                else {
                    "attn_out[l]": "output of gpt_neox.layers[l].attention (after the dense projection)",
                    "resid_mid[l]": "resid_pre[l] + attn_out[l], input of post_attention_layernorm",
                }
            ),
            notes=[
                f"use_parallel_residual={parallel}",
                "partial rotary: partial_rotary_factor (rotary_pct) 0.25 of head_dim 16 -> 4 rotating dims",
                "fused query_key_value with HF's per-head interleave [n_heads, 3, head_dim], biases on every linear, LayerNorm eps 1e-5",
                "exact gelu MLP, untied head (embed_out / lm_head), config.json in the Pythia hub form (rotary_pct, rotary_emb_base)",
                "tokenizer: tiny GPT-NeoX-style byte-level BPE (vocab 300, <|endoftext|> = 0, no BOS added, no chat template)",
            ],
        )

    return make


def _gpt2() -> ArchSpec:
    from transformers import GPT2Config, GPT2LMHeadModel

    return ArchSpec(
        GPT2Config,
        GPT2LMHeadModel,
        dict(
            vocab_size=300,
            n_positions=64,
            n_embd=64,
            n_layer=3,
            n_head=4,
            n_inner=128,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            use_cache=True,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            tie_word_embeddings=True,
        ),
        modules=gpt2_modules,
        embed_fn=gpt2_embed,
        embed_std=0.1,
        tokenizer="gpt2",
        hook_notes={
            "resid_pre[0]": "wte(ids) + wpe(positions) (learned absolute positions; batch: positions from the attention mask)",
            "attn_out[l]": "output of transformer.h[l].attn (after c_proj)",
            "mlp_out[l]": "output of transformer.h[l].mlp (after c_proj)",
        },
        notes=[
            "learned absolute positions (n_positions 64), LayerNorm eps 1e-5, gelu_new MLP (n_inner 128)",
            "Conv1D weights [in, out] (transposed vs nn.Linear), fused c_attn [64, 192], tied lm_head",
            "tokenizer: tiny GPT-2-style byte-level BPE (vocab 300, <|endoftext|> = 0, no chat template)",
        ],
    )


# arch name -> zero-arg function returning its ArchSpec (imports lazily so one missing model class
# does not break the others)
ARCHS: dict[str, Callable[[], ArchSpec]] = {
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "llama": _llama,
    "gemma2": _gemma2,
    "gpt_neox": _gpt_neox(True),
    "gpt_neox_sequential": _gpt_neox(False),
    "gpt2": _gpt2,
}


# ------------------------------------------------------------------------------------------------
# Deterministic, non-degenerate initialisation
# ------------------------------------------------------------------------------------------------


def init_weights(model: torch.nn.Module, seed: int, embed_std: float = 0.2) -> dict:
    """Re-initialise every parameter from a seeded generator, in sorted-name order.

    * 1-D ``*.weight`` (all norm scales, incl. Qwen3 q_norm/k_norm): uniform(0.75, 1.25) -- never all ones
    * 1-D ``*.bias``: normal(0, 0.1) -- non-zero
    * embeddings (``*embed*`` / ``wte`` / ``wpe``): normal(0, embed_std) (ArchSpec.embed_std, default 0.2)
    * other 2-D weights [out, in]: normal(0, 0.8 / sqrt(in))  (0.1 for in=64, ~0.063 for in=160);
      GPT-2 Conv1D weights are stored [in, out], so their fan-in is dim 0
    """
    from transformers.pytorch_utils import Conv1D

    conv1d = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Conv1D)}
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
                std = 0.8 / p.shape[0 if name in conv1d else 1] ** 0.5
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
        self.parallel = spec.parallel_residual
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
                if not self.parallel:  # parallel residual: no resid_mid exists
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
        if spec.config_edit is not None:
            cfg = spec.config_edit(cfg)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.iterdir():
            if old.name.startswith("model") or old.name in ("config.json", "generation_config.json") or old.name.startswith("tokenizer"):
                old.unlink()
        files = sorted(os.listdir(tmp))
        for f in files:
            shutil.copyfile(Path(tmp) / f, out_dir / f)
    return files


def config_summary(cfg, L, d, V) -> dict:
    """The config values the Rust side must honour (Llama-style keys; others when the arch has them)."""
    out = {
        "num_hidden_layers": L,
        "hidden_size": d,
        "vocab_size": V,
        "num_attention_heads": cfg.num_attention_heads,
    }
    if hasattr(cfg, "num_key_value_heads"):
        out["num_key_value_heads"] = cfg.num_key_value_heads
    out["head_dim"] = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    out["intermediate_size"] = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None)
    for k in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"):
        if hasattr(cfg, k):
            out[k] = getattr(cfg, k)
    rp = getattr(cfg, "rope_parameters", None)
    if rp:
        out["rope_theta"] = rp["rope_theta"]
        if rp.get("rope_type", "default") != "default" or "partial_rotary_factor" in rp:
            out["rope_parameters"] = dict(rp)
    out["max_position_embeddings"] = cfg.max_position_embeddings
    out["tie_word_embeddings"] = bool(cfg.tie_word_embeddings)
    for k in ("use_parallel_residual", "query_pre_attn_scalar", "sliding_window", "layer_types",
              "attn_logit_softcapping", "final_logit_softcapping", "hidden_act", "hidden_activation", "activation_function"):
        if hasattr(cfg, k):
            out[k] = getattr(cfg, k)
    return out


# Texts the tiny tokenizers are trained on and checked with (plain English, as the notebooks use).
TOKENIZER_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "I think the answer is yes. I think the answer is no.",
    "Please write a short poem about the sea and the sky.",
    "The model said that the weather is nice today, and then it stopped.",
    "What is the capital of France? The capital of France is Paris.",
    "She is happy. He is sad. They are calm. We are here.",
] * 4

TOKENIZER_CHECK_TEXTS = [
    "The sea is calm today.",
    "  Hello, world! 123 4567",
    "What is the capital of Spain?\nIt is Madrid.",
    "Ünïcödé and emoji 🙂 fall back to bytes.",
]

LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def write_tiny_tokenizer(style: str, out_dir: Path, vocab_size: int) -> dict:
    """A tiny byte-level BPE tokenizer with exactly ``vocab_size`` ids, shaped like a real family's
    tokenizer.json (trained on TOKENIZER_CORPUS with the `tokenizers` library), plus
    tokenizer_config.json. Writes tokenizer_cases.json: ids that HF transformers' AutoTokenizer
    gives for TOKENIZER_CHECK_TEXTS (and, for llama3, apply_chat_template ids).

    * ``gpt2``  (GPT-2 / GPT-NeoX): id 0 = <|endoftext|> (bos = eos = unk), ByteLevel pre-tokenizer
      without prefix space, no BOS added, no chat template.
    * ``llama3``: Llama-3's split regex + ByteLevel, <|begin_of_text|> prepended by the post-processor,
      the special tokens at the end of the vocabulary, and the Llama-3 instruct chat template.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer

    if style == "gpt2":
        specials = ["<|endoftext|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(TOKENIZER_CORPUS, trainer)
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        cfg = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "add_bos_token": False, "add_eos_token": False, "model_max_length": 128,
               "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    elif style == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(specials), special_tokens=[],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(TOKENIZER_CORPUS, trainer)
        tok.add_special_tokens(specials)
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A:0 <|begin_of_text|>:1 $B:1",
                                          special_tokens=[("<|begin_of_text|>", bos)]),
        ])
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from make_chat_fixtures import LLAMA3_INSTRUCT_TEMPLATE

        cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "model_max_length": 128,
               "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
               "chat_template": LLAMA3_INSTRUCT_TEMPLATE}
    else:
        raise ValueError(style)
    assert tok.get_vocab_size() == vocab_size, (style, tok.get_vocab_size(), vocab_size)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    hf = AutoTokenizer.from_pretrained(out_dir)
    cases = {"style": style, "texts": []}
    for text in TOKENIZER_CHECK_TEXTS:
        plain = hf(text, add_special_tokens=False)["input_ids"]
        prompt = hf(text)["input_ids"]
        assert hf.decode(plain) == text, (text, hf.decode(plain))
        cases["texts"].append({"text": text, "ids": plain, "prompt_ids": prompt})
    if style == "llama3":
        chats = [
            ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}], True),
            ([{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"}], False),
        ]
        cases["chats"] = []
        for msgs, agp in chats:
            ids = hf.apply_chat_template(msgs, add_generation_prompt=agp, tokenize=True, return_dict=False)
            text = hf.apply_chat_template(msgs, add_generation_prompt=agp, tokenize=False)
            assert ids.count(hf.bos_token_id) == 1 and ids[0] == hf.bos_token_id, ids
            cases["chats"].append({"messages": msgs, "add_generation_prompt": agp, "text": text, "ids": ids})
    (out_dir / "tokenizer_cases.json").write_text(json.dumps(cases, indent=2, ensure_ascii=False) + "\n")
    return {"style": style, "vocab_size": vocab_size, "bos_token": cfg["bos_token"],
            "files": ["tokenizer.json", "tokenizer_config.json", "tokenizer_cases.json"]}


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
    head_keys = {"lm_head.weight", "embed_out.weight"} & stored_keys  # GPT-NeoX checkpoints may call it embed_out
    assert bool(head_keys) == (not tied), f"{arch}: lm_head.weight presence"

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
            if not spec.parallel_residual:
                put(f"resid_mid_{i}", stack(rec.resid_mid), "[L, T, d] resid_pre[l] + attn_out[l] (before post_attention_layernorm/MLP)")
            put(f"mlp_out_{i}", stack(rec.mlp_out), "[L, T, d] output of block l's mlp (after down_proj)")
            put(f"resid_post_{i}", stack(rec.resid_post), "[L, T, d] output of block l (= resid_mid[l] + mlp_out[l])")
            put(f"ln_final_{i}", rec.ln_final.detach()[0], "[T, d] output of the final norm (model.model.norm); logits = lm_head(ln_final)")

            # consistency of the hook points with each other and with HF's hidden_states
            hs = out.hidden_states
            assert len(hs) == L + 1
            for l in range(L):
                close(f"p{i}.hidden_states[{l}]==resid_pre[{l}]", hs[l][0], refs[f"resid_pre_{i}"][l], 0.0)
                if spec.parallel_residual:
                    three = refs[f"mlp_out_{i}"][l] + refs[f"attn_out_{i}"][l] + refs[f"resid_pre_{i}"][l]
                    close(f"p{i}.mlp_out+attn_out+resid_pre==resid_post[{l}]", three, refs[f"resid_post_{i}"][l], 0.0)
                else:
                    close(f"p{i}.resid_mid+mlp_out==resid_post[{l}]", refs[f"resid_mid_{i}"][l] + refs[f"mlp_out_{i}"][l], refs[f"resid_post_{i}"][l], 0.0)
                if l + 1 < L:
                    close(f"p{i}.resid_post[{l}]==resid_pre[{l+1}]", refs[f"resid_post_{i}"][l], refs[f"resid_pre_{i}"][l + 1], 0.0)
            close(f"p{i}.hidden_states[L]==ln_final", hs[L][0], refs[f"ln_final_{i}"], 0.0)
            close(f"p{i}.norm(resid_post[L-1])==ln_final", final_norm(refs[f"resid_post_{i}"][L - 1]), refs[f"ln_final_{i}"], 0.0)
            head_out = model.get_output_embeddings()(refs[f"ln_final_{i}"])
            cap = getattr(cfg, "final_logit_softcapping", None)
            if cap is not None:
                head_out = torch.tanh(head_out / cap) * cap
            close(f"p{i}.lm_head(ln_final)==logits", head_out, logits, 1e-6)
            emb_in = spec.embed_fn(model, ids) if spec.embed_fn else model.get_input_embeddings()(ids)
            close(f"p{i}.embed(ids)==resid_pre[0]", emb_in, refs[f"resid_pre_{i}"][0], 0.0)

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

    # ---- feature checks: each listed config change must change the logits ----------------------
    ablations = {}
    for what, change in spec.ablations:
        cfg2 = spec.config_cls(**{**spec.config_kwargs, **change})
        cfg2._attn_implementation = "eager"
        m2 = spec.model_cls(cfg2).to(torch.float32).eval()
        m2.load_state_dict(model.state_dict())
        with torch.no_grad():
            l2 = m2(input_ids=ids0[None], use_cache=False).logits[0]
        rel = ((l2 - logits_unbatched[0]).abs().max() / logits_unbatched[0].abs().max()).item()
        ablations[what] = {"config_change": change, "max_rel_logit_change": rel}
        assert rel > 1e-3, f"{arch}: removing {what} changes the logits by only {rel:g}: the fixture does not exercise it"
        print(f"   feature check: without {what} the logits change by {rel:.3g} (relative)")

    tokenizer_info = None
    if spec.tokenizer is not None:
        tokenizer_info = write_tiny_tokenizer(spec.tokenizer, out_dir, V)

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
        "config": config_summary(cfg, L, d, V),
        "checkpoint": {
            "files": files,
            "sharded": sharded,
            "tied_lm_head": tied,
            "lm_head_weight_stored": "lm_head.weight" in stored_keys,
            "config_json_note": "config.json has both transformers-v5 'rope_parameters' and legacy top-level 'rope_theta'/'torch_dtype'",
        },
        "arch_notes": spec.notes,
        "feature_checks": ablations,
        "tokenizer": tokenizer_info,
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
            **(spec.hook_notes or {}),
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
