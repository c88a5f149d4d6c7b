//! Log blocks fed to `format::record::Replay`: never a panic, and what it keeps is a dense log.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fss_fuzz::log_replay(data));
