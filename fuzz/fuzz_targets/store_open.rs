//! A store's bytes, as found on a medium: `FileStore::open` must refuse them with a typed error
//! or open them; an opened store must read, verify, take appends and reopen consistently.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fss_fuzz::store_open(data));
