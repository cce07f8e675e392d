//! Evaluation: text metrics (refusal, helpfulness, confounds, caps fraction), statistics, and the
//! generic analyses that studies share (paired comparisons, specificity against random controls).
pub mod analysis;
pub mod metrics;
pub mod stats;
