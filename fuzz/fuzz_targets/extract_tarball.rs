//! libFuzzer entry point of [`kiln_fuzz::extract_tarball`], where the harness and what it checks live
//! (the seed test, `fuzz/tests/seeds.rs`, runs the same function over `fuzz/seeds/extract_tarball/`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::extract_tarball::run(data));
