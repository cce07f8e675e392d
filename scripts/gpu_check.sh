#!/usr/bin/env bash
# The kit on a GPU (issue 23 §4): the CUDA build's parity, laws and one study at CI size, with a
# markdown report. UNVERIFIED: written without a GPU; nothing here has run on one yet.
#
#   scripts/gpu_check.sh prepare   # on the build host (no GPU needed): build the `--features cuda` test
#                                  # binaries (scripts/check_cuda_build.sh) and pack them into .gpu_check/
#   scripts/gpu_check.sh run       # on the GPU host: run the checks, write results/gpu_check/<stamp>.md
#
# Why two halves: the lent GPU machines have the CUDA driver and libraries but no Rust toolchain and
# no network, so the test binary is built here and carried there (.gpu_check/, git-ignored; one
# binary, tests/gpu_check.rs, so that it fits what the device tool carries). `run` builds them itself instead when the GPU host has cargo and no packed
# binaries. With the device tool, from the checkout the tool sends (it sends the session's own
# checkout, not a helper's worktree):
#   scripts/gpu_check.sh prepare            # here
#   run(command="scripts/gpu_check.sh run", carry=[".gpu_check"], timeout_s=600)
# The report and the step logs come back through $OUT (report.md, logs.txt).
#
# What `run` checks, each step under its own time limit inside one budget (GPU_CHECK_BUDGET, 540 s),
# in priority order (a step that no longer fits is reported as not run):
#   parity     tests/parity.rs on CUDA against the committed HF references: f32 (bound 1e-4), then bf16
#              (bound 1e-1); prints each family's max relative error
#   laws       tests/laws.rs: batching, KV cache, hooks, finite-difference gradients (f64), device identity
#   introspect tests/introspection_kit.rs: prefix-gradient finite differences, per-row steering,
#              steer-then-remove (single and batched, with and without an adapter)
#   study      tests/introspection_study.rs's CI-size run of every phase of the introspection study on
#              the tiny Qwen2 fixture, model on CUDA (INTERP_KIT_DEVICE=cuda, as `device = "auto"`
#              in the study configs resolves it)
#   notebook   notebooks/introspection/smoke.ipynb at CI size with `--device cuda`, only where the
#              notebook toolchain (scripts/setup.sh) and the embedded model exist on the GPU host
#              (GPU_CHECK_NOTEBOOK=0 leaves it out)
# The tests read INTERP_KIT_TEST_DEVICE (cpu | cuda | cuda:N) and INTERP_KIT_TEST_DTYPE (f32 | bf16);
# see tests/common/mod.rs. GPU_CHECK_DEVICE (default cuda) sets both device variables; `cpu` is a dry
# run of this script's plumbing on a host without a GPU (packed CPU binaries; no nvidia-smi needed).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PACK=$ROOT/.gpu_check
# One binary (tests/gpu_check.rs: parity, laws, introspection_kit, introspection_study as modules).
TESTS=(gpu_check)
CARGO_TEST=(cargo test --no-run --features cuda -p interp_kit --test gpu_check --message-format=json)
# The executables named in cargo's JSON messages (stdin) for the targets given as arguments.
PICK_EXES='
import json, sys
want = set(sys.argv[1:])
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
'

log() { echo "gpu_check: $*" >&2; }
die() { log "$*"; exit 1; }

