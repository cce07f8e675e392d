#!/usr/bin/env python3
"""Tiny GGUF files laid out as llama.cpp's convert_hf_to_gguf.py writes them, made from the HF
parity fixtures, with HF-transformers references computed on exactly the weights the GGUF holds.

    PY=/root/.cache/interp_kit/refvenv/bin/python
    $PY scripts/make_gguf_fixtures.py            # every arch below
    $PY scripts/make_gguf_fixtures.py --arch llama

Input: tests/fixtures/parity/<arch>/ (scripts/make_parity_fixtures.py). Output, per arch, in
tests/fixtures/gguf/<arch>/:

    model-f16.gguf          2-D tensors f16, 1-D tensors f32 (convert_hf_to_gguf.py --outtype f16)
    model-q8_0.gguf         (llama only) 2-D tensors Q8_0: proves the q/k un-permute on quantized rows
    reference.safetensors   ids_0, ids_1 (the parity prompts), logits_0, logits_1 and greedy_0 (8 ids)
                            from HF transformers on the f16-rounded weights; for llama also
                            q8_logits_0/1, greedy_q8_0 on the Q8_0-dequantized weights
    meta.json               what was written and how

What the converter does and this script reproduces (tensor names from gguf-py's TensorNameMap,
the same table convert_hf_to_gguf.py uses):
  llama    q_proj/k_proj rows permuted for llama.cpp's interleaved rope (LlamaModel.permute with
           n_head / n_kv_head); Llama-3.1 rope scaling written as the rope_freqs.weight tensor of
           per-frequency divisors (LlamaModel.generate_extra_tensors; this script takes
           original_max_position_embeddings from rope_scaling, where the real models keep 8192);
           llama.* hyper-parameters; tokenizer as _set_vocab_gpt2 (pre "llama-bpe").
  gemma2   1 added to every norm weight; lm_head not written (tied); gemma2.* keys incl.
           attn_logit_softcapping, final_logit_softcapping, attention.sliding_window. GGUF has no
           query_pre_attn_scalar (llama.cpp uses head_dim, as the real 2B/9B models do): the
           reference is computed with query_pre_attn_scalar = head_dim.
  gpt_neox query_key_value rows reordered from HF's [n_head, 3, head_dim] to [q; k; v];
           gptneox.rope.dimension_count = rotary_pct * head_dim, use_parallel_residual.
  gpt2     Conv1D weights (c_attn, c_proj, c_fc) transposed to [out, in]; gpt2.* keys.
           (feed_forward_length is written as the checkpoint's n_inner; the converter writes
           4 * n_embd, which is the same for the real GPT-2 checkpoints, whose n_inner is null.)
Tokenizer metadata is written like _set_vocab_gpt2 (tokens, token types, merges, special ids,
add_bos_token, chat template through gguf.SpecialVocab) when the fixture has a tokenizer.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
PARITY = ROOT / "tests" / "fixtures" / "parity"
OUT = ROOT / "tests" / "fixtures" / "gguf"
GREEDY_NEW_TOKENS = 8

GGUF_ARCH = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "gemma2": gguf.MODEL_ARCH.GEMMA2,
    "gpt_neox": gguf.MODEL_ARCH.GPTNEOX,
    "gpt2": gguf.MODEL_ARCH.GPT2,
}


def llama_permute(w: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    """convert_hf_to_gguf.py LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg: dict) -> torch.Tensor:
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors (rope_freqs.weight)."""
    rs = cfg["rope_scaling"]
    base = cfg.get("rope_theta", 10000.0)
    dim = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = rs.get("factor", 8.0), rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = rs.get("original_max_position_embeddings", 8192)
    low_wl, high_wl = old / low, old / high
    out = []
    for f in freqs:
        wl = 2 * np.pi / f
        if wl < high_wl:
            out.append(1)
        elif wl > low_wl:
            out.append(factor)
        else:
            s = (old / wl - low) / (high - low)
            out.append(1 / ((1 - s) / factor + s))
    return torch.tensor(out, dtype=torch.float32)


def converted_tensors(arch: str, cfg: dict, sd: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """(gguf name, tensor) in checkpoint order, transformed as convert_hf_to_gguf.py does."""
    n_layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    tmap = gguf.get_tensor_name_map(GGUF_ARCH[arch], n_layers)
    out = []
    for name, t in sd.items():
        t = t.float()
        if arch == "llama":
            nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads")
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                t = llama_permute(t, nh, nh)
            if name.endswith(("k_proj.weight", "k_proj.bias")):
                t = llama_permute(t, nh, nkv)
        elif arch == "gemma2":
            if name == "lm_head.weight":
                continue
            if name.endswith("norm.weight"):
                t = t + 1
        elif arch == "gpt_neox":
            nh, d = cfg["num_attention_heads"], cfg["hidden_size"]
            if name.endswith("attention.query_key_value.weight"):
                w = t.reshape(nh, 3, d // nh, d)
                t = torch.cat([w[:, 0].reshape(-1, d), w[:, 1].reshape(-1, d), w[:, 2].reshape(-1, d)], dim=0)
            elif name.endswith("attention.query_key_value.bias"):
                b = t.reshape(nh, 3, d // nh)
                t = torch.cat([b[:, 0].reshape(d), b[:, 1].reshape(d), b[:, 2].reshape(d)], dim=0)
        elif arch == "gpt2":
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue
            if name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
                t = t.transpose(1, 0).contiguous()
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, f"{arch}: no GGUF name for {name}"
        out.append((new, t))
    if arch == "llama" and (cfg.get("rope_scaling") or {}).get("rope_type") == "llama3":
        out.append(("rope_freqs.weight", llama3_rope_factors(cfg)))
    return out


def write_hparams(w: gguf.GGUFWriter, arch: str, cfg: dict, ftype: int):
    w.add_name(f"interp_kit tiny {arch}")
    if arch == "llama":
        hd = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
        w.add_vocab_size(cfg["vocab_size"])
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(cfg["num_attention_heads"])
        w.add_head_count_kv(cfg["num_key_value_heads"])
        w.add_rope_freq_base(cfg["rope_theta"])
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_count(hd)
    elif arch == "gemma2":
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(cfg["num_attention_heads"])
        w.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_sliding_window(cfg["sliding_window"])
    elif arch == "gpt_neox":
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_rope_dimension_count(int(cfg["rotary_pct"] * (cfg["hidden_size"] // cfg["num_attention_heads"])))
        w.add_head_count(cfg["num_attention_heads"])
        w.add_parallel_residual(cfg.get("use_parallel_residual", True))
        w.add_layer_norm_eps(cfg["layer_norm_eps"])
    elif arch == "gpt2":
        w.add_block_count(cfg["n_layer"])
        w.add_context_length(cfg["n_positions"])
        w.add_embedding_length(cfg["n_embd"])
        w.add_feed_forward_length(cfg.get("n_inner") or 4 * cfg["n_embd"])
        w.add_head_count(cfg["n_head"])
        w.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    w.add_file_type(ftype)


def write_tokenizer(w: gguf.GGUFWriter, src: Path, vocab_size: int, pre: str):
    """As convert_hf_to_gguf.py _set_vocab_gpt2 / get_vocab_base."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.get_added_vocab()
    added_decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif reverse[i] in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added_decoder[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(src, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(w)


def round_through(t: torch.Tensor, qtype) -> torch.Tensor:
    """The values a GGUF tensor of type `qtype` holds for `t` (2-D, GGUF layout)."""
    if qtype == gguf.GGMLQuantizationType.F16:
        return t.half().float()
    q = gguf.quants.quantize(t.numpy(), qtype)
    return torch.from_numpy(gguf.quants.dequantize(q, qtype).reshape(t.shape).astype(np.float32))


def write_gguf(arch: str, src: Path, path: Path, cfg: dict, qtype) -> dict[str, torch.Tensor]:
    """Writes the GGUF; returns the GGUF tensors as their stored values (dequantized, GGUF layout)."""
    sd = load_file(src / "model.safetensors")
    tensors = converted_tensors(arch, cfg, sd)
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[GGUF_ARCH[arch]])
    ftype = gguf.LlamaFileType.MOSTLY_F16 if qtype == gguf.GGMLQuantizationType.F16 else gguf.LlamaFileType.MOSTLY_Q8_0
    write_hparams(w, arch, cfg, int(ftype))
    if (src / "tokenizer.json").is_file():
        style = json.loads((src / "tokenizer_cases.json").read_text())["style"]
        write_tokenizer(w, src, cfg["vocab_size"], "llama-bpe" if style == "llama3" else "gpt-2")
    stored = {}
    for name, t in tensors:
        if t.ndim >= 2:
            data = t.numpy()
            if qtype == gguf.GGMLQuantizationType.F16:
                w.add_tensor(name, data.astype(np.float16))
            else:
                w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
            stored[name] = round_through(t, qtype)
        else:
            w.add_tensor(name, t.numpy().astype(np.float32))
            stored[name] = t
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def undo(arch: str, cfg: dict, name: str, t: torch.Tensor) -> torch.Tensor:
    """HF-layout value of a stored GGUF tensor, by transformers' own GGUF loader
    (modeling_gguf_pytorch_utils TensorProcessors): independent of the Rust un-permute."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
        p = LlamaTensorProcessor(config={"num_attention_heads": cfg["num_attention_heads"], "num_key_value_heads": cfg["num_key_value_heads"]})
        return torch.from_numpy(np.ascontiguousarray(p.process(t.numpy(), name).weights))
    return t


def hf_reference(arch: str, src: Path, cfg: dict, stored: dict[str, torch.Tensor], ids: list[torch.Tensor]) -> dict:
    """HF logits and greedy ids with every 2-D weight replaced by the value the GGUF stores."""
    from transformers import AutoModelForCausalLM

    kw = {}
    if arch == "gemma2":
        # GGUF has no query_pre_attn_scalar: llama.cpp scales by head_dim^-1/2 (27B: (d/n_head)^-1/2),
        # which is what the real 2B/9B checkpoints use. The fixture's 32 != head_dim 24 cannot be
        # stored, so the reference is the model as llama.cpp runs this file.
        kw["query_pre_attn_scalar"] = cfg["head_dim"]
    model = AutoModelForCausalLM.from_pretrained(src, attn_implementation="eager", dtype=torch.float32, **kw).eval()
    n_layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    tmap = gguf.get_tensor_name_map(GGUF_ARCH[arch], n_layers)
    replaced = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim != 2:
                continue
            g = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
            assert g in stored, (arch, name, g)
            v = undo(arch, cfg, g, stored[g])
            if arch == "gpt2" and name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
                v = v.transpose(1, 0)
            if arch == "gpt_neox" and name.endswith("attention.query_key_value.weight"):
                nh, d = cfg["num_attention_heads"], cfg["hidden_size"]
                q, k, vv = v.reshape(3, nh, d // nh, d)
                v = torch.stack([q, k, vv], dim=1).reshape(3 * d, d)
            assert v.shape == p.shape, (name, v.shape, p.shape)
            assert (v - p).abs().max() < 0.05 * p.abs().max() + 1e-6, f"{arch}: {name} is not close to its GGUF value"
            p.copy_(v)
            replaced += 1
        out = {}
        for i, x in enumerate(ids):
            out[f"logits_{i}"] = model(input_ids=x[None], use_cache=False).logits[0].contiguous()
        g = model.generate(input_ids=ids[0][None], attention_mask=torch.ones_like(ids[0])[None], do_sample=False,
                           max_new_tokens=GREEDY_NEW_TOKENS, min_new_tokens=GREEDY_NEW_TOKENS, eos_token_id=None,
                           pad_token_id=0, use_cache=True)
        out["greedy_0"] = g[0, ids[0].numel():].contiguous()
    print(f"   {replaced} matrices replaced by their GGUF values")
    return out


def run(arch: str):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    src = PARITY / arch
    out_dir = OUT / arch
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    ref = load_file(src / "reference.safetensors")
    ids = [ref["ids_0"], ref["ids_1"]]
    print(f"== {arch} -> {out_dir}")
    refs = {"ids_0": ids[0], "ids_1": ids[1]}
    files = {}
    stored = write_gguf(arch, src, out_dir / "model-f16.gguf", cfg, gguf.GGMLQuantizationType.F16)
    refs.update(hf_reference(arch, src, cfg, stored, ids))
    files["model-f16.gguf"] = "2-D tensors f16, 1-D f32"
    if arch == "llama":
        stored = write_gguf(arch, src, out_dir / "model-q8_0.gguf", cfg, gguf.GGMLQuantizationType.Q8_0)
        q = hf_reference(arch, src, cfg, stored, ids)
        refs.update({f"q8_{k}" if k.startswith("logits") else "greedy_q8_0": v for k, v in q.items()})
        files["model-q8_0.gguf"] = "2-D tensors Q8_0 (blocks of 32 along each row), 1-D f32"
    save_file({k: v.contiguous() for k, v in refs.items()}, str(out_dir / "reference.safetensors"),
              metadata={"generator": f"scripts/make_gguf_fixtures.py --arch {arch}"})
    import transformers
    meta = {
        "arch": arch,
        "source": f"tests/fixtures/parity/{arch}",
        "files": files,
        "reference": "HF transformers (eager, f32) with every 2-D weight replaced by the value stored in the GGUF "
                     "(mapped back to HF layout; llama q/k via transformers' own LlamaTensorProcessor)",
        "tensors": {k: list(v.shape) for k, v in sorted(refs.items())},
        "versions": {"gguf": getattr(gguf, "__version__", "?"), "transformers": transformers.__version__, "torch": torch.__version__},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in sorted(out_dir.iterdir()):
        print(f"   {f.name}: {f.stat().st_size / 1024:.0f} KiB")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(GGUF_ARCH) + ["all"], default="all")
    args = ap.parse_args(argv)
    for arch in sorted(GGUF_ARCH) if args.arch == "all" else [args.arch]:
        run(arch)


if __name__ == "__main__":
    sys.exit(main())
