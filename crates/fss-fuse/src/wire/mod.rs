//! The kernel's FUSE protocol as bytes: decoding requests ([`request`]), encoding replies and
//! notifications ([`reply`]), and the protocol's numbers ([`abi`]). Pure: no I/O.

pub mod abi;
pub mod reply;
pub mod request;

pub use reply::{Attr, InitOut, StatFs, Timestamp};
pub use request::{InHeader, InitIn, Operation, ParseError, Request, SetAttrIn};
