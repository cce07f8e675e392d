#!/usr/bin/env bash
# Tests scripts/run_notebooks.sh on the fixtures in tests/notebooks/ (plain Rust, no crates: ~1 min):
#   pass.ipynb                      -> exit 0 and an executed copy with the cell's output
#   fail_panic.ipynb pass.ipynb     -> exit 1, names cell 2 and its panic, runs neither cell 3 nor pass.ipynb
#   fail_compile.ipynb              -> exit 1, names cell 2 and its compile error
#   fail_question_mark.ipynb        -> exit 1, names cell 2 and the error its `?` returned
#   kit_one_copy.ipynb              -> exit 0: the kit loaded as interp_kit_dylib is one copy in every
#                                      cell (tensor ids keep counting; a gradient through a model loaded
#                                      in an earlier cell equals the one computed in the loading cell),
#                                      built with the workspace's Cargo.lock versions (check_shared_build.py
#                                      on the build dir the fixture prints)
#   kit_static_copy_refused.ipynb   -> exit 1: with a plain `:dep interp_kit`, a later cell's gradient
#                                      through that model is refused with an error naming the fix
# The last two load the kit on the tiny Qwen2 fixture (about 1 min more, on a warm build).
# Needs scripts/setup.sh to have run.
#
#   scripts/test_runner.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FX=$ROOT/tests/notebooks
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

check() {  # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok:   $name"
  else failed=$((failed + 1)); echo "FAIL: $name"; fi
}

run() {  # run CASE NOTEBOOK...: runs the runner, keeps its exit status in $tmp/CASE.rc, output in $tmp/CASE.log
  local case=$1; shift
  set +e
  "$ROOT/scripts/run_notebooks.sh" --out-dir "$tmp/$case" "$@" >"$tmp/$case.log" 2>&1
  echo $? >"$tmp/$case.rc"
  set -e
  sed 's/^/    /' "$tmp/$case.log"
}
rc() { cat "$tmp/$1.rc"; }
has() { grep -qF -- "$2" "$tmp/$1.log"; }

run pass "$FX/pass.ipynb"
check "passing notebook: exit 0" test "$(rc pass)" = 0
check "passing notebook: executed copy has the cell's output" grep -qF 'answer = 42' "$tmp/pass/pass.ipynb"

run panic "$FX/fail_panic.ipynb" "$FX/pass.ipynb"
check "panicking cell: exit non-zero" test "$(rc panic)" != 0
check "panicking cell: names cell 2" has panic "failing cell: index 2"
check "panicking cell: shows the panic message" has panic "deliberate panic from the runner fixture"
check "panicking cell: later cell not run" bash -c "! grep -qF MUST-NOT-RUN '$tmp/panic.log'"
check "panicking cell: next notebook not run" test ! -e "$tmp/panic/pass.ipynb"
check "panicking cell: partly executed copy kept" test -f "$tmp/panic/fail_panic.failed.ipynb"

run compile "$FX/fail_compile.ipynb"
check "compile error: exit non-zero" test "$(rc compile)" != 0
check "compile error: names cell 2" has compile "failing cell: index 2"
check "compile error: shows rustc's error" has compile "mismatched types"
check "compile error: later cell not run" bash -c "! grep -qF MUST-NOT-RUN '$tmp/compile.log'"

run qmark "$FX/fail_question_mark.ipynb"
check "? error: exit non-zero" test "$(rc qmark)" != 0
check "? error: names cell 2" has qmark "failing cell: index 2"
check "? error: shows the error" has qmark "invalid digit"
check "? error: later cell not run" bash -c "! grep -qF MUST-NOT-RUN '$tmp/qmark.log'"

run onecopy "$FX/kit_one_copy.ipynb"
check "kit as one shared library: exit 0" test "$(rc onecopy)" = 0
check "kit as one shared library: same gradients in a later cell" has onecopy "same gradients in a later cell"
built_dir=$(sed -n 's/^ *| evcxr build dir: //p' "$tmp/onecopy.log" | head -n 1)
check "kit as one shared library: names its build dir, which has a Cargo.lock" test -f "$built_dir/Cargo.lock"
check "kit as one shared library: built with the workspace's Cargo.lock (check_shared_build.py)" \
  "${INTERP_KIT_CACHE:-$HOME/.cache/interp_kit}/venv/bin/python" "$ROOT/scripts/check_shared_build.py" "${built_dir:-/nonexistent}"

run static "$FX/kit_static_copy_refused.ipynb"
check "kit linked into each cell: exit non-zero" test "$(rc static)" != 0
check "kit linked into each cell: gradient refused in cell 3" has static "failing cell: index 3"
check "kit linked into each cell: error names the fix" has static "interp_kit_dylib"
check "kit linked into each cell: later cell not run" bash -c "! grep -qF MUST-NOT-RUN '$tmp/static.log'"

echo "runner tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
