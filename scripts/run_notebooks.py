"""Execute interp_kit notebooks headlessly with the Jupyter kernel `rust` (evcxr).

Run it through scripts/run_notebooks.sh (which uses the venv made by scripts/setup.sh):

    scripts/run_notebooks.sh --all                       # every notebooks/**/NN_*.ipynb
    scripts/run_notebooks.sh notebooks/inoculation_caps  # every NN_*.ipynb below a folder
    scripts/run_notebooks.sh notebooks/x/00_a.ipynb ...  # these notebooks
    options: --device cpu|cuda  --timeout SECONDS (per cell)  --out-dir DIR  --quiet

Notebooks run one after another, in path order, each in a fresh kernel whose working directory is
the notebook's folder (so `:dep interp_kit = { path = "../../interp_kit/dylib", package = "interp_kit_dylib" }` resolves
to this clone).
The kernel sees INTERP_KIT_ROOT (this clone), INTERP_KIT_CACHE and INTERP_KIT_DEVICE. The executed
copy of notebooks/<sub>/<name>.ipynb goes to results/notebooks/<sub>/<name>.ipynb, written to a
temporary file and renamed. The run stops at the first failing notebook: its partly executed copy
goes to <name>.failed.ipynb, the failing cell's index, source and error are printed, and the exit
status is 1 (2 for usage errors).

A cell fails when the kernel reports an error (a compile error, a crashed process) or when it prints
a Rust panic, or when it writes anything to stderr: evcxr catches panics and the errors of a `?` at a
cell's top level, prints them to stderr and reports success, so the runner checks stderr. A cell whose
stderr output is expected (progress bars, warnings) carries the tag `allow-stderr`.

--device cuda also makes the run load interp_kit with its `cuda` feature: a `:dep interp_kit = {..}`
line without `features` gets `features = ["cuda"]` in the executed copy (the run says so).
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import queue
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import ensure_async

# evcxr forwards a cell's stderr from its own reader thread, so under load the stream message can
# arrive after the cell's "idle" status, where nbclient no longer listens: a `?` error then went
# unseen once in CI. Each cell's late messages are collected for this long before it is checked.
LATE_OUTPUT_GRACE_S = 0.5

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NUMBERED = re.compile(r"\d\d_.*\.ipynb")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PANIC = re.compile(r"^thread '.*?'(?: \(\d+\))? panicked at ", re.M)
KIT_DEP = re.compile(r"^(\s*:dep\s+interp_kit\s*=\s*\{)(.*)\}\s*$")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def usage_error(msg: str) -> None:
    log(f"run_notebooks: {msg}")
    sys.exit(2)


def collect(targets: list[str]) -> list[Path]:
    """Notebook paths for the command-line targets: files as given, folders expanded to NN_*.ipynb."""
    found: list[Path] = []
    for t in targets:
        p = Path(t).resolve()
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            nbs = sorted(
                (q for q in p.rglob("*.ipynb") if NUMBERED.fullmatch(q.name) and ".ipynb_checkpoints" not in q.parts),
                key=lambda q: q.relative_to(p).parts,
            )
            if not nbs:
                usage_error(f"no NN_*.ipynb notebooks under {t}")
            found.extend(nbs)
        else:
            usage_error(f"no such notebook or folder: {t}")
    return found


def output_path(nb: Path, out_dir: Path) -> Path:
    """results/notebooks/<path below notebooks/>, or <out_dir>/<file name> for notebooks elsewhere."""
    try:
        return out_dir / nb.relative_to(NOTEBOOKS)
    except ValueError:
        return out_dir / nb.name


def write_atomically(nb, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def use_cuda_feature(nb, rel: str) -> None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        lines = cell.source.split("\n")
        for j, line in enumerate(lines):
            m = KIT_DEP.match(line)
            if m and "features" not in m.group(2):
                lines[j] = f'{m.group(1)}{m.group(2).rstrip().rstrip(",")}, features = ["cuda"] }}'
                log(f"  note: --device cuda: cell {i} of {rel} now reads: {lines[j].strip()}")
            elif m and '"cuda"' not in m.group(2):
                log(f"  warning: --device cuda: cell {i} of {rel} sets interp_kit's features without \"cuda\"")
        cell.source = "\n".join(lines)


class CellPanicked(Exception):
    """A cell printed a Rust panic or a `?` error. evcxr (with its default :preserve_vars_on_panic 1)
    catches both, prints them to stderr and reports success, so the runner checks for them."""


class Client(NotebookClient):
    """NotebookClient that reports each code cell, echoes its printed output and remembers which
    cell ran last (the one to blame when execution stops)."""

    def __init__(self, nb, quiet: bool, **kw):
        super().__init__(nb, on_cell_execute=self._started, on_cell_executed=self._finished, **kw)
        self.quiet = quiet
        self.current: int | None = None
        self.t0 = 0.0

    def _started(self, cell, cell_index):
        self.current, self.t0 = cell_index, time.monotonic()
        head = cell.source.strip().split("\n")[0][:80]
        log(f"  cell {cell_index}: {head}")

    async def _drain_late_output(self, parent_msg_id: str, cell, cell_index: int) -> None:
        deadline = time.monotonic() + LATE_OUTPUT_GRACE_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await ensure_async(self.kc.iopub_channel.get_msg(timeout=left))
            except queue.Empty:
                return
            if msg["parent_header"].get("msg_id") == parent_msg_id and msg["msg_type"] == "stream":
                self.process_message(msg, cell, cell_index)

    async def _finished(self, cell, cell_index, execute_reply):
        await self._drain_late_output(execute_reply["parent_header"].get("msg_id"), cell, cell_index)
        stderr = ANSI.sub("", "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stderr"))
        m = PANIC.search(stderr)
        if m:  # evcxr catches the panic and replies "ok": make it fail the cell here
            raise CellPanicked("\n".join(stderr[m.start():].split("\n")[:12]))
        if stderr.strip() and "allow-stderr" not in cell.get("metadata", {}).get("tags", []):
            # evcxr prints a top-level `?` error to stderr and replies "ok" as well.
            raise CellPanicked("the cell wrote to stderr (a `?` error?); tag it allow-stderr if that is expected:\n"
                               + "\n".join(stderr.strip().split("\n")[:12]))
        log(f"  cell {cell_index}: done in {time.monotonic() - self.t0:.1f} s")

    def output(self, outs, msg, display_id, cell_index):
        if not self.quiet and msg["msg_type"] == "stream":
            for line in ANSI.sub("", msg["content"]["text"]).rstrip("\n").split("\n"):
                log(f"    | {line[:300]}")
        return super().output(outs, msg, display_id, cell_index)


def report_failure(nb, index: int | None, err: BaseException, rel: str) -> None:
    log(f"\nrun_notebooks: FAILED {rel}")
    if index is None:
        log(f"  before any cell ran (kernel start-up): {type(err).__name__}: {err}")
        return
    cell = nb.cells[index]
    src = cell.source.strip().split("\n")
    log(f"  failing cell: index {index} (0-based, counting every cell), execution count {cell.get('execution_count')}")
    log("  source" + (f" (first 10 of {len(src)} lines)" if len(src) > 10 else "") + ":")
    for line in src[:10]:
        log(f"    > {line}")
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if isinstance(err, CellTimeoutError):
        log(f"  error: the cell timed out ({err})")
    elif isinstance(err, DeadKernelError):
        log("  error: the kernel died while running this cell")
    elif isinstance(err, CellPanicked):
        log("  error: the cell panicked or returned an error:")
        for line in str(err).split("\n"):
            log(f"    ! {line}")
        return
    if errors:
        for o in errors:
            log(f"  error: {o.get('ename')}: {ANSI.sub('', str(o.get('evalue', '')))}")
            for line in ANSI.sub("", "\n".join(o.get("traceback", []))).split("\n")[-40:]:
                log(f"    ! {line}")
    elif not isinstance(err, (CellTimeoutError, DeadKernelError)):
        log(f"  error: {type(err).__name__}: {ANSI.sub('', str(err))[-4000:]}")
    stderr = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stderr")
    if stderr.strip():
        log("  the cell's stderr (last 20 lines):")
        for line in ANSI.sub("", stderr).rstrip().split("\n")[-20:]:
            log(f"    ! {line}")


def stop_kernel(client: NotebookClient) -> None:
    """After a failed kernel start nbclient leaves its exit-time cleanup registered (it then fails
    noisily at exit); stop a kernel that may still run now and drop that hook."""
    if client.km is not None:
        try:
            client._cleanup_kernel()
        except Exception:  # the kernel is gone already: nothing to stop
            pass
    atexit.unregister(client._cleanup_kernel)


def run_one(path: Path, out_dir: Path, args) -> bool:
    rel = os.path.relpath(path, ROOT)
    out = output_path(path, out_dir)
    nb = nbformat.read(path, as_version=4)
    if args.device == "cuda":
        use_cuda_feature(nb, rel)
    client = Client(
        nb,
        quiet=args.quiet,
        kernel_name="rust",
        timeout=args.timeout,
        startup_timeout=300,
        record_timing=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    log(f"run_notebooks: {rel} (device {args.device}, per-cell timeout {args.timeout} s)")
    t0 = time.monotonic()
    try:
        client.execute()
    except Exception as err:  # CellExecutionError, CellTimeoutError, DeadKernelError, start-up failures
        report_failure(nb, client.current, err, rel)
        stop_kernel(client)
        if client.current is not None:
            failed = out.with_name(out.stem + ".failed.ipynb")
            write_atomically(nb, failed)
            log(f"  partly executed copy: {os.path.relpath(failed, Path.cwd())}")
        return False
    write_atomically(nb, out)
    out.with_name(out.stem + ".failed.ipynb").unlink(missing_ok=True)
    log(f"run_notebooks: ok {rel} in {time.monotonic() - t0:.1f} s -> {os.path.relpath(out, Path.cwd())}")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help="notebooks or folders")
    ap.add_argument("--all", action="store_true", help="every NN_*.ipynb under notebooks/")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=os.environ.get("INTERP_KIT_DEVICE", "cpu"))
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("INTERP_KIT_CELL_TIMEOUT", "172800")),
                    help="seconds per cell (default 48 h: a fast-mode sweep cell runs for hours on 2 cores; "
                         "scripts/test.sh sets 3600 for its ci-size runs)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "results" / "notebooks")
    ap.add_argument("--quiet", action="store_true", help="do not echo what the cells print")
    args = ap.parse_args()
    if args.all == bool(args.targets):
        ap.error("give notebooks/folders, or --all")
    notebooks = collect([str(NOTEBOOKS)] if args.all else args.targets)

    os.environ["INTERP_KIT_ROOT"] = str(ROOT)
    os.environ["INTERP_KIT_DEVICE"] = args.device
    os.environ.setdefault("INTERP_KIT_CACHE", str(Path.home() / ".cache" / "interp_kit"))
    out_dir = args.out_dir.resolve()

    t0 = time.monotonic()
    for i, path in enumerate(notebooks):
        if not run_one(path, out_dir, args):
            log(f"run_notebooks: stopped at notebook {i + 1} of {len(notebooks)}; {i} passed before it")
            return 1
    log(f"run_notebooks: all {len(notebooks)} notebooks passed in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
