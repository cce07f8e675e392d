"""Merge the JSON of the Rust bench and of the peer benches into one markdown table, with the
ratios that BENCHMARKS.md's targets are stated in. Standard library only.

    python3 scripts/bench_table.py --rust ik.json [--transformers tf.json] [--llamacpp lc.json] \
        [--out results/bench/DATE.md] [--note "free text for the header"]

--rust is the flat {workload: value} map of `cargo run --release --example bench -- --json`;
the peer files are those of scripts/bench_peers.py. A missing file or row shows as "—".
Targets (issue 22): forward 64 and 256 tokens on the quantized path >= 2x the faster of
transformers f32 and llama.cpp; decode batch 1 >= 1.0x llama.cpp; decode batch 8 and study
generation >= 4x transformers; forward+backward f32 >= 1.2x transformers f32, bf16 >= 2x
transformers f32 and >= 1.5x transformers bf16; LoRA step bf16 >= 2x PEFT f32 and >= 1.5x PEFT
bf16; load < 2 s; inference peak RSS < 1.2 GiB.
"""
import argparse
import datetime
import json
import platform
import subprocess
from pathlib import Path

FWD64, FWD256 = "forward, 64 tokens", "forward, 256 tokens"
FWD64_I8, FWD256_I8 = "forward, 64 tokens, int8 prefill", "forward, 256 tokens, int8 prefill"
DEC1, DEC8 = "decode, batch 1 (aggregate)", "decode, batch 8 (aggregate)"
STUDY = "generate, steering study prompts (batch 8, 80 new tokens, sampled), aggregate"
GRAD = "forward+backward, 100 tokens, dL/dh at 3 layers"
GRAD_BF16 = GRAD + ", bf16 autocast"
RSS_INF, RSS_GRAD = "peak RSS, inference path", "peak RSS, after gradient path"
# The Rust bench may name its LoRA row either way; the peer script uses the first.
LORA_KEYS = ["LoRA step, r=16 q_proj+v_proj, batch 4 x 64 tokens, AdamW", "LoRA step"]
LORA_BF16 = LORA_KEYS[0] + ", bf16 autocast"
# The kit's bf16 rows (`compute_dtype = bf16`), judged on the peers' autocast rows above.
KIT_KEY = {GRAD_BF16: GRAD + ", bf16 compute", LORA_BF16: LORA_KEYS[0] + ", bf16 compute"}

# The kit's int8-prefill rows are judged against the peers' forward rows.
PEER_KEY = {FWD64_I8: FWD64, FWD256_I8: FWD256}

# (row label, key, unit); the targets are issue 22's.
ROWS = [
    ("load (model + tokenizer)", "load", "s"),
    ("forward, 64 tokens, last-position logits (default: f32 prefill)", FWD64, "s"),
    ("forward, 64 tokens, int8 prefill (`int8_prefill`; VNNI, or AMX tiles where the CPU has them)", FWD64_I8, "s"),
    ("forward, 256 tokens, last-position logits (default: f32 prefill)", FWD256, "s"),
    ("forward, 256 tokens, int8 prefill (`int8_prefill`; VNNI, or AMX tiles where the CPU has them)", FWD256_I8, "s"),
    ("decode, batch 1 (16-token prompt, 32 steps, KV cache)", DEC1, "tok/s"),
    ("decode, batch 8, aggregate", DEC8, "tok/s"),
    ("generate on the steering study's prompts (batch 8, 80 new tokens, sampled)", STUDY, "tok/s"),
    ("forward+backward, 100 tokens, dL/dh at 3 layers (f32)", GRAD, "s"),
    ("forward+backward, bf16 (`compute_dtype = bf16`; transformers: CPU autocast)", GRAD_BF16, "s"),
    ("peak RSS, inference path", RSS_INF, "MiB"),
    ("peak RSS, after gradient path", RSS_GRAD, "MiB"),
    ("LoRA step (r=16, q+v, 4 x 64 tokens, AdamW), f32", "LORA", "s"),
    ("LoRA step, bf16 (`compute_dtype = bf16`; PEFT: CPU autocast)", LORA_BF16, "s"),
]


def load(path):
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def get(rows, key):
    if rows is None:
        return None
    if key == "LORA":
        for k in LORA_KEYS:
            if rows.get(k) is not None:
                return rows[k]
        return None
    return rows.get(key)


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "MiB":
        return f"{v:.0f} MiB"
    if unit == "tok/s":
        return f"{v:.1f} tok/s"
    return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"


def verdict(ok):
    return "✅" if ok else "❌"


