#!/usr/bin/env bash
# The loaders' fuzz tests (tests/fuzz_loaders.rs) with many more cases than scripts/test.sh runs
# (3000 per loader there), built like scripts/test.sh builds the tests (same flags, same target dir).
#
#   scripts/fuzz_long.sh [CASES] [SEED]
#
# CASES: cases per loader (default 100000; one loader's 3000 take a few seconds of CPU, so the
# default is tens of minutes). SEED: proptest's RNG seed (default: random); it is printed first, and
# the same CASES and SEED rerun the same cases. A failure prints the case (file, mutation) and
# proptest's minimal failing input. FUZZ_SURVEY=1 keeps going after a failure and lists every kind
# of failure at the end of each loader's test; FUZZ_PRINT_ERRORS=1 prints every error message.
# FUZZ_THREADS (default 2) loaders run at once. Extra arguments after SEED go to the test binary
# (e.g. a test name to fuzz one loader: scripts/fuzz_long.sh 20000 7 gguf_model_files).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
CASES=${1:-100000}
SEED=${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
shift $(( $# < 2 ? $# : 2 ))
CACHE=${INTERP_KIT_CACHE:-$HOME/.cache/interp_kit}
HOST=$(rustc -vV | sed -n 's/^host: //p')
# The flags and target dir of scripts/test.sh (keep in step with it).
export CARGO_ENCODED_RUSTFLAGS=$'-Cprefer-dynamic\x1f-Ctarget-cpu=native'
export CARGO_INCREMENTAL=0
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/evcxr/slot-0/target}
unset RUSTFLAGS
echo "fuzz_long: $CASES cases per loader, PROPTEST_RNG_SEED=$SEED"
# The example binaries, for the test that runs them on a corrupt model.
cargo build -p interp_kit --locked --target "$HOST" --example dump --example judge_code --example introspect
PROPTEST_CASES=$CASES PROPTEST_RNG_SEED=$SEED \
  cargo test -p interp_kit --locked --target "$HOST" --test fuzz_loaders -- --test-threads="${FUZZ_THREADS:-2}" --nocapture "$@"
echo "fuzz_long: passed ($CASES cases per loader, PROPTEST_RNG_SEED=$SEED)"
