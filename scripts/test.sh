#!/usr/bin/env bash
# The project's test command (CI's .ci/run calls exactly this). Stages, each timed:
#   layers     scripts/check_layers.py: no module imports a layer above its own (lib.rs's map), no cycles
#   setup      scripts/setup.sh: evcxr_jupyter, Jupyter venv, kernel `rust`, model (idempotent)
#   cargo      cargo test for the workspace, built like the notebooks build the kit (below)
#   http       the HTTP judge's loopback tests (cargo feature http-judge)
#   runner     scripts/test_runner.sh: the notebook runner fails on a failing cell and names it
#   notebooks  scripts/run_notebooks.sh on the notebooks listed in NOTEBOOKS below (studies at ci size)
#   neox       the steering smoke notebook on the tiny GPT-NeoX fixture (configs/*_tiny_neox.toml)
#   (check)    scripts/check_shared_build.py: warns if the cargo and notebook builds stopped sharing
# On a fresh 2-core machine the first run took 73 min (setup 10, of it evcxr_jupyter 9.5; cargo 20;
# runner 15.5; notebooks 24; neox 1.5). 13 of the runner's minutes rebuilt crates at versions newer than
# Cargo.lock's, which the kernel no longer does (scripts/evcxr_kernel.sh), so expect about an hour.
# Later runs reuse everything under ${INTERP_KIT_CACHE:-~/.cache/interp_kit}.
#
#   scripts/test.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v rustc >/dev/null || { echo "test.sh: rustc not found (install Rust with rustup)" >&2; exit 1; }
CACHE=${INTERP_KIT_CACHE:-$HOME/.cache/interp_kit}
mkdir -p "$CACHE"
INTERP_KIT_CACHE=$(cd "$CACHE" && pwd)
export INTERP_KIT_CACHE

# One build of the dependencies for the tests and the notebooks: the tests build in the target dir of
# the notebook kernel's first evcxr slot (scripts/evcxr_kernel.sh) with the flags evcxr 0.22 gives
# cargo there (--target, and the flags scripts/evcxr_kernel.sh sets: evcxr's -Cprefer-dynamic plus
# -Ctarget-cpu=native, without which candle's quantized kernels run scalar code), and Cargo.toml's
# [profile.dev] copies the profile evcxr generates. On a fresh 2-core machine that saves a whole
# dependency build. scripts/check_shared_build.py says when the sharing breaks.
HOST=$(rustc -vV | sed -n 's/^host: //p')
KIT_RUSTFLAGS=$'-Cprefer-dynamic\x1f-Ctarget-cpu=native'   # keep equal to scripts/evcxr_kernel.sh
# CARGO_INCREMENTAL=0 below is also the kernel's (scripts/evcxr_kernel.sh says why).
EVCXR_TARGET_DIR=$INTERP_KIT_CACHE/evcxr/slot-0/target

# Notebooks executed headlessly as tests (paths relative to the repository root).
# The steering-reliability study runs end to end at CI size (INTERP_KIT_STUDY_MODE=ci: 4 prompts per
# split, 16 new tokens); `scripts/run_notebooks.sh --all` runs it at the config's size.
# The ALL-CAPS inoculation study (00-07) runs end to end at CI size (INTERP_KIT_STUDY_MODE=ci: 2
# calibration examples, 2 layers, 2 random directions, 2-step LoRA runs, 6 new tokens).
# The newer studies run their CI size through cargo tests on tiny fixtures (tests/<study>*.rs, every
# phase) plus one smoke notebook each on the embedded model (every phase in one cell), which keeps
# the notebook stage's cost to one kernel start per study.
NOTEBOOKS=(
  notebooks/inoculation_caps/00_smoke_positions.ipynb
  notebooks/inoculation_caps/01_data.ipynb
  notebooks/inoculation_caps/02_trait_directions.ipynb
  notebooks/inoculation_caps/03_gradient_alignment.ipynb
  notebooks/inoculation_caps/04_loss_matched_control.ipynb
  notebooks/inoculation_caps/05_random_specificity.ipynb
  notebooks/inoculation_caps/06_lora_finetunes.ipynb
  notebooks/inoculation_caps/07_plots.ipynb
  notebooks/steering_reliability/01_smoke.ipynb
  notebooks/steering_reliability/02_sweep.ipynb
  notebooks/steering_reliability/03_analysis.ipynb
  notebooks/insecure_code/00_smoke.ipynb
  notebooks/trait_monitoring/00_smoke.ipynb
  notebooks/introspection/smoke.ipynb
)

summary=() n_ok=0
finish() {
  local rc=$?
  echo
  echo "=== test.sh: timings"
  printf '  %s\n' "${summary[@]}"
  if [ "$rc" = 0 ]; then echo "stages: $n_ok passed, 0 failed"; else echo "stages: $n_ok passed, 1 failed"; fi
}
trap finish EXIT

stage() {  # stage NAME COMMAND...: runs and times one stage; a failure ends the script
  local name=$1; shift
  local t0=$SECONDS
  echo "=== test.sh: $name: $*"
  if ! "$@"; then
    summary+=("$(printf '%-10s FAILED after %4d s' "$name" $((SECONDS - t0)))")
    echo "=== test.sh: stage '$name' failed" >&2
    exit 1
  fi
  summary+=("$(printf '%-10s %4d s' "$name" $((SECONDS - t0)))")
  n_ok=$((n_ok + 1))
}

stage layers python3 scripts/check_layers.py --self-test
stage setup scripts/setup.sh
stage cargo env -u RUSTFLAGS CARGO_ENCODED_RUSTFLAGS="$KIT_RUSTFLAGS" CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$EVCXR_TARGET_DIR" \
  cargo test --workspace --locked --target "$HOST"
# The HTTP judge is behind a cargo feature (no network code in the default build): its loopback tests.
stage http env -u RUSTFLAGS CARGO_ENCODED_RUSTFLAGS="$KIT_RUSTFLAGS" CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$EVCXR_TARGET_DIR" \
  cargo test -p interp_kit --features http-judge --test http_judge --locked --target "$HOST"
stage runner scripts/test_runner.sh
rm -rf results/steering_reliability/run_001_ci   # the CI-size runs start fresh each time
rm -rf results/inoculation_caps/*_ci results/insecure_code/*_ci results/trait_monitoring/*_ci results/introspection/*_ci
stage notebooks env INTERP_KIT_STUDY_MODE=ci INTERP_KIT_CELL_TIMEOUT=3600 scripts/run_notebooks.sh "${NOTEBOOKS[@]}"
# A non-Qwen model through the steering study: the smoke notebook on the tiny GPT-NeoX fixture.
stage neox env INTERP_KIT_STUDY_MODE=ci INTERP_KIT_CELL_TIMEOUT=3600 STEERING_CONFIG=../../configs/steering_reliability_tiny_neox.toml \
  scripts/run_notebooks.sh --out-dir results/notebooks/tiny_neox notebooks/steering_reliability/01_smoke.ipynb
"$INTERP_KIT_CACHE/venv/bin/python" scripts/check_shared_build.py \
  || echo "test.sh: WARNING: see above; tests pass, but fresh machines now build the dependencies twice"
