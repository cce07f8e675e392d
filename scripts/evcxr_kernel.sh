#!/usr/bin/env bash
# Launcher of the Jupyter kernel `rust` (evcxr_jupyter). scripts/setup.sh copies it into the kernelspec
# and its kernel.json sets INTERP_KIT_CACHE and EVCXR_JUPYTER; Jupyter runs it with the notebook's
# folder as working directory.
#
# evcxr keeps its build (generated crate + cargo target dir) in EVCXR_TMPDIR. This launcher gives it
# a persistent one, $INTERP_KIT_CACHE/evcxr/slot-N: the first slot that no running kernel holds (a
# flock held for the kernel's lifetime). A lone kernel, like the headless runner's, therefore always
# gets slot-0 and reuses the dependencies compiled there; two kernels at once never share a build dir.
set -euo pipefail
: "${INTERP_KIT_CACHE:?is set in the kernelspec by scripts/setup.sh}"
: "${EVCXR_JUPYTER:?is set in the kernelspec by scripts/setup.sh}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"   # evcxr runs cargo and rustc

# evcxr loads each cell's code as a shared object linked against the toolchain's shared libstd, found
# through a relative rpath. That rpath is computed for target/*/debug/deps/ but evcxr loads the file
# from target/*/debug/, which only works when the build dir and the toolchain share no parent folder
# but / (e.g. /tmp vs ~/.rustup). Ours are both under $HOME ("dlopen failed"), so tell the loader.
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
export LD_LIBRARY_PATH="$sysroot/lib/rustlib/$host/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# evcxr passes RUSTFLAGS=-Cprefer-dynamic to cargo; CARGO_ENCODED_RUSTFLAGS takes precedence, so
# it repeats that flag and adds -Ctarget-cpu=native: candle picks its AVX2/FMA quantized kernels at
# compile time (the workspace's .cargo/config.toml does the same for plain cargo builds).
# scripts/test.sh uses the same flags so that tests and notebooks share one dependency build.
export CARGO_ENCODED_RUSTFLAGS=$'-Cprefer-dynamic\x1f-Ctarget-cpu=native'
# No incremental compilation of the kit: with the opt-level 2 / 16 codegen units profile evcxr uses,
# rustc's incremental cache now and then reuses an object that refers to a symbol a re-optimised unit
# no longer defines, and every later build of the kit fails to link ("undefined hidden symbol
# anon.*.llvm.*", rust-lang/rust#81280) until the cache is deleted. Seen here after an interrupted
# build. A whole build of the kit takes about a minute on 2 cores. scripts/test.sh sets the same,
# since the flag is part of the kit's build hash.
export CARGO_INCREMENTAL=0

for n in 0 1 2 3 4 5 6 7; do
  slot="$INTERP_KIT_CACHE/evcxr/slot-$n"
  mkdir -p "$slot"
  exec 9>>"$slot.lock"
  if flock -n 9; then
    # Build the notebooks with the dependency versions of the workspace's Cargo.lock, the versions
    # `cargo test` tested and built: the clone the runner names, else the one holding the notebook's
    # folder (Jupyter starts the kernel there), else none. Copying the lock into the build dir is not
    # enough: evcxr's start-up build ("42", a crate with no dependencies) prunes it to one package, and
    # the first `:dep` would then resolve today's newest versions (seen: ~17 crates rebuilt, 13 min on
    # a fresh machine, and untested versions). So the start-up prelude (evcxr runs
    # $EVCXR_CONFIG_DIR/prelude.rs after that build, before any cell) copies it in.
    root=${INTERP_KIT_ROOT:-}
    if [ -z "$root" ]; then
      d=$PWD
      while [ "$d" != / ] && [ ! -f "$d/interp_kit/dylib/Cargo.toml" ]; do d=$(dirname "$d"); done
      if [ "$d" != / ]; then root=$d; fi
    fi
    if [ -n "$root" ] && [ -f "$root/Cargo.lock" ]; then
      export INTERP_KIT_LOCK="$root/Cargo.lock"
    fi
    if [ -n "${EVCXR_CONFIG_DIR:-}" ]; then
      mkdir -p "$EVCXR_CONFIG_DIR"
      cat >"$EVCXR_CONFIG_DIR/prelude.rs.$$" <<'RS'
// Written by interp_kit's scripts/evcxr_kernel.sh (rewritten at every kernel start): put the
// workspace's Cargo.lock into evcxr's build dir before the first `:dep`.
if let (Some(lock), Some(dir)) = (std::env::var_os("INTERP_KIT_LOCK"), std::env::var_os("EVCXR_TMPDIR")) {
    std::fs::copy(&lock, std::path::Path::new(&dir).join("Cargo.lock")).ok();
}
RS
      mv -f "$EVCXR_CONFIG_DIR/prelude.rs.$$" "$EVCXR_CONFIG_DIR/prelude.rs"
    fi
    export EVCXR_TMPDIR="$slot"
    exec "$EVCXR_JUPYTER" "$@"   # fd 9, and so the slot's lock, stays open until the kernel exits
  fi
done
echo "rust kernel: all 8 evcxr build slots under $INTERP_KIT_CACHE/evcxr are in use" >&2
exit 1
