//! A client's request head: whatever the bytes, parsing must not panic, and
//! what percore forwards must read as the request it accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percore::http1::roundtrip;

fuzz_target!(|input: &[u8]| {
    if let Err(broken) = roundtrip::check_request(input) {
        panic!("{broken}");
    }
});
