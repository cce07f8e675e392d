#!/usr/bin/env bash
# Run the whole benchmark in one go, on a quiet machine: interp_kit's Rust bench, then the peers
# (HF transformers + PEFT, llama.cpp via llama-cpp-python) on the same workloads, and write
# results/bench/<date>.md with one table (interp_kit | transformers | llama.cpp | ratio vs target).
#
#   scripts/bench.sh [--reps N] [--skip-rust] [--skip-transformers] [--skip-llamacpp] [--out FILE]
#
# Environment:
#   CARGO_TARGET_DIR   default $INTERP_KIT_CACHE/target
#   INTERP_KIT_CACHE   default ~/.cache/interp_kit (model, peer venv)
#   PEER_PY            python of the peer env; default $INTERP_KIT_CACHE/peervenv/bin/python,
#                      else $INTERP_KIT_CACHE/refvenv/bin/python if it has the packages
#                      (create the peer env with scripts/setup_peers.sh)
#
# Raw JSON goes to results/bench/<date>/{interp_kit,transformers,llamacpp}.json. Each implementation
# runs in its own process, one after another, on 2 threads. Takes ~10-20 min at --reps 3 (the
# transformers LoRA and gradient steps dominate). Nothing else should be running: the script warns
# when the 1-minute load average is above 0.5.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${INTERP_KIT_CACHE:-$HOME/.cache/interp_kit}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
MODEL="$CACHE/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DATE="$(date +%F)"
REPS=3
RUN_RUST=1 RUN_TF=1 RUN_LC=1
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --skip-rust) RUN_RUST=0; shift ;;
    --skip-transformers) RUN_TF=0; shift ;;
    --skip-llamacpp) RUN_LC=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$ROOT/results/bench/$DATE.md}"
RAW="$ROOT/results/bench/$DATE"
mkdir -p "$RAW"

log() { echo "bench.sh: $*" >&2; }

load1="$(cut -d' ' -f1 /proc/loadavg)"
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
  log "WARNING: load average $load1 — other work is running; timings will be pessimistic"
fi

[ -f "$MODEL" ] || { log "no model at $MODEL; fetching it"; bash "$ROOT/scripts/fetch_model.sh" >/dev/null; }

# Peer python: must import what each peer needs.
pick_peer_py() {
  local c
  for c in "${PEER_PY:-}" "$CACHE/peervenv/bin/python" "$CACHE/refvenv/bin/python"; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}
PY="$(pick_peer_py || true)"
has() { [ -n "$PY" ] && "$PY" -c "import $1" >/dev/null 2>&1; }
NOTES=()

if [ "$RUN_RUST" = 1 ]; then
  log "interp_kit (CARGO_TARGET_DIR=$CARGO_TARGET_DIR) ..."
  (cd "$ROOT" && cargo run --release --example bench -- --reps "$REPS" --json "$RAW/interp_kit.json" \
    --study-ids "$RAW/study_ids.json")
fi

if [ "$RUN_TF" = 1 ]; then
  if has "torch, transformers, peft, gguf"; then
    log "transformers + PEFT ($PY) ..."
    "$PY" "$ROOT/scripts/bench_peers.py" --impl transformers --reps "$REPS" --json "$RAW/transformers.json" \
      --study-ids "$RAW/study_ids.json"
  else
    log "no peer env with torch/transformers/peft/gguf (tried ${PY:-none}); create it with: bash scripts/setup_peers.sh"
    NOTES+=("transformers not run: no peer env (bash scripts/setup_peers.sh)")
  fi
fi

if [ "$RUN_LC" = 1 ]; then
  if has llama_cpp; then
    log "llama.cpp ($PY) ..."
    "$PY" "$ROOT/scripts/bench_peers.py" --impl llamacpp --reps "$REPS" --json "$RAW/llamacpp.json"
  else
    log "no peer env with llama_cpp (tried ${PY:-none}); create it with: bash scripts/setup_peers.sh"
    NOTES+=("llama.cpp not run: no peer env (bash scripts/setup_peers.sh)")
  fi
fi

[ -f "$RAW/interp_kit.json" ] || log "no $RAW/interp_kit.json: the interp_kit column will be empty"
note="reps $REPS; load average at start $load1"
# The machine kind: the CPU and which of the instructions issue 22 is about it has (a table is
# only comparable with one from the same kind; the kit's kernel level is in each run's manifest).
if [ -r /proc/cpuinfo ]; then
  field() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo | cut -d: -f2- | xargs; }
  flags=" $(field flags) "
  has=""
  for f in avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8; do
    case "$flags" in *" $f "*) has="$has $f" ;; esac
  done
  note="$note; CPU $(field 'model name') (family $(field 'cpu family') model $(field model)), has:${has:- none of avx2/avx512}${INTERP_KIT_SIMD:+; INTERP_KIT_SIMD=$INTERP_KIT_SIMD}"
fi
for n in "${NOTES[@]+"${NOTES[@]}"}"; do note="$note; $n"; done
TABLE_PY="${PY:-python3}"
"$TABLE_PY" "$ROOT/scripts/bench_table.py" --rust "$RAW/interp_kit.json" \
  --transformers "$RAW/transformers.json" --llamacpp "$RAW/llamacpp.json" --out "$OUT" --note "$note"
log "wrote $OUT"