# ------------------------------------------------------------------------------------------- prepare
prepare() {
  local t0=$SECONDS
  # The toolchain and build environment of scripts/check_cuda_build.sh (installed on first use).
  eval "$("$ROOT/scripts/check_cuda_build.sh" env)"
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  # The combined test binary, in check_cuda_build.sh's target dir (its dependencies are shared with
  # that script's builds).
  local listing t1=$SECONDS
  listing=$(nice -n "${INTERP_KIT_CUDA_NICE:-19}" "${CARGO_TEST[@]}" | python3 -c "$PICK_EXES" "${TESTS[@]}")
  log "test binary gpu_check built in $((SECONDS - t1)) s"
  rm -rf "$PACK"
  mkdir -p "$PACK/bin"
  local name exe
  while read -r name exe; do
    [[ -n $name ]] || continue
    cp "$exe" "$PACK/bin/$name"
    strip -s "$PACK/bin/$name" 2>/dev/null || true   # symbols only: panics still name the test and line
  done <<< "$listing"
  for name in "${TESTS[@]}"; do
    [[ -x $PACK/bin/$name ]] || die "no test binary for $name in the cuda build ($CARGO_TARGET_DIR)"
  done
  {
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "manifest_dir: $ROOT/interp_kit"
    echo "nvcc: $(nvcc --version | sed -n 's/.*release //p')"
    echo "compute_cap: $CUDA_COMPUTE_CAP"
    echo "rustc: $(rustc -V)"
    echo "rustflags: $RUSTFLAGS"
  } > "$PACK/manifest.txt"
  (cd "$PACK/bin" && sha256sum "${TESTS[@]}" >> "$PACK/manifest.txt")
  # xz: on every Linux, and the stripped binaries shrink to about a fifth.
  xz -T0 -6 "$PACK"/bin/*
  local size
  size=$(du -sm "$PACK" | cut -f1)
  log "packed ${#TESTS[@]} test binaries into $PACK (${size} MiB) in $((SECONDS - t0)) s"
  ((size <= 60)) || log "warning: $PACK is ${size} MiB; the device tool carries 64 MiB in all"
}

# ----------------------------------------------------------------------------------------------- run
BUDGET=${GPU_CHECK_BUDGET:-540}
T_START=$SECONDS
remaining() { echo $((BUDGET - (SECONDS - T_START))); }

# Directories holding the CUDA libraries the binaries link (cuBLAS, cuRAND, NVRTC, cudart 13) and the
# driver, wherever this host keeps them: a system toolkit, the driver mount, or Python wheels.
lib_dirs() {
  local d
  for d in "${CUDA_HOME:-}/lib64" "${CUDA_HOME:-}/lib" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
    [[ -d $d ]] && echo "$d"
  done
  local py
  for py in python3 /opt/torch/.venv/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || [[ -x $py ]] || continue
    "$py" - <<'EOF' 2>/dev/null || true
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()] + sys.path)
for r in sorted(roots):
    for d in glob.glob(os.path.join(r, "nvidia", "*", "lib")):
        print(d)
EOF
  done
}

# Adds to LD_LIBRARY_PATH each directory that holds a library `ldd` cannot find for $1.
resolve_libs() {
  local bin=$1 missing lib d
  missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}')
  [[ -z $missing ]] && return 0
  local dirs
  dirs=$(lib_dirs | awk '!seen[$0]++')
  for lib in $missing; do
    for d in $dirs; do
      if [[ -e $d/$lib ]]; then
        case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *) export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}";; esac
        break
      fi
    done
  done
  missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}')
  [[ -z $missing ]] || { log "$bin: libraries not found on this host: $(echo $missing)"; return 1; }
}

# Builds the test binaries on the GPU host itself (cargo and nvcc there, nothing packed).
build_here() {
  local cap
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$cap}
  export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/gpu_check}
  log "building the cuda test binaries here (compute capability $CUDA_COMPUTE_CAP)"
  timeout "$(remaining)" "${CARGO_TEST[@]}" 2>"$LOGDIR/build.log" \
    | python3 -c "$PICK_EXES" "${TESTS[@]}" | while read -r name exe; do cp "$exe" "$BIN/$name"; done
  echo "manifest_dir: $ROOT/interp_kit" > "$BIN/manifest.txt"
}

ROWS=()      # report table rows
FAILED=0     # a step failed or timed out: exit 1
NOTRUN=0     # a step did not fit the budget (and none failed): exit 3
# step NAME LIMIT_S ENV... -- BINARY ARGS...
step() {
  local name=$1 limit=$2; shift 2
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  local left
  left=$(($(remaining) - 5))
  if ((left < 20)); then
    ROWS+=("| $name | not run (budget spent) | | |")
    NOTRUN=1
    log "$name: not run, the budget of ${BUDGET} s is spent"
    return 0
  fi
  ((limit > left)) && limit=$left
  local logf=$LOGDIR/$name.log t0=$SECONDS rc=0
  log "$name: $* (limit ${limit} s)"
  (cd "$ROOT/interp_kit" && env "${envs[@]}" timeout --kill-after=10 "$limit" "$@") >"$logf" 2>&1 || rc=$?
  local secs=$((SECONDS - t0)) summary result
  summary=$(grep -E '^test result:' "$logf" | tail -1 | sed 's/^test result: //; s/; finished.*//' || true)
  if ((rc == 0)); then
    result=ok
  elif ((rc == 124 || rc == 137)); then
    result="TIMEOUT after ${limit} s"; FAILED=1
  else
    result="FAILED (exit $rc)"; FAILED=1
  fi
  ROWS+=("| $name | $result | ${summary:-} | $secs |")
  log "$name: $result ${summary:+($summary)} in ${secs} s"
}

