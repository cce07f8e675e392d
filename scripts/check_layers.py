#!/usr/bin/env python3
"""Fails when a module of interp_kit/src imports a layer above its own, or a generic module imports
a study, or two files import each other in a cycle. The layer map is lib.rs's (bottom to top).

    scripts/check_layers.py            # exit 0: clean; exit 1: prints each offending line

A reference is any `crate::<top>` path in code (`use crate::model::Model;`, `crate::base::io::write_atomic(..)`)
or `super::` climbing out of a layer; doc comments and string literals are skipped. Files under
`studies/<a>/` may not import `studies/<b>/` either: a study is one folder on top of the kit.
"""
import re
import sys
from pathlib import Path

LAYERS = ["base", "tables", "text", "hooks", "model", "generate", "grad", "lora", "interp", "eval", "viz", "runs", "studies"]
RANK = {name: i for i, name in enumerate(LAYERS)}
SRC = Path(__file__).resolve().parent.parent / "interp_kit" / "src"


def layer_of(path: Path) -> str | None:
    rel = path.relative_to(SRC)
    top = rel.parts[0]
    if top in ("lib.rs",):
        return None  # the crate root re-exports and declares every layer
    return top[:-3] if top.endswith(".rs") else top


def code_lines(text: str):
    """(line number, code) with comments and string literals blanked, good enough for `crate::` scans."""
    in_block = 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line
        if in_block:
            end = s.find("*/")
            if end < 0:
                continue
            s = s[end + 2:]
            in_block = 0
        s = re.sub(r'"(\\.|[^"\\])*"', '""', s)
        if "/*" in s:
            s, _, rest = s.partition("/*")
            if "*/" not in rest:
                in_block = 1
        s = s.split("//", 1)[0]
        if s.strip():
            yield n, s


def study_of(path: Path) -> str | None:
    rel = path.relative_to(SRC).parts
    return rel[1] if rel[0] == "studies" and len(rel) > 2 else None


def main(src: Path | None = None) -> int:
    global SRC
    if src is not None:
        SRC = src
    bad = []
    edges = {}
    files = sorted(SRC.rglob("*.rs"))
    for f in files:
        me = layer_of(f)
        if me is None:
            continue
        if me not in RANK:
            bad.append(f"{f.relative_to(SRC)}: not in the layer map ({', '.join(LAYERS)}); add it to lib.rs and {__file__}")
            continue
        text = f.read_text()
        for n, code in code_lines(text):
            for m in re.finditer(r"\bcrate::([a-z_][a-z0-9_]*)(?:::([a-z_][a-z0-9_]*))?", code):
                top, sub = m.group(1), m.group(2)
                if top not in RANK:
                    continue  # a root re-export such as crate::polars
                if RANK[top] > RANK[me]:
                    bad.append(f"{f.relative_to(SRC)}:{n}: layer `{me}` imports `{top}`, a layer above it: {code.strip()}")
                if top == "studies" and me == "studies" and sub and sub != study_of(f):
                    bad.append(f"{f.relative_to(SRC)}:{n}: study `{study_of(f)}` imports study `{sub}`: {code.strip()}")
                edges.setdefault(me, set()).add(top)
    # Within a layer (same rank) a cycle between files is still a cycle: check file-level edges.
    file_edges = {}
    mods = {}
    for f in files:
        rel = f.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "mod":
            parts = parts[:-1]
        if parts == ["lib"]:
            continue
        mods["::".join(parts)] = f
    for name, f in mods.items():
        deps = set()
        for _, code in code_lines(f.read_text()):
            for m in re.finditer(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", code):
                path = m.group(1).split("::")
                for k in range(len(path), 0, -1):
                    cand = "::".join(path[:k])
                    if cand in mods and cand != name and not name.startswith(cand + "::") and not cand.startswith(name + "::"):
                        deps.add(cand)
                        break
        file_edges[name] = deps
    seen, stack, cycles = set(), [], []

    def visit(u):
        if u in stack:
            cycles.append(stack[stack.index(u):] + [u])
            return
        if u in seen:
            return
        seen.add(u)
        stack.append(u)
        for v in sorted(file_edges.get(u, ())):
            visit(v)
        stack.pop()

    for u in sorted(file_edges):
        visit(u)
    for c in cycles:
        bad.append("import cycle: " + " -> ".join(c))
    if bad:
        print("check_layers: FAILED", file=sys.stderr)
        for b in bad:
            print("  " + b, file=sys.stderr)
        return 1
    print(f"check_layers: ok ({len(files)} files, layers {' < '.join(LAYERS)})")
    return 0


def self_test() -> int:
    """The checker must fail on an upward import, a study importing another study, and a cycle."""
    import tempfile
    cases = {
        "upward": {"base/mod.rs": "use crate::model::Model;\n", "model/mod.rs": ""},
        "study": {"studies/a/mod.rs": "use crate::studies::b::X;\n", "studies/b/mod.rs": ""},
        "cycle": {"text/mod.rs": "", "text/a.rs": "use crate::text::b::Y;\n", "text/b.rs": "use crate::text::a::X;\n"},
        "clean": {"base/mod.rs": "// crate::model in a comment\nlet s = \"crate::runs\";\n", "model/mod.rs": "use crate::base::io;\n"},
    }
    for name, files in cases.items():
        with tempfile.TemporaryDirectory() as d:
            for rel, text in files.items():
                p = Path(d) / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text)
            rc = main(Path(d))
            want = 0 if name == "clean" else 1
            if rc != want:
                print(f"check_layers self-test: case {name!r} gave {rc}, expected {want}", file=sys.stderr)
                return 1
    print("check_layers self-test: ok (4 cases)")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        rc = self_test()
        SRC = Path(__file__).resolve().parent.parent / "interp_kit" / "src"
        sys.exit(rc or main())
    sys.exit(main())
