//! The fss daemon (in progress).
pub mod names;
