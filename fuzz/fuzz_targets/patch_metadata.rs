//! Fuzz the patch metadata parser: any bytes given as a patch file must give a patch or
//! an error, never a panic, a hang or an out-of-memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rlivepatch::patch::Patch::from_bytes("fuzz.so", data.to_vec());
});
