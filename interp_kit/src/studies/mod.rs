//! One folder per study: its config type, data generators, pipeline steps and study tables, on top of
//! the generic layers. Notebooks under `notebooks/<study>/` only set parameters and call these.
pub mod inoculation_caps;
pub mod insecure_code;
pub mod introspection;
pub mod steering_reliability;
pub mod trait_monitoring;
