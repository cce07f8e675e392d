#!/usr/bin/env bash
# Tests scripts/run_notebooks.sh on the fixtures in tests/notebooks/ (plain Rust, no crates: ~1 min):
#   pass.ipynb                      -> exit 0 and an executed copy with the cell's output
#   fail_panic.ipynb pass.ipynb     -> exit 1, names cell 2 and its panic, runs neither cell 3 nor pass.ipynb
#   fail_compile.ipynb              -> exit 1, names cell 2 and its compile error
#   fail_question_mark.ipynb        -> exit 1, names cell 2 and the error its `?` returned
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

echo "runner tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
