#![no_main]
//! See `channels::fuzzing::frames` for what is fed and which properties are checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| channels::fuzzing::frames(data));
