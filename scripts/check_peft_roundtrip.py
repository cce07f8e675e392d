#!/usr/bin/env python3
"""Load a LoRA adapter written by interp_kit in PEFT and compare PEFT's logits with the kit's.

    cargo run --example lora_export -- /tmp/kit_lora            # the kit trains + saves an adapter
    ~/.cache/interp_kit/refvenv/bin/python scripts/check_peft_roundtrip.py /tmp/kit_lora

The directory holds what interp_kit/examples/lora_export.rs writes: ``adapter/`` (PEFT format)
and ``kit_logits.safetensors`` (``ids_i``, ``logits_i`` with the adapter applied unmerged,
``merged_logits_i`` from ``lora::merge``). The base model is the adapter config's
``base_model_name_or_path`` (relative paths are taken from the repository root) unless --base is
given. Exits 1 if any relative error (max |a - b| / max |b|) reaches --tol (default 1e-4).
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

REPO_ROOT = Path(__file__).resolve().parent.parent


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--base")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    d = Path(a.dir)
    cfg = json.loads((d / "adapter" / "adapter_config.json").read_text())
    base = Path(a.base or cfg["base_model_name_or_path"])
    if not base.is_absolute():
        base = REPO_ROOT / base
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    pm = PeftModel.from_pretrained(model, d / "adapter")
    pm.eval()
    n_b = sum(1 for n, p in pm.named_parameters() if "lora_B" in n and p.abs().max() > 0)
    kit = load_file(d / "kit_logits.safetensors")
    worst = 0.0
    i = 0
    with torch.no_grad():
        while f"ids_{i}" in kit:
            ids = kit[f"ids_{i}"].to(torch.int64)[None, :]
            got = pm(input_ids=ids, use_cache=False).logits[0].float()
            e = rel(kit[f"logits_{i}"], got)
            print(f"prompt {i}: kit (unmerged) vs PEFT: rel err {e:.2e}")
            worst = max(worst, e)
            i += 1
        merged = pm.merge_and_unload()
        for j in range(i):
            ids = kit[f"ids_{j}"].to(torch.int64)[None, :]
            got = merged(input_ids=ids, use_cache=False).logits[0].float()
            e = rel(kit[f"merged_logits_{j}"], got)
            print(f"prompt {j}: kit merge vs PEFT merge_and_unload: rel err {e:.2e}")
            worst = max(worst, e)
    print(f"{i} prompts, {n_b} non-zero lora_B tensors, config r={cfg['r']} alpha={cfg['lora_alpha']} "
          f"targets={sorted(cfg['target_modules'])} layers={cfg['layers_to_transform']}; worst rel err {worst:.2e}")
    if i == 0 or n_b == 0 or worst >= a.tol:
        print("FAIL", file=sys.stderr)
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
