#!/usr/bin/env python3
"""Write a tiny llama.cpp / repeng control-vector GGUF for interp_kit's read test, exactly as
repeng's ``ControlVector.export_gguf`` writes one (gguf.GGUFWriter, arch "controlvector",
``controlvector.model_hint``, ``controlvector.layer_count``, one F32 tensor ``direction.{layer}``
per layer).

Usage::

    PY=/root/.cache/interp_kit/refvenv/bin/python
    $PY scripts/make_control_vector_fixture.py                    # writes tests/fixtures/control_vector/repeng_style.gguf
    $PY scripts/make_control_vector_fixture.py --check FILE.gguf  # prints what gguf's reader sees in FILE

Values (checked by tests/analysis.rs): layers 1, 2 and 5 of width 8, ``direction.{L}[j] = L + j / 8``
(exact in float32), model hint "qwen2".
"""
import argparse
import os

import numpy as np
import gguf

LAYERS = [1, 2, 5]
WIDTH = 8


def write(path: str) -> None:
    arch = "controlvector"
    writer = gguf.GGUFWriter(path, arch)
    writer.add_string(f"{arch}.model_hint", "qwen2")
    writer.add_uint32(f"{arch}.layer_count", len(LAYERS))
    for layer in LAYERS:
        v = (layer + np.arange(WIDTH, dtype=np.float32) / 8).astype(np.float32)
        writer.add_tensor(f"direction.{layer}", v)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def check(path: str) -> None:
    r = gguf.GGUFReader(path)
    arch = r.get_field("general.architecture")
    print("general.architecture =", bytes(arch.parts[-1]).decode())
    hint = r.get_field("controlvector.model_hint")
    print("controlvector.model_hint =", bytes(hint.parts[-1]).decode())
    for t in r.tensors:
        print(t.name, t.tensor_type.name, list(t.shape), np.asarray(t.data).tolist())


def main() -> None:
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "control_vector", "repeng_style.gguf"))
    ap.add_argument("--check")
    a = ap.parse_args()
    if a.check:
        check(a.check)
        return
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    write(a.out)
    check(a.out)


if __name__ == "__main__":
    main()
