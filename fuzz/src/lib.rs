//! The bodies of kiln's fuzz targets, one module per target, each with `run(data)`: the
//! libFuzzer binaries in `fuzz_targets/` call it for every input, and `tests/seeds.rs` calls it
//! for every checked-in seed in `seeds/<target>/` (so CI runs each target's checks on stable,
//! without libFuzzer instrumentation). `run` panics when a property does not hold.

pub mod extract_tarball;
pub mod parse_job;
pub mod read_manifest;

/// `KILN_FUZZ_VERBOSE=1` prints each result (to check what the seeds exercise).
pub fn verbose() -> bool {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("KILN_FUZZ_VERBOSE").is_some())
}

/// A target's `run`: one input through its checks.
pub type Run = fn(&[u8]);

/// The targets, by name (the name of the binary, the module and the seed directory), with
/// their `run`.
pub const TARGETS: &[(&str, Run)] = &[
    ("extract_tarball", extract_tarball::run),
    ("parse_job", parse_job::run),
    ("read_manifest", read_manifest::run),
];
