//! Evaluation: text metrics (refusal, helpfulness, confounds, caps fraction), statistics, and the
//! generic analyses that studies share (paired comparisons, specificity against random controls).
pub mod analysis;
pub mod code_judge;
pub mod degeneracy;
#[cfg(feature = "http-judge")]
pub mod http_judge;
pub mod llm_judge;
pub mod metrics;
pub mod stats;
