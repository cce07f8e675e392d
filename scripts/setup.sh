#!/usr/bin/env bash
# Machine setup for running interp_kit notebooks, headlessly or in Jupyter. Idempotent: a second run
# only checks and refreshes small files. Needs cargo, python3 (with venv) and flock; the first run on a
# machine also needs crates.io and PyPI, and takes ~30 min on 2 cores (evcxr_jupyter compiles).
#
#   scripts/setup.sh
#
# Everything persistent lives outside the clone, under ${INTERP_KIT_CACHE:-~/.cache/interp_kit}:
#   evcxr-install-target/             cargo's target dir for installing evcxr_jupyter (to ~/.cargo/bin)
#   venv/                             Python with the pinned Jupyter packages (requirements-notebooks.txt)
#   venv/share/jupyter/kernels/rust/  kernelspec `rust`: the venv's jupyter finds it before any other
#   evcxr/config/                     the kernel's EVCXR_CONFIG_DIR (keeps ~/.config/evcxr out)
#   evcxr/slot-N/                     the kernel's build dirs (EVCXR_TMPDIR), see scripts/evcxr_kernel.sh
#   models/                           the embedded GGUF model (scripts/fetch_model.sh)
set -euo pipefail

EVCXR_VERSION=0.22.0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${INTERP_KIT_CACHE:-$HOME/.cache/interp_kit}
mkdir -p "$CACHE" && CACHE=$(cd "$CACHE" && pwd)   # absolute: it goes into kernel.json
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
export PATH="$CARGO_BIN:$PATH"
VENV=$CACHE/venv
unset JUPYTER_PATH   # it would shadow the venv's kernelspec (set only for evcxr --install below)
KERNEL_DIR=$VENV/share/jupyter/kernels/rust

say() { echo "setup: $*" >&2; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found (install Rust with rustup; looked in PATH and $CARGO_BIN)"
command -v python3 >/dev/null || die "python3 not found (CPython >= 3.9 with the venv module is needed)"
command -v flock >/dev/null || die "flock not found (Debian: apt-get install util-linux)"

# 1. evcxr_jupyter, pinned. Its target dir is kept in the cache, so an interrupted install resumes.
EVCXR=$CARGO_BIN/evcxr_jupyter
if [ -x "$EVCXR" ] && cargo install --list | grep -qx "evcxr_jupyter v$EVCXR_VERSION:"; then
  say "evcxr_jupyter $EVCXR_VERSION is installed ($EVCXR)"
else
  say "installing evcxr_jupyter $EVCXR_VERSION with cargo (about 26 min on 2 cores) ..."
  cargo install evcxr_jupyter --version "$EVCXR_VERSION" --locked \
      --target-dir "$CACHE/evcxr-install-target" \
    || die "cargo install evcxr_jupyter $EVCXR_VERSION failed (see above; is crates.io reachable?). Re-run $0 to resume."
  [ -x "$EVCXR" ] || die "cargo installed evcxr_jupyter, but not to $EVCXR (is CARGO_HOME or cargo's install.root set elsewhere?)"
fi

# 2. The Python venv with pinned Jupyter packages, reinstalled when the requirements file changes.
REQ=$ROOT/scripts/requirements-notebooks.txt
want=$(sha256sum "$REQ" | cut -d' ' -f1)
stamp=$VENV/.requirements.sha256
if "$VENV/bin/python" -c 'import nbclient, nbconvert' 2>/dev/null && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  say "venv is up to date ($VENV)"
else
  say "creating the Jupyter venv in $VENV ..."
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ" \
    || die "pip could not install $REQ into $VENV (is PyPI reachable?)"
  echo "$want" > "$stamp"
fi

# 3. Kernelspec `rust`. evcxr writes its own kernel.json and resources (logos, kernel.js, version.txt)
#    into $JUPYTER_PATH/kernels/rust; we then replace kernel.json so the kernel starts through our
#    launcher with a fixed environment. JUPYTER_PATH in that environment points evcxr's "is my
#    kernelspec out of date?" start-up check at this kernelspec (whose version.txt matches) instead
#    of ~/.local/share/jupyter.
JUPYTER_PATH="$VENV/share/jupyter" "$EVCXR" --install >/dev/null \
  || die "evcxr_jupyter --install failed"
install -m 755 "$ROOT/scripts/evcxr_kernel.sh" "$KERNEL_DIR/kernel.sh"
mkdir -p "$CACHE/evcxr/config"
"$VENV/bin/python" - "$KERNEL_DIR" "$CACHE" "$EVCXR" "$VENV/share/jupyter" <<'PY'
import json, os, sys
kernel_dir, cache, evcxr, jupyter_path = sys.argv[1:]
spec = {
    "argv": [os.path.join(kernel_dir, "kernel.sh"), "--control_file", "{connection_file}"],
    "display_name": "Rust",
    "language": "rust",
    "interrupt_mode": "message",
    "env": {
        "INTERP_KIT_CACHE": cache,
        "EVCXR_JUPYTER": evcxr,
        "EVCXR_CONFIG_DIR": os.path.join(cache, "evcxr", "config"),
        "JUPYTER_PATH": jupyter_path,
    },
}
tmp = os.path.join(kernel_dir, "kernel.json.tmp")
with open(tmp, "w") as f:
    json.dump(spec, f, indent=2)
os.replace(tmp, os.path.join(kernel_dir, "kernel.json"))
PY
"$VENV/bin/jupyter" kernelspec list 2>/dev/null | grep -q "^ *rust *$KERNEL_DIR\$" \
  || die "the venv's jupyter does not list kernel rust at $KERNEL_DIR"
say "kernel rust: $KERNEL_DIR"

# 4. The embedded default model.
model=$(INTERP_KIT_CACHE="$CACHE" "$ROOT/scripts/fetch_model.sh") || die "scripts/fetch_model.sh failed (see above)"
say "model: $model"
say "done. Headless: scripts/run_notebooks.sh --all. Interactive (not installed here):"
say "  $VENV/bin/pip install jupyterlab && $VENV/bin/jupyter lab   # kernel \"Rust\" (rust)"
