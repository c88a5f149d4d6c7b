//! Placeholder demo; replaced by the full walkthrough.
fn main() {}
