#!/usr/bin/env bash
# Execute notebooks headlessly with the Jupyter kernel `rust`; needs scripts/setup.sh to have run.
#
#   scripts/run_notebooks.sh --all                              # every notebooks/**/NN_*.ipynb, in order
#   scripts/run_notebooks.sh notebooks/inoculation_caps         # every NN_*.ipynb below a folder
#   scripts/run_notebooks.sh notebooks/inoculation_caps/00_smoke_positions.ipynb
#   options: --device cpu|cuda (exported as INTERP_KIT_DEVICE)  --timeout SECONDS per cell (48 h; env INTERP_KIT_CELL_TIMEOUT)
#            --out-dir DIR (results/notebooks)  --quiet (don't echo what cells print)
#
# Executed copies land in results/notebooks/; the run stops at the first failing notebook and exits 1,
# naming the failing cell. Details: scripts/run_notebooks.py.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${INTERP_KIT_CACHE:-$HOME/.cache/interp_kit}
mkdir -p "$CACHE"
INTERP_KIT_CACHE=$(cd "$CACHE" && pwd)
export INTERP_KIT_CACHE
PY=$INTERP_KIT_CACHE/venv/bin/python
if ! "$PY" -c 'import nbclient' 2>/dev/null; then
  echo "run_notebooks: no Jupyter venv at $INTERP_KIT_CACHE/venv: run scripts/setup.sh first" >&2
  exit 2
fi
# The kernelspec `rust` lives in the venv (scripts/setup.sh); JUPYTER_PATH would shadow it.
unset JUPYTER_PATH
exec "$PY" "$ROOT/scripts/run_notebooks.py" "$@"
