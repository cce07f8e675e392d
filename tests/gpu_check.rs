//! The tests that scripts/gpu_check.sh runs on a GPU, compiled as one binary: one copy of the kit,
//! of candle's CUDA code and of its kernels instead of four, so that the packed binary fits the
//! 64 MiB that travel to a lent GPU machine. `test = false` in Cargo.toml: plain `cargo test` runs
//! these files as their own targets only; `cargo test --test gpu_check` builds this one.
//! The tests pick their device and dtype from INTERP_KIT_TEST_DEVICE and INTERP_KIT_TEST_DTYPE
//! (tests/common/mod.rs).
#[path = "introspection_kit.rs"]
mod introspection_kit;
#[path = "introspection_study.rs"]
mod introspection_study;
#[path = "laws.rs"]
mod laws;
#[path = "parity.rs"]
mod parity;
