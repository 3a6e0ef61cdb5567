#![no_main]
//! See `channels::fuzzing::serializer` for what is fed and which properties are checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| channels::fuzzing::serializer(data));
