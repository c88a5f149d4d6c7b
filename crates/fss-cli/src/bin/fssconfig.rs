//! fssconfig (in progress).
fn main() {}
