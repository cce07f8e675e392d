//! Interpretability on top of the model: directions (values, IO, extraction methods), steering
//! interventions (shared and per row), gradient alignment with a direction, readouts (activations
//! averaged over spans, token-set probabilities, the logit lens) and the introspection protocol.
pub mod alignment;
pub mod coef_search;
pub mod directions;
pub mod extract;
pub mod introspection;
pub mod lens;
pub mod readout;
pub mod row_steer;
pub mod steer;
pub mod token_probs;
pub mod vector_sets;
