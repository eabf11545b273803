//! Frontend Postgres messages after startup: whatever the bytes, the
//! server's checks plus pgwire's decoder never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    streamhouse_server::pg::wire::check_and_decode(data);
});
