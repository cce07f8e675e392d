#!/usr/bin/env bash
# Create the peer-benchmark Python env used by scripts/bench_peers.py and scripts/bench.sh:
# torch (run on CPU), transformers, peft, gguf and llama-cpp-python, at the exact versions of
# scripts/peer_requirements.txt (the refvenv's pip freeze + llama-cpp-python 0.3.36).
#
#   bash scripts/setup_peers.sh                      # -> $INTERP_KIT_CACHE/peervenv (default ~/.cache/interp_kit)
#   PEER_VENV=~/.cache/interp_kit/refvenv bash scripts/setup_peers.sh   # top up an existing venv instead
#
# Only PyPI is used. torch's PyPI wheel pulls its CUDA runtime wheels (~5 GiB in all); no
# CPU-only torch wheel is on PyPI. llama-cpp-python has no wheel on PyPI: it is built from its
# sdist (~11 min on 2 cores, at nice 19) with llama.cpp's tests/examples/tools/server off,
# GGML_NATIVE=ON (so the library is tuned to, and only runs on, this kind of CPU; on a CPU with
# AMX, the AVX-512 instructions without ggml's AMX code, see below), the build
# tools pinned by scripts/peer_build_constraints.txt. The built wheel is kept in
# $INTERP_KIT_CACHE/peer_wheels and reused on the next run. Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${INTERP_KIT_CACHE:-$HOME/.cache/interp_kit}"
VENV="${PEER_VENV:-$CACHE/peervenv}"
PY="${PYTHON:-python3}"
REQ="$ROOT/scripts/peer_requirements.txt"
BUILD_CONSTRAINTS="$ROOT/scripts/peer_build_constraints.txt"
WHEELS="$CACHE/peer_wheels"
LCP_VERSION="$(sed -n 's/^llama-cpp-python==//p' "$REQ")"

log() { echo "setup_peers: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    log "note: the pins were taken under Python 3.11; $("$PY" --version) may resolve differently"
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
mkdir -p "$WHEELS"

# 1. Everything but llama-cpp-python, exact versions.
log "installing the pinned Python packages"
grep -v '^llama-cpp-python==' "$REQ" > "$WHEELS/.req-no-llama.txt"
"${PIP[@]}" install -r "$WHEELS/.req-no-llama.txt"

# 2. llama-cpp-python: reuse a wheel built here before, else build it from the PyPI sdist.
if "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LCP_VERSION')" 2>/dev/null; then
  log "llama-cpp-python $LCP_VERSION already installed"
else
  if ! ls "$WHEELS"/llama_cpp_python-"$LCP_VERSION"-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $LCP_VERSION from source (nice 19; ~11 min on 2 cores)"
    export CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON"
    # A CPU with AMX (Intel Sapphire Rapids and later): the native build turns on ggml's AMX
    # code, which segfaulted in the first decode on such a host (a VM; session 22). Build for
    # the same AVX-512 / VNNI / BF16 instructions without AMX instead.
    if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
      log "CPU has AMX: building llama.cpp for AVX-512/VNNI/BF16 without its AMX code"
      CMAKE_ARGS="${CMAKE_ARGS/-DGGML_NATIVE=ON/-DGGML_NATIVE=OFF} -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    fi
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
    bc=()
    if "${PIP[@]}" install --help 2>/dev/null | grep -q -- '--build-constraint'; then
      bc=(--build-constraint "$BUILD_CONSTRAINTS")
    else
      export PIP_CONSTRAINT="$BUILD_CONSTRAINTS"  # older pip applies it to the isolated build env
    fi
    nice -n 19 "${PIP[@]}" wheel --no-deps --no-binary llama-cpp-python "${bc[@]+"${bc[@]}"}" \
      -w "$WHEELS" "llama-cpp-python==$LCP_VERSION"
    unset PIP_CONSTRAINT
  fi
  "${PIP[@]}" install --no-deps "$WHEELS"/llama_cpp_python-"$LCP_VERSION"-*.whl
fi

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import gguf, llama_cpp, peft, torch, transformers  # all importable
print("setup_peers: ok: " + ", ".join(f"{p} {md.version(p)}" for p in ("torch", "transformers", "peft", "gguf", "llama-cpp-python")))
EOF
echo "$VENV/bin/python"
