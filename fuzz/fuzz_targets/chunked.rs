//! A chunked body, and how reads cut it (the first 8 bytes give the pieces'
//! lengths): the decoder must read it the same whole and in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percore::http1::roundtrip;

fuzz_target!(|input: &[u8]| {
    let (cuts, body) = input.split_at(input.len().min(8));
    if let Err(broken) = roundtrip::check_chunked(body, cuts) {
        panic!("{broken}");
    }
});
