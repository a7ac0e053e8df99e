//! libFuzzer entry point of [`kiln_fuzz::read_manifest`], where the harness and what it checks live
//! (the seed test, `fuzz/tests/seeds.rs`, runs the same function over `fuzz/seeds/read_manifest/`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::read_manifest::run(data));
