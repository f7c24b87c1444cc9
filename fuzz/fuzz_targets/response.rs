//! A backend's response head (the first byte says whether the request was a
//! HEAD): parsing must not panic, and what percore relays must read as the
//! response it accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percore::http1::roundtrip;

fuzz_target!(|input: &[u8]| {
    let Some((&first, head)) = input.split_first() else {
        return;
    };
    if let Err(broken) = roundtrip::check_response(head, first & 1 == 1) {
        panic!("{broken}");
    }
});
