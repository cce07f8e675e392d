#!/usr/bin/env bash
# Compiles the kit with `--features cuda` on a host without a GPU (and without a system CUDA toolkit):
#   1. installs CUDA 13.0's compiler and libraries from PyPI into the kit's cache (once);
#   2. gives them the layout that candle-kernels' build script (cudaforge) and cudarc's linker search
#      expect: unversioned `lib*.so` links, `lib64 -> lib`, and a link-time stub `libcuda.so`;
#   3. `cargo build --release --features cuda -p interp_kit` and
#      `cargo test --no-run --features cuda -p interp_kit` in their own target dir, timed.
# Nothing here runs CUDA code: that needs a GPU (scripts/gpu_check.sh). The binaries need the driver's
# libcuda.so.1 to start at all, so on a host without a GPU they are built, not run.
#
#   scripts/check_cuda_build.sh            # both builds
#   scripts/check_cuda_build.sh tests      # only the test binaries (what scripts/gpu_check.sh runs)
#   scripts/check_cuda_build.sh release    # only the release build of the library
#   scripts/check_cuda_build.sh env        # print the environment lines (`eval "$(... env)"`)
#
# Why CUDA 13.0: candle 0.11.1 pins cudarc 0.19 with `cuda-version-from-build-system`, which knows
# CUDA 11.4 to 13.4, and candle-kernels compiles its kernels to PTX that the *driver* JIT-compiles at
# load time: a driver only reads PTX from a toolkit no newer than itself. The lent H200 machines run
# driver 580 (CUDA 13.0) with nvcc 13.0, so 13.0 is the newest toolkit whose PTX they load.
# INTERP_KIT_CUDA_TOOLKIT picks another `cuda-toolkit` wheel version (13.x; the wheels' layout differs
# for 12.x). CUDA_COMPUTE_CAP (default 90: Hopper, H100/H200) is the GPU the kernels are built for;
# no GPU answers here, so it cannot be detected.
#
# Environment: INTERP_KIT_CACHE (default ~/.cache/interp_kit); INTERP_KIT_CUDA_TARGET_DIR (default
# $INTERP_KIT_CACHE/cuda-target); INTERP_KIT_CUDA_NICE (default 19: the build only takes idle CPU).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
WHAT=${1:-all}
case "$WHAT" in all|tests|release|env) ;; *) echo "usage: $0 [all|tests|release|env]" >&2; exit 2;; esac

CACHE=${INTERP_KIT_CACHE:-$HOME/.cache/interp_kit}
VER=${INTERP_KIT_CUDA_TOOLKIT:-13.0.2}
TC=$CACHE/cuda-toolchain/$VER
CU=$TC/nvidia/cu13
NICE=${INTERP_KIT_CUDA_NICE:-19}
log() { echo "check_cuda_build: $*" >&2; }

# --- 1. toolkit ------------------------------------------------------------------------------------
# nvcc (with cudafe++, ptxas, fatbinary, nvlink), cicc (nvvm), the CUDA C runtime and CCCL headers, and
# the libraries cudarc links with candle's features (cudart, cublas, cublasLt, curand, nvrtc).
if [[ ! -x $CU/bin/nvcc || ! -e $CU/lib/libcublas.so.13 || ! -x $CU/nvvm/bin/cicc ]]; then
  log "installing cuda-toolkit $VER from PyPI into $TC (about 1.2 GB)"
  python3 -m pip install --quiet --disable-pip-version-check --no-cache-dir --upgrade --target "$TC" \
    "cuda-toolkit[nvcc,nvvm,crt,cccl,cudart,cublas,curand,nvrtc]==$VER" >&2
fi
[[ -x $CU/bin/nvcc ]] || { log "no nvcc at $CU/bin/nvcc after the install"; exit 1; }