run() {
  STAMP=$(date -u +%Y%m%dT%H%M%SZ)
  local out=$ROOT/results/gpu_check
  LOGDIR=$out/$STAMP
  mkdir -p "$LOGDIR"
  local report=$out/$STAMP.md
  local dev=${GPU_CHECK_DEVICE:-cuda} gpu
  if [[ $dev == cpu ]]; then
    gpu="none: GPU_CHECK_DEVICE=cpu, a dry run of the script on the CPU"
  else
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this is not a GPU host (GPU_CHECK_DEVICE=cpu for a dry run)"
    gpu=$(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1) \
      || die "nvidia-smi found no GPU: $gpu"
  fi
  log "GPU: $gpu"

  BIN=/tmp/interp_kit_gpu_check_bin
  rm -rf "$BIN"; mkdir -p "$BIN"
  local source
  if compgen -G "$PACK/bin/*.xz" >/dev/null; then
    for f in "$PACK"/bin/*.xz; do
      if command -v xz >/dev/null; then
        xz -dc "$f" > "$BIN/$(basename "$f" .xz)"
      else   # no xz-utils: Python's lzma reads the same format
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$BIN/$(basename "$f" .xz)"
      fi
    done
    cp "$PACK/manifest.txt" "$BIN/manifest.txt"
    source="packed in .gpu_check (scripts/gpu_check.sh prepare)"
  elif command -v cargo >/dev/null && command -v nvcc >/dev/null; then
    build_here || die "building the cuda test binaries here failed: $LOGDIR/build.log"
    source="built on this host"
  else
    die "no packed test binaries in $PACK and no cargo+nvcc here: run 'scripts/gpu_check.sh prepare' on the build host and carry .gpu_check"
  fi
  chmod +x "$BIN"/* 2>/dev/null || true
  local t
  for t in "${TESTS[@]}"; do
    [[ -x $BIN/$t ]] || die "test binary $t missing ($source)"
    resolve_libs "$BIN/$t" || die "cannot run $t: see the missing libraries above"
  done
  # The binaries find the fixtures through the source path they were compiled in
  # (env!("CARGO_MANIFEST_DIR")/../tests/fixtures): point that path at this checkout.
  local mdir
  mdir=$(sed -n 's/^manifest_dir: //p' "$BIN/manifest.txt")
  if [[ -n $mdir && $mdir != "$ROOT/interp_kit" && ! -e $mdir ]]; then
    mkdir -p "$(dirname "$(dirname "$mdir")")"
    ln -s "$ROOT" "$(dirname "$mdir")"
    log "linked $(dirname "$mdir") -> $ROOT (the binaries' compile-time source path)"
  fi
  [[ -d $mdir/../tests/fixtures/parity ]] || die "fixtures not found under $mdir/../tests/fixtures"

  local CUDA_ENV=(INTERP_KIT_TEST_DEVICE="$dev" INTERP_KIT_DEVICE="$dev" RUST_BACKTRACE=1)
  local B=$BIN/gpu_check
  # The gradient, per-row steering and steer-then-remove tests (the rest of the file compares hand
  # computations with CPU weights).
  local KIT=(introspection_kit::prefix_gradient introspection_kit::a_batch_of_differently_steered_rows
             introspection_kit::steer_then_remove introspection_kit::batched_steer_then_remove)
  # f32 first (the references' precision), then bf16 (the kit's default dtype on CUDA).
  step parity_f32 120 "${CUDA_ENV[@]}" INTERP_KIT_TEST_DTYPE=f32 -- "$B" parity:: --nocapture
  step laws_f32 120 "${CUDA_ENV[@]}" INTERP_KIT_TEST_DTYPE=f32 -- "$B" laws::
  step introspect_f32 150 "${CUDA_ENV[@]}" INTERP_KIT_TEST_DTYPE=f32 -- "$B" "${KIT[@]}"
  step study_ci_f32 180 "${CUDA_ENV[@]}" INTERP_KIT_TEST_DTYPE=f32 -- "$B" introspection_study::tiny_qwen2_every_phase
  step parity_bf16 120 "${CUDA_ENV[@]}" INTERP_KIT_TEST_DTYPE=bf16 -- "$B" parity:: --nocapture
  step laws_bf16 120 "${CUDA_ENV[@]}" INTERP_KIT_TEST_DTYPE=bf16 -- "$B" laws::
  step introspect_bf16 150 "${CUDA_ENV[@]}" INTERP_KIT_TEST_DTYPE=bf16 -- "$B" "${KIT[@]}"
  local nb_note
  local cache=${INTERP_KIT_CACHE:-$HOME/.cache/interp_kit}
  if [[ ${GPU_CHECK_NOTEBOOK:-1} == 0 ]]; then
    ROWS+=("| notebook_smoke | not run: GPU_CHECK_NOTEBOOK=0 | | |")
  elif [[ -x $cache/venv/bin/python ]] && command -v evcxr_jupyter >/dev/null && ls "$cache"/models/*.gguf >/dev/null 2>&1; then
    step notebook_smoke 300 INTERP_KIT_DEVICE="$dev" INTERP_KIT_STUDY_MODE=ci -- "$ROOT/scripts/run_notebooks.sh" --device "$dev" --quiet --out-dir "$LOGDIR/notebooks" "$ROOT/notebooks/introspection/smoke.ipynb"
  else
    nb_note="not run: no notebook toolchain (scripts/setup.sh: Jupyter venv, evcxr_jupyter) or embedded model on this host; the study step above runs the same phases at CI size on a tiny model"
    ROWS+=("| notebook_smoke | $nb_note | | |")
  fi

  {
    echo "# GPU check $STAMP"
    echo
    echo "- GPU: $gpu"
    echo "- host: $(hostname); $(uname -sr)"
    echo "- test binaries: $source"
    sed 's/^/  - /' "$BIN/manifest.txt" | grep -v '^  - [0-9a-f]\{64\} ' || true
    echo "- LD_LIBRARY_PATH: ${LD_LIBRARY_PATH:-}"
    echo "- budget: ${BUDGET} s, used $((SECONDS - T_START)) s"
    echo
    echo "| step | result | tests | seconds |"
    echo "| --- | --- | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "## Parity: largest relative error per family"
    echo
    echo '```'
    cat "$LOGDIR"/parity_*.log 2>/dev/null | grep -E '^parity ' || echo "(none printed)"
    echo '```'
    local f
    for f in "$LOGDIR"/*.log; do
      [[ -e $f ]] || continue
      if grep -qE 'FAILED|panicked' "$f"; then
        echo
        echo "## $(basename "$f" .log): failures"
        echo
        echo '```'
        grep -E -A12 "panicked at|^failures:|error:" "$f" | head -80 || true
        echo '```'
      fi
    done
  } > "$report"
  cat "$LOGDIR"/*.log > "$LOGDIR/../$STAMP.logs.txt" 2>/dev/null || true
  if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
    cp "$report" "$OUT/report.md"
    cp "$LOGDIR/../$STAMP.logs.txt" "$OUT/logs.txt" 2>/dev/null || true
  fi
  log "report: $report"
  cat "$report"
  ((FAILED == 0)) || return 1
  ((NOTRUN == 0)) || return 3
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run   (see the header of this script)" >&2; exit 2 ;;
esac
