"""A byte-level chat tokenizer for the tiny parity models (vocab 300): 256 byte tokens (GPT-2's
byte-to-unicode alphabet, no merges) plus <|endoftext|>, <|im_start|>, <|im_end|> (ids 256-258),
and a ChatML template like Qwen2.5's (no default system prompt). Lets tests render chats, locate
named positions and take assistant-token losses on tests/fixtures/parity/* without a real vocab.

    ~/.cache/interp_kit/refvenv/bin/python scripts/make_byte_chat_tokenizer.py

Writes tests/fixtures/byte_chat/{tokenizer.json,tokenizer_config.json}; deterministic.
"""
import json
import pathlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers import AddedToken

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/byte_chat"

alphabet = pre_tokenizers.ByteLevel.alphabet()
# Order the 256 byte symbols by the byte they encode, so id == byte value.
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))

b2u = bytes_to_unicode()
assert sorted(b2u.values()) == sorted(alphabet)
vocab = {b2u[b]: b for b in range(256)}
tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
assert tok.token_to_id("<|im_end|>") == 258
enc = tok.encode("<|im_start|>user\nHi é<|im_end|>")
assert enc.ids[0] == 257 and enc.ids[-1] == 258 and tok.decode(enc.ids, skip_special_tokens=True) == "user\nHi é"

OUT.mkdir(parents=True, exist_ok=True)
tok.save(str(OUT / "tokenizer.json"))
template = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
cfg = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>",
    "add_bos_token": False,
    "chat_template": template,
}
(OUT / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
print("wrote", OUT)
