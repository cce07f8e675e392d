"""What the study notebook generators (scripts/make_*_notebooks.py) share: the cell that loads the
kit, the params and open cells, the notebook JSON, and writing with stable cell ids.

A generator builds a `Study` with its folder, config, open cell and aliases, writes its notebooks'
cells with `md` / `study.code`, and calls `study.write(NB)`.
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

DEP = """// Load interp_kit from this clone (path relative to this notebook's folder), as one shared
// library (interp_kit_dylib): a plain `:dep` would put a separate copy of the kit in every cell.
// `:opt 2` is pinned so that every notebook shares one build of the dependencies.
:opt 2
:dep interp_kit = { path = "../../interp_kit/dylib", package = "interp_kit_dylib" }"""

METADATA = {
    "kernelspec": {"display_name": "Rust", "language": "rust", "name": "rust"},
    "language_info": {"codemirror_mode": "rust", "file_extension": ".rs", "mimetype": "text/rust",
                      "name": "Rust", "pygment_lexer": "rust", "version": ""},
}


def md(s):
    return {"cell_type": "markdown", "metadata": {}, "source": s}


class Study:
    """One study's notebooks in notebooks/<folder>/.

    title: the heading before each notebook's own title; config: the file name in configs/;
    open_src: the cell after the params cell that opens the study; mode_note: the paragraph on
    modes under each heading; aliases: (markers, use line) pairs: evcxr can forget a `use ... as`
    alias between cells, so a cell that contains a marker imports the alias itself (the open
    cell, which starts with the prelude import, has them already).
    """

    def __init__(self, folder, title, config, open_src, mode_note, aliases=()):
        self.out = ROOT / "notebooks" / folder
        self.title = title
        self.params = ("// The study's config; INTERP_KIT_STUDY_MODE=ci|fast|full overrides its `mode`.\n"
                       f'let config_path = "../../configs/{config}";')
        self.open_src = open_src
        self.mode_note = mode_note
        self.aliases = aliases

    def code(self, s):
        if not s.startswith("use interp_kit::prelude"):
            for markers, use in self.aliases:
                if any(m in s for m in markers):
                    s = use + "\n" + s
        return {"cell_type": "code", "metadata": {}, "source": s, "execution_count": None, "outputs": []}

    def notebook(self, title, intro, cells):
        head = [md(f"# {self.title} — {title}\n\n{intro}\n\n{self.mode_note}"), self.code(DEP),
                md("## Parameters"), self.code(self.params), self.code(self.open_src)]
        return {"cells": head + cells, "metadata": METADATA, "nbformat": 4, "nbformat_minor": 5}

    def write(self, notebooks):
        """Writes each `name -> notebook` as notebooks/<folder>/<name>.ipynb, sources as line lists
        and stable cell ids (nbformat 4.5)."""
        self.out.mkdir(parents=True, exist_ok=True)
        for name, nb in notebooks.items():
            for i, c in enumerate(nb["cells"]):
                c["source"] = c["source"].splitlines(keepends=True)
                c["id"] = f"{name[:2]}-{i:02d}"
            (self.out / f"{name}.ipynb").write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            print("wrote", self.out / f"{name}.ipynb")
