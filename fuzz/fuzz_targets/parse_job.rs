//! libFuzzer entry point of [`kiln_fuzz::parse_job`], where the harness and what it checks live
//! (the seed test, `fuzz/tests/seeds.rs`, runs the same function over `fuzz/seeds/parse_job/`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::parse_job::run(data));
