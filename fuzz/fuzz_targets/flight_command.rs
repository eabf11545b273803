//! Flight SQL commands (a descriptor's `cmd`, a ticket): whatever the
//! bytes, decoding them as the service does never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = streamhouse_server::flight::decode_command(data);
});
