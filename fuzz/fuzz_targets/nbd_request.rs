//! Bytes from an NBD client: the server's option haggling must answer with well-formed replies
//! or end the session with a typed error, and its request checks must accept only requests
//! within the export and the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fss_fuzz::nbd::nbd_request(data));
