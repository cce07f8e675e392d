//! The insecure-code inoculation study (plan 001, issue 20): seeded offline data ([`data`]), the
//! config ([`config`]), the phases on a model ([`pipeline`]), pure analyses of the run's tables
//! ([`analysis`]), figures ([`figures`]) and the final report ([`report`]). The notebooks in
//! `notebooks/insecure_code/` are a params cell and calls into these modules.
pub mod analysis;
pub mod config;
pub mod data;
pub mod figures;
pub mod pipeline;
pub mod report;
pub mod templates;

pub use config::{InsecureConfig, STUDY};
pub use pipeline::{Analysis, InsecureStudy};
