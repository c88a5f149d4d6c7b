//! fss (in progress).
fn main() {}
