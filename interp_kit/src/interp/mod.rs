//! Interpretability on top of the model: directions (values, IO, extraction methods), steering
//! interventions, and gradient alignment with a direction.
pub mod alignment;
pub mod coef_search;
pub mod directions;
pub mod extract;
pub mod readout;
pub mod steer;
