//! Lines on the control socket: parsing into a request must refuse or accept them, never
//! panic, and an accepted request must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fss_fuzz::control::control_request(data));
