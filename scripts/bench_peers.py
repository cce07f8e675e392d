"""Peer benchmarks for BENCHMARKS.md: the workloads of `cargo run --release --example bench`
(interp_kit/examples/bench.rs), run by HF transformers or by llama.cpp (llama-cpp-python) on
the same embedded GGUF (Qwen2.5-Coder-0.5B-Instruct Q4_K_M), on 2 CPU threads.

    PY=~/.cache/interp_kit/peervenv/bin/python     # made by scripts/setup_peers.sh
    $PY scripts/bench_peers.py --impl transformers [--reps 3] [--json out.json] [--no-lora]
                                                   [--only forward,decode,grad,lora,study]
                                                   [--study-ids ids.json]
    $PY scripts/bench_peers.py --impl llamacpp     [--reps 3] [--json out.json]

Workloads (same token ids and repetition scheme as bench.rs: median of --reps, decode median
of min(reps, 2)):
  load                      model (and, for transformers, tokenizer: timed separately)
  forward, 64/256 tokens    one sequence, logits only at the last position, no KV cache
  decode, batch 1/8         16-token prompt prefilled into a KV cache (not timed), then 32
                            single-token steps timed; aggregate tokens/s = batch*32/time
  forward+backward          100 tokens, loss = mean NLL of tokens 80..99 (each predicted from
                            the previous position), dL/dh at the outputs of blocks L/4, L/2,
                            3L/4; weights frozen (requires_grad False), one untimed warm-up
  LoRA step                 (transformers only; issue 6) PEFT LoRA r=16, alpha=32, dropout 0,
                            on q_proj+v_proj; batch 4 x 64 tokens, causal-LM loss over all
                            tokens, AdamW(lr=1e-4, torch's default weight decay 0.01);
                            forward+backward+step+zero_grad, median over --reps after one
                            untimed warm-up step. bench.rs's LoRA row runs the same step with
                            interp_kit's LoraTrainer (constant lr, no clipping)
  study                     (transformers only; issue 5) batched sampled generate() on the
                            steering study's prompts: the ids that bench.rs --study-ids wrote
                            (8 chats from harm_test.jsonl), left-padded with an attention mask,
                            80 new tokens, temperature 0.7, top-p 0.9; aggregate tokens/s =
                            generated tokens (up to and without each row's EOS) / wall time
  peak RSS                  getrusage(RUSAGE_SELF).ru_maxrss after the inference workloads,
                            after the gradient workload and after the LoRA steps (the whole
                            process: Python, torch/ggml and the load's own peak included)

llama.cpp: Llama(model_path, n_threads=2, n_ctx=512, logits_all=False); forward = reset() +
eval(tokens) (one ubatch, logits of the last token only); decode batch 1 = eval() of one token
at a time after eval() of the prompt. Batch-8 decode, gradients and LoRA have no counterpart
in its simple API and are reported as null ("—").

Prints a markdown table and writes the JSON (`{"impl", "versions", "rows": {workload: value},
"units": {workload: unit}}`; workload names match bench.rs's JSON keys).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("INTERP_KIT_CACHE", Path.home() / ".cache/interp_kit"))
DEFAULT_GGUF = CACHE / "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
THREADS = 2
DECODE_STEPS = 32
PROMPT_LEN = 16

FWD = "forward, {n} tokens"
DEC = "decode, batch {b} (aggregate)"
GRAD = "forward+backward, 100 tokens, dL/dh at 3 layers"
LORA = "LoRA step, r=16 q_proj+v_proj, batch 4 x 64 tokens, AdamW"
# The same two workloads under torch's CPU autocast to bf16 (matmuls in bf16 with this CPU's
# bf16 instructions where oneDNN has them; weights stay f32; backward outside the autocast scope).
GRAD_BF16 = GRAD + ", bf16 autocast"
LORA_BF16 = LORA + ", bf16 autocast"
STUDY = "generate, steering study prompts (batch 8, 80 new tokens, sampled), aggregate"
STUDY_NEW_TOKENS = 80
RSS_INF = "peak RSS, inference path"
RSS_GRAD = "peak RSS, after gradient path"
RSS_LORA = "peak RSS, after LoRA steps"


def ids(n, salt):
    """Token ids exactly as bench.rs: ordinary word-piece ids, no special tokens."""
    return [1000 + (i * 7919 + salt * 131) % 30000 for i in range(n)]


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def timed(f, reps):
    """Median seconds of `reps` calls of `f` after one untimed warm-up call (as bench.rs)."""
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return median(ts)


def median(v):
    # bench.rs takes v[len/2] of the sorted list (the upper median for even lengths).
    v = sorted(v)
    return v[len(v) // 2]


class Rows:
    def __init__(self):
        self.rows, self.units = {}, {}

    def add(self, k, v, unit):
        self.rows[k], self.units[k] = v, unit
        shown = "—" if v is None else f"{v:.3f}"
        print(f"{k}: {shown} {unit}", file=sys.stderr, flush=True)


def bench_transformers(gguf, reps, lora, only=None, study_ids=None):
    want = lambda w: only is None or w in only
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    r = Rows()

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    load_model = time.perf_counter() - t
    t = time.perf_counter()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    load_tok = time.perf_counter() - t
    r.add("load", load_model + load_tok, "s")
    r.add("load, model", load_model, "s")
    r.add("load, tokenizer", load_tok, "s")
    for p in model.parameters():
        p.requires_grad_(False)

    with torch.inference_mode():
        for n in (64, 256) if want("forward") else ():
            x = torch.tensor([ids(n, 1)])
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                model(input_ids=x, use_cache=False, logits_to_keep=1)
                ts.append(time.perf_counter() - t)
            r.add(FWD.format(n=n), median(ts), "s")
        infer_rss = peak_rss_mib()
        for b in (1, 8) if want("decode") else ():
            prompts = torch.tensor([ids(PROMPT_LEN, row) for row in range(b)])
            ts = []
            for _ in range(min(reps, 2)):
                out = model(input_ids=prompts, use_cache=True, logits_to_keep=1)
                cache = out.past_key_values
                t = time.perf_counter()
                for s in range(DECODE_STEPS):
                    nxt = torch.tensor([[2000 + s * 13 + row] for row in range(b)])
                    out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                ts.append(b * DECODE_STEPS / (time.perf_counter() - t))
                del cache, out
            r.add(DEC.format(b=b), median(ts), "tok/s")
        if want("study"):
            r.add(STUDY, study_generate(model, study_ids, reps) if study_ids else None, "tok/s")
    infer_rss = max(infer_rss, peak_rss_mib())

    # Gradient of the teacher-forced loss w.r.t. the residual stream at 3 block outputs.
    L = model.config.num_hidden_layers
    layers = model.model.layers
    points = [L // 4, L // 2, 3 * L // 4]
    x = torch.tensor([ids(100, 3)])
    start = 80

    def grad_once(bf16=False):
        taps = {}

        def hook(i):
            def f(_mod, _inp, out):
                h = out[0] if isinstance(out, tuple) else out
                if i == points[0]:
                    # Frozen weights: nothing before the first hook point needs a graph.
                    h = h.detach().requires_grad_(True)
                taps[i] = h
                return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
            return f

        handles = [layers[i].register_forward_hook(hook(i)) for i in points]
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                hs = model.model(input_ids=x, use_cache=False).last_hidden_state  # after the final norm
                logits = model.lm_head(hs[0, start - 1 : x.shape[1] - 1]).float()
            nll = -torch.log_softmax(logits, -1).gather(1, x[0, start:, None]).squeeze(1)
            loss = nll.mean()
            grads = torch.autograd.grad(loss, [taps[i] for i in points])
        finally:
            for h in handles:
                h.remove()
        assert all(g.shape == (1, x.shape[1], model.config.hidden_size) for g in grads)
        return loss.item()

    if want("grad"):
        r.add(GRAD, timed(grad_once, reps), "s")
        r.add(GRAD_BF16, timed(lambda: grad_once(bf16=True), reps), "s")
    if want("forward") or want("decode"):
        r.add(RSS_INF, infer_rss, "MiB")
    if want("grad"):
        r.add(RSS_GRAD, peak_rss_mib(), "MiB")

    if lora and want("lora"):
        import peft
        from peft import LoraConfig, get_peft_model

        versions["peft"] = peft.__version__
        cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        pm = get_peft_model(model, cfg)
        pm.train()
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
        batch = torch.tensor([ids(64, row) for row in range(4)])

        def step(bf16=False):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = pm(input_ids=batch, labels=batch, use_cache=False)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return out.loss.item()

        r.add(LORA, timed(step, reps), "s")
        r.add(LORA_BF16, timed(lambda: step(bf16=True), reps), "s")
        r.add(RSS_LORA, peak_rss_mib(), "MiB")
    return r, versions


def study_generate(model, ids_path, reps):
    """Aggregate generated tokens/s of one batched, sampled generate() on the study prompts."""
    import torch

    prompts = json.loads(Path(ids_path).read_text())
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else min(eos)
    width = max(len(p) for p in prompts)
    x = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    rates = []
    for rep in range(min(reps, 2)):
        torch.manual_seed(rep)
        t = time.perf_counter()
        out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=STUDY_NEW_TOKENS, do_sample=True,
                             temperature=0.7, top_p=0.9, top_k=0, pad_token_id=pad)
        dt = time.perf_counter() - t
        n = 0
        for row in out[:, width:].tolist():
            n += next((i for i, tok in enumerate(row) if tok in eos), len(row))
        rates.append(n / dt)
    return median(rates)


def bench_llamacpp(gguf, reps):
    import llama_cpp
    from llama_cpp import Llama

    versions = {"llama-cpp-python": llama_cpp.__version__}
    r = Rows()
    t = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_threads=THREADS, n_threads_batch=THREADS, n_ctx=512, logits_all=False, verbose=False)
    r.add("load", time.perf_counter() - t, "s")
    for n in (64, 256):
        toks = ids(n, 1)
        ts = []
        for _ in range(reps):
            llm.reset()
            t = time.perf_counter()
            llm.eval(toks)
            ts.append(time.perf_counter() - t)
        r.add(FWD.format(n=n), median(ts), "s")
    ts = []
    for _ in range(min(reps, 2)):
        llm.reset()
        llm.eval(ids(PROMPT_LEN, 0))
        t = time.perf_counter()
        for s in range(DECODE_STEPS):
            llm.eval([2000 + s * 13])
        ts.append(DECODE_STEPS / (time.perf_counter() - t))
    r.add(DEC.format(b=1), median(ts), "tok/s")
    r.add(DEC.format(b=8), None, "tok/s")
    r.add(GRAD, None, "s")
    r.add(RSS_INF, peak_rss_mib(), "MiB")
    return r, versions


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", required=True, choices=["transformers", "llamacpp"])
    ap.add_argument("--gguf", default=str(DEFAULT_GGUF))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--no-lora", action="store_true", help="transformers: skip the LoRA training step")
    ap.add_argument("--only", help="transformers: comma-separated subset of forward,decode,grad,lora,study (load always runs)")
    ap.add_argument("--study-ids", help="transformers: the study prompts' ids written by bench.rs --study-ids")
    a = ap.parse_args()
    if a.reps < 1:
        ap.error("--reps must be >= 1")
    gguf = Path(a.gguf).expanduser().resolve()
    if not gguf.is_file():
        sys.exit(f"bench_peers: no model at {gguf} (run scripts/fetch_model.sh)")
    if a.impl == "transformers":
        only = None if a.only is None else {w.strip() for w in a.only.split(",")}
        r, versions = bench_transformers(gguf, a.reps, not a.no_lora, only, a.study_ids)
    else:
        r, versions = bench_llamacpp(gguf, a.reps)
    versions["python"] = platform.python_version()
    print(f"| workload | {a.impl} | unit |\n|---|---|---|")
    for k, v in r.rows.items():
        print(f"| {k} | {'—' if v is None else f'{v:.3f}'} | {r.units[k]} |")
    if a.json:
        doc = {"impl": a.impl, "versions": versions, "threads": THREADS, "reps": a.reps, "model": gguf.name, "rows": r.rows, "units": r.units}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
