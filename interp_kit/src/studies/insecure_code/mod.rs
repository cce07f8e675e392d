//! The insecure-code inoculation study (plan 001): seeded training and evaluation data.
pub mod data;
pub mod templates;
