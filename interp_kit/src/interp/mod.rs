//! Interpretability on top of the model: directions (values, IO, extraction methods), steering
//! interventions, and gradient alignment with a direction.
pub mod alignment;
pub mod directions;
pub mod introspection;
pub mod lens;
pub mod readout;
pub mod row_steer;
pub mod steer;
pub mod vector_sets;
