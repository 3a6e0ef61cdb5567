#![no_main]
//! See `channels::fuzzing::outgoing` for what is fed and which properties are checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| channels::fuzzing::outgoing(data));
