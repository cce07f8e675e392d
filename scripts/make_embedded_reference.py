"""Reference outputs of HF transformers on the embedded GGUF (Qwen2.5-Coder-0.5B-Instruct Q4_K_M).

transformers dequantizes the GGUF to f32 and runs its own Qwen2 code, so it is an independent
implementation of the same weights. Writes tests/fixtures/embedded/reference.json with, for the
chat "What is 2+3?" after the default system prompt: the prompt ids, the greedy continuation,
the top-20 last-position logits and the per-layer resid_post norms at the last position.

    ~/.cache/interp_kit/refvenv/bin/python scripts/make_embedded_reference.py [--gguf PATH]
"""
import argparse, json, os, sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = Path(os.environ.get("INTERP_KIT_CACHE", Path.home() / ".cache/interp_kit")) / "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=str(DEFAULT))
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/embedded/reference.json"))
    a = ap.parse_args()
    g = Path(a.gguf)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, torch_dtype=torch.float32)
    model.eval()
    chat = [{"role": "user", "content": "What is 2+3?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        last = out.logits[0, -1]
        top = torch.topk(last, 20)
        # hidden_states[l + 1] is the output of block l (the last one is after the final norm in HF).
        hs = out.hidden_states
        n_layers = model.config.num_hidden_layers
        norms = []
        for l in range(n_layers):
            if l == n_layers - 1:
                # HF replaces the last hidden state by the normed one; recompute the raw block output.
                norms.append(None)
            else:
                norms.append(float(hs[l + 1][0, -1].norm()))
        gen = model.generate(ids, max_new_tokens=a.max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=tok.eos_token_id)
    new = gen[0, ids.shape[1]:].tolist()
    ref = {
        "gguf": g.name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "chat": chat,
        "rendered": text,
        "prompt_ids": ids[0].tolist(),
        "greedy_ids": new,
        "greedy_text": tok.decode(new, skip_special_tokens=False),
        "top20_ids": top.indices.tolist(),
        "top20_logits": [float(x) for x in top.values],
        "resid_post_norms_last": norms,
        "note": "greedy_ids: max_new_tokens without stopping at EOS; resid_post_norms_last[l] = ||output of block l|| at the last prompt token (null for the last block, which HF reports after the final norm)",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(ref, indent=1) + "\n")
    print(json.dumps({k: ref[k] for k in ("prompt_ids", "greedy_ids", "greedy_text")}))


if __name__ == "__main__":
    sys.exit(main())