def ratio_cell(key, ik, tf, lc, tf_rows=None):
    """The ratio the issue-22 target for this row is stated in, and whether it is met; `tf_rows`:
    all of transformers' rows (the bf16 targets are stated against its f32 rows too)."""
    if key in (FWD64_I8, FWD256_I8, FWD64, FWD256):
        peers = [v for v in (tf, lc) if v is not None]
        if ik is None or not peers:
            return "— (target: int8 prefill ≥ 2x the faster of transformers f32 and llama.cpp)"
        r = min(peers) / ik
        if key in (FWD64, FWD256):
            return f"{r:.2f}x the faster peer (the target is judged on the int8 prefill row)"
        return f"{r:.2f}x the faster peer (target ≥ 2x) {verdict(r >= 2.0)}"
    if key == GRAD:
        if ik is None or tf is None:
            return "— (target: f32 path ≥ 1.2x transformers f32)"
        r = tf / ik
        return f"{r:.2f}x transformers f32 (target ≥ 1.2x) {verdict(r >= 1.2)}"
    if key in (GRAD_BF16, LORA_BF16):
        f32 = get(tf_rows, GRAD if key == GRAD_BF16 else "LORA")
        peer = "transformers" if key == GRAD_BF16 else "PEFT"
        if ik is None or tf is None or f32 is None:
            return f"— (target ≥ 2x {peer} f32, ≥ 1.5x {peer} bf16)"
        r32, r16 = f32 / ik, tf / ik
        return f"{r32:.2f}x {peer} f32 (target ≥ 2x) {verdict(r32 >= 2.0)}, {r16:.2f}x {peer} bf16 (target ≥ 1.5x) {verdict(r16 >= 1.5)}"
    if key == "LORA":
        if ik is None or tf is None:
            return "— (no target for f32; bf16 row below)"
        return f"{tf / ik:.2f}x PEFT f32 (no target for the f32 path)"
    if key == DEC1:
        if ik is None or lc is None:
            return "— (target ≥ 1.0x llama.cpp)"
        r = ik / lc
        return f"{r:.2f}x llama.cpp (target ≥ 1.0x) {verdict(r >= 1.0)}"
    if key in (DEC8, STUDY):
        if ik is None or tf is None:
            return "— (target ≥ 4x transformers)"
        r = ik / tf
        return f"{r:.2f}x transformers (target ≥ 4x) {verdict(r >= 4.0)}"
    if key == "load":
        if ik is None:
            return "— (target < 2 s)"
        return f"{ik:.2f} s (target < 2 s) {verdict(ik < 2.0)}"
    if key == RSS_INF:
        if ik is None:
            return "— (target < 1.2 GiB)"
        return f"{ik / 1024:.2f} GiB (target < 1.2 GiB) {verdict(ik < 1.2 * 1024)}"
    return "(no target)"


def git_rev(root):
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except Exception:
        return "?"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust", required=True)
    ap.add_argument("--transformers")
    ap.add_argument("--llamacpp")
    ap.add_argument("--out")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    ik_doc = load(a.rust)
    tf_doc, lc_doc = load(a.transformers), load(a.llamacpp)
    ik = ik_doc.get("rows", ik_doc) if isinstance(ik_doc, dict) else None
    tf = tf_doc["rows"] if tf_doc else None
    lc = lc_doc["rows"] if lc_doc else None

    root = Path(__file__).resolve().parent.parent
    lines = [f"# Benchmarks, {datetime.date.today().isoformat()}", ""]
    lines.append(f"- machine: {cpu_name()}, {len(__import__('os').sched_getaffinity(0))} cores visible; every implementation on 2 threads, CPU")
    lines.append(f"- interp_kit: commit {git_rev(root)}, `cargo run --release --example bench`")
    for name, doc in (("transformers", tf_doc), ("llama.cpp", lc_doc)):
        if doc:
            v = ", ".join(f"{k} {x}" for k, x in doc.get("versions", {}).items())
            lines.append(f"- {name}: {v} (reps {doc.get('reps')})")
        else:
            lines.append(f"- {name}: not run")
    lines.append("- model: Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (interp_kit and llama.cpp run it quantized; transformers dequantizes it to f32)")
    if a.note:
        lines.append(f"- {a.note}")
    lines += ["", "| workload | interp_kit | transformers | llama.cpp | ratio vs target |", "|---|---|---|---|---|"]
    for label, key, unit in ROWS:
        v_ik, v_tf, v_lc = get(ik, KIT_KEY.get(key, key)), get(tf, key), get(lc, key)
        if key in PEER_KEY:  # the peers' one forward row is the reference for both kit rows
            v_tf, v_lc = get(tf, PEER_KEY[key]), get(lc, PEER_KEY[key])
        if key in ("LORA", GRAD_BF16, LORA_BF16) and v_ik is None:
            ik_cell = "n/a"
        else:
            ik_cell = fmt(v_ik, unit)
        lines.append(f"| {label} | {ik_cell} | {fmt(v_tf, unit)} | {fmt(v_lc, unit)} | {ratio_cell(key, v_ik, v_tf, v_lc, tf)} |")
    if tf and tf.get("load, model") is not None:
        lines += ["", f"transformers load split: model {tf['load, model']:.2f} s (GGUF dequantized to f32), tokenizer {tf.get('load, tokenizer', 0):.2f} s."]
    if tf and tf.get("peak RSS, after LoRA steps") is not None:
        lines.append(f"transformers peak RSS after the LoRA steps: {tf['peak RSS, after LoRA steps']:.0f} MiB.")
    lines += [
        "",
        "Workloads as in interp_kit/examples/bench.rs and scripts/bench_peers.py: same token ids "
        "(`1000 + (i*7919 + salt*131) % 30000`), medians over the repetitions. Peak RSS is the "
        "whole process's high-water mark (the load's own peak included). \"—\": not measured or "
        "no counterpart (llama-cpp-python's simple API has no batched decode, no gradients, no LoRA).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
