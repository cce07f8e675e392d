//! Figures (plotters, PNG/SVG, inline in evcxr) and markdown reports.
pub mod plots;
pub mod reports;
