//! `interp_kit` for evcxr notebooks: the whole kit, re-exported from one shared library, so that
//! every notebook cell uses one copy of it (see Cargo.toml). Load it under the kit's own name:
//!
//! ```text
//! :dep interp_kit = { path = "../../interp_kit/dylib", package = "interp_kit_dylib" }
//! ```
pub use interp_kit::*;