# --- 2. layout -------------------------------------------------------------------------------------
# The wheels ship only versioned sonames (libcublas.so.13); the linker needs `-lcublas` -> libcublas.so.
for f in "$CU"/lib/lib*.so.*; do
  base=${f##*/}; base=${base%%.so.*}.so
  [[ -e $CU/lib/$base ]] || ln -s "${f##*/}" "$CU/lib/$base"
done
# cudaforge and nvcc.profile look in lib64.
[[ -e $CU/lib64 ]] || ln -s lib "$CU/lib64"
# cudarc (dynamic-linking, as candle enables it) links `-lcuda`, the driver library, which only a GPU
# host has. A stub with the same soname and the driver entry points cudarc declares satisfies the
# linker; at run time the loader finds the real libcuda.so.1 (the stub directory is never on
# LD_LIBRARY_PATH). The symbol list comes from the cudarc version in Cargo.lock.
STUB=$CU/lib/stubs/libcuda.so
if [[ ! -e $STUB ]]; then
  command -v cc >/dev/null || { log "a C compiler (cc) is needed for the driver stub and by nvcc"; exit 1; }
  cargo fetch --locked >&2
  CUDARC_VER=$(awk '/^name = "cudarc"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
  [[ -n $CUDARC_VER ]] || { log "cudarc is not in Cargo.lock"; exit 1; }
  SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$CUDARC_VER"/src/driver/sys/mod.rs 2>/dev/null | head -1)
  [[ -n $SYS ]] || { log "cudarc $CUDARC_VER source not found under ${CARGO_HOME:-$HOME/.cargo}/registry/src"; exit 1; }
  mkdir -p "$CU/lib/stubs"
  tmp=$(mktemp -d)
  grep -o '^pub unsafe fn cu[A-Za-z0-9_]*' "$SYS" | sed 's/^pub unsafe fn //' | sort -u \
    | awk '{ print "int " $1 "(void) { return 999; }" }' > "$tmp/libcuda_stub.c"   # 999: CUDA_ERROR_UNKNOWN
  n=$(wc -l < "$tmp/libcuda_stub.c")
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tmp/libcuda.so" "$tmp/libcuda_stub.c"
  mv "$tmp/libcuda.so" "$STUB"
  rm -rf "$tmp"
  log "link-time stub $STUB: $n driver entry points from cudarc $CUDARC_VER"
fi

export CUDA_HOME=$CU CUDA_PATH=$CU CUDA_ROOT=$CU NVCC=$CU/bin/nvcc
export PATH=$CU/bin:$PATH
export LD_LIBRARY_PATH=$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# cudarc would parse `nvcc --version`; naming the version avoids depending on its output format.
CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-$(nvcc --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\10\20/p')}
export CUDARC_CUDA_VERSION
export CARGO_TARGET_DIR=${INTERP_KIT_CUDA_TARGET_DIR:-$CACHE/cuda-target}
export CARGO_INCREMENTAL=0
# Portable x86-64 with AVX2/FMA (candle's quantized CPU kernels pick SIMD at compile time): the test
# binaries are meant to run on a GPU host whose processor is not this one, so no target-cpu=native,
# and no -Cprefer-dynamic (the kit's notebook flags), so they need no Rust libraries there.
unset CARGO_ENCODED_RUSTFLAGS
export RUSTFLAGS="-Ctarget-cpu=x86-64-v3"

if [[ $WHAT == env ]]; then
  for v in CUDA_HOME CUDA_PATH CUDA_ROOT NVCC PATH LD_LIBRARY_PATH CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION CARGO_TARGET_DIR CARGO_INCREMENTAL RUSTFLAGS; do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  echo 'unset CARGO_ENCODED_RUSTFLAGS'
  exit 0
fi

log "nvcc $(nvcc --version | sed -n 's/.*release //p'), compute capability $CUDA_COMPUTE_CAP, cudarc CUDA $CUDARC_CUDA_VERSION, target dir $CARGO_TARGET_DIR"
fmt() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
step() {   # step NAME cargo-args...
  local name=$1; shift
  local t0=$SECONDS
  log "$name: cargo $* (nice $NICE)"
  if nice -n "$NICE" cargo "$@"; then
    log "$name: ok in $(fmt $((SECONDS - t0)))"
  else
    log "$name: FAILED after $(fmt $((SECONDS - t0)))"
    return 1
  fi
}
T0=$SECONDS
if [[ $WHAT == all || $WHAT == tests ]]; then
  step tests test --no-run --features cuda -p interp_kit
fi
if [[ $WHAT == all || $WHAT == release ]]; then
  step release build --release --features cuda -p interp_kit
fi
log "total $(fmt $((SECONDS - T0)))"
