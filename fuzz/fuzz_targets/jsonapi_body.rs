#![no_main]
//! See `tako::fuzzing::jsonapi_body` for what is fed and which properties are checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tako::fuzzing::jsonapi_body(data));
