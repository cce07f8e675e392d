//! Study orchestration: the steps of a research plan as kit functions, so that the notebooks stay
//! thin (a params cell and calls). One module per study.
pub mod inoculation;
pub mod steering;
