//! Every fuzz target's checks over its checked-in seeds, as a plain test on stable Rust: each
//! seed file in `seeds/<target>/` goes through the same `run` the libFuzzer binary calls, and
//! then through the binary itself (libFuzzer runs the files given to it once each). A target
//! without seeds, a seed directory without a target, or a seed that panics fails the test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

fn names_in(dir: &Path, strip: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .map(|n| n.trim_end_matches(strip).to_owned())
        .collect()
}

#[test]
fn every_target_has_seeds_and_is_run_here() {
    let listed: BTreeSet<String> = kiln_fuzz::TARGETS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    assert_eq!(names_in(&fuzz_dir().join("fuzz_targets"), ".rs"), listed);
    assert_eq!(names_in(&fuzz_dir().join("seeds"), ""), listed);
}

#[test]
fn every_seed_passes_its_target() {
    for (target, run) in kiln_fuzz::TARGETS {
        for seed in seeds(target) {
            let data = std::fs::read(&seed).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                panic!("{target}: seed {} fails (panic above)", seed.display());
            }
        }
    }
}

/// The libFuzzer binaries link and run: given files, libFuzzer executes each once.
#[test]
fn the_libfuzzer_binaries_run_every_seed() {
    let bins = [
        ("extract_tarball", env!("CARGO_BIN_EXE_extract_tarball")),
        ("parse_job", env!("CARGO_BIN_EXE_parse_job")),
        ("read_manifest", env!("CARGO_BIN_EXE_read_manifest")),
    ];
    assert_eq!(bins.len(), kiln_fuzz::TARGETS.len());
    for (target, bin) in bins {
        let files = seeds(target);
        let out = Command::new(bin).args(&files).output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{target}: {}\n{log}", out.status);
        let executed = log
            .lines()
            .filter(|l| l.starts_with("Executed ") && l.contains(" in "))
            .count();
        assert_eq!(executed, files.len(), "{target}: inputs executed\n{log}");
    }
}
