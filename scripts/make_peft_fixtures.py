#!/usr/bin/env python3
"""Generate PEFT LoRA fixtures for interp_kit's LoRA tests (tests/lora.rs).

Takes the tiny random Qwen2 parity checkpoint (tests/fixtures/parity/qwen2, made by
scripts/make_parity_fixtures.py), wraps it with PEFT LoRA adapters whose A and B are both
NON-zero (``init_lora_weights=False``: PEFT keeps nn.Linear's kaiming-uniform init for A and B,
seeded), saves each adapter with ``save_pretrained`` and records PEFT's logits (eval mode, no
dropout) for the parity prompts, unmerged and after ``merge_and_unload``, plus the base logits.

Usage (reference venv: torch, transformers, peft 0.21.2)::

    PY=~/.cache/interp_kit/refvenv/bin/python
    $PY scripts/make_peft_fixtures.py [--out tests/fixtures/peft]

Output, per variant, in ``<out>/<variant>/``:

    adapter_config.json, adapter_model.safetensors   exactly as PEFT's save_pretrained writes them
                                                     (its README.md model card is removed)
    reference.safetensors   ids_0, ids_1 (int64), logits_{i} (PEFT, unmerged), merged_logits_{i}
                            (merge_and_unload), base_logits_{i} (no adapter); f32 [T, V]
    meta.json               the LoRA config, versions, self-checks

Variants:
    qv          r=4, lora_alpha=8, q_proj + v_proj, all layers
    all_linear  r=4, lora_alpha=6, use_rslora (scaling 6/sqrt(4) = 3), all seven linear modules,
                layers_to_transform=[0, 2], lora_dropout=0.1 (inactive in eval mode)

Deterministic (fixed seeds, float32, CPU, one thread): re-running with the same versions gives the
same tensors; adapter_config.json differs only in the order of ``target_modules`` (PEFT writes a
Python set, whose order follows PYTHONHASHSEED). The script aborts if a self-check fails (merged == unmerged, reload == original, the
adapter changes the logits).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import sys
from pathlib import Path

import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_REL = "tests/fixtures/parity/qwen2"
BASE = REPO_ROOT / BASE_REL
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "peft"
SEED = 20240612

VARIANTS = {
    "qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "all_linear": dict(
        r=4,
        lora_alpha=6,
        use_rslora=True,
        lora_dropout=0.1,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=[0, 2],
    ),
}


def load_base():
    m = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    # PEFT records model.name_or_path as base_model_name_or_path: keep it repository-relative.
    m.name_or_path = BASE_REL
    return m


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids[None, :], use_cache=False).logits[0].float().contiguous()


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def make(variant: str, kwargs: dict, out: Path, prompts: list[torch.Tensor]) -> None:
    torch.manual_seed(SEED)
    base = load_base()
    base_logits = [logits(base, p) for p in prompts]
    cfg = LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **kwargs)
    pm = get_peft_model(base, cfg)
    pm.eval()
    lora = [logits(pm, p) for p in prompts]
    d = out / variant
    if d.exists():
        shutil.rmtree(d)
    pm.save_pretrained(d)
    (d / "README.md").unlink(missing_ok=True)
    merged_model = copy.deepcopy(pm).merge_and_unload()
    merged = [logits(merged_model, p) for p in prompts]
    # Self-checks.
    checks = {}
    for i, p in enumerate(prompts):
        checks[f"merged_vs_unmerged_rel_{i}"] = rel(merged[i], lora[i])
        checks[f"adapter_changes_logits_rel_{i}"] = rel(lora[i], base_logits[i])
        assert checks[f"merged_vs_unmerged_rel_{i}"] < 1e-5, checks
        assert checks[f"adapter_changes_logits_rel_{i}"] > 1e-2, checks
    reloaded = PeftModel.from_pretrained(load_base(), d)
    reloaded.eval()
    for i, p in enumerate(prompts):
        checks[f"reload_rel_{i}"] = rel(logits(reloaded, p), lora[i])
        assert checks[f"reload_rel_{i}"] == 0.0, checks
    for k, t in load_file(d / "adapter_model.safetensors").items():
        if "lora_B" in k:
            assert t.abs().max() > 0, f"{k} is zero"
    ref = {}
    for i, p in enumerate(prompts):
        ref[f"ids_{i}"] = p.to(torch.int64).contiguous()
        ref[f"logits_{i}"] = lora[i]
        ref[f"merged_logits_{i}"] = merged[i]
        ref[f"base_logits_{i}"] = base_logits[i]
    save_file(ref, d / "reference.safetensors")
    meta = {
        "variant": variant,
        "base_model": BASE_REL,
        "lora_config": {k: v for k, v in kwargs.items()} | {"init_lora_weights": False, "task_type": "CAUSAL_LM"},
        "seed": SEED,
        "tensors": {
            "ids_i": "prompt i (the parity fixture's ids_i), int64 [T]",
            "logits_i": "PEFT model (adapter unmerged), eval mode, f32 [T, vocab]",
            "merged_logits_i": "after merge_and_unload, f32 [T, vocab]",
            "base_logits_i": "base model without adapter, f32 [T, vocab]",
        },
        "checks": checks,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "safetensors": safetensors.__version__,
        },
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"{variant}: wrote {d} ({sum(f.stat().st_size for f in d.iterdir())} bytes); checks {checks}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ref = load_file(BASE / "reference.safetensors")
    prompts = [ref["ids_0"].to(torch.int64), ref["ids_1"].to(torch.int64)]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for variant, kwargs in VARIANTS.items():
        make(variant, kwargs, out, prompts)


if __name__ == "__main__":
    main()
