//! Fuzzes `kiln_layers::extract_tar_gz`, the extractor of untrusted source tarballs.
//!
//! Input: bytes starting with the gzip magic (`1f 8b`) are fed to the extractor as they are;
//! anything else is taken as an uncompressed tar stream and gzipped by the harness first, so the
//! fuzzer can mutate tar headers directly instead of fighting deflate and CRCs.
//!
//! Each input is extracted into a fresh `tmp/root/dest` with small limits. After every input,
//! whatever the result:
//! - `tmp/root` holds nothing but `dest` (nothing was written beside or above it);
//! - every symlink under `dest` resolves inside `dest`, both as the kernel resolves it
//!   (`canonicalize`) and as a strict emulation that treats missing path components as future
//!   directories (so a dangling link that would escape once a name is created is caught too).
//!
//! On success it also checks the `Extracted` counts against what is on disk and the modes the
//! extractor promises (0644/0755 files, 0755 directories).

use crate::verbose;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use kiln_layers::{ExtractLimits, extract_tar_gz};

/// Most symlinks followed while resolving one path (Linux's own limit is 40).
const MAX_HOPS: usize = 40;

fn limits() -> ExtractLimits {
    ExtractLimits {
        max_total_bytes: 4 << 20,
        max_entries: 1000,
        max_file_bytes: 1 << 20,
        time_budget: Duration::from_secs(1),
        ..ExtractLimits::default()
    }
}

/// One input: see the module documentation for what must hold. Panics when it does not.
pub fn run(data: &[u8]) {
    let gz;
    let input: &[u8] = if data.starts_with(&[0x1f, 0x8b]) {
        data
    } else {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(data).unwrap();
        gz = encoder.finish().unwrap();
        &gz
    };

    let tmp = tempfile::Builder::new()
        .prefix("kiln-fuzz-extract-")
        .tempdir()
        .unwrap();
    let root = tmp.path().join("root");
    let dest = root.join("dest");
    fs::create_dir_all(&dest).unwrap();

    let result = extract_tar_gz(input, &dest, &limits());
    if verbose() {
        eprintln!("extract_tar_gz: {result:?}");
    }

    // Nothing beside or above dest.
    let beside: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside,
        vec![std::ffi::OsString::from("dest")],
        "entries written outside dest ({result:?})"
    );
    let tmp_listing: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(tmp_listing, vec![std::ffi::OsString::from("root")]);

    let tree = walk(&dest);
    let real_dest = fs::canonicalize(&dest).unwrap();
    for link in &tree.symlinks {
        if let Ok(real) = fs::canonicalize(dest.join(link)) {
            assert!(
                real.starts_with(&real_dest),
                "symlink {link:?} resolves to {real:?}, outside dest ({result:?})"
            );
        }
        if let Err(problem) = resolve_within(&dest, link) {
            panic!("symlink {link:?} escapes dest: {problem} ({result:?})");
        }
    }

    if let Ok(out) = &result {
        assert_eq!(out.files, tree.files, "file count ({out:?})");
        assert_eq!(out.dirs, tree.dirs, "directory count ({out:?})");
        assert_eq!(
            out.symlinks,
            tree.symlinks.len() as u64,
            "symlink count ({out:?})"
        );
        assert!(
            tree.bytes <= out.bytes,
            "{} bytes on disk but {} reported written",
            tree.bytes,
            out.bytes
        );
        assert!(out.bytes <= limits().max_total_bytes);
        for (path, mode) in &tree.modes {
            assert!(matches!(mode, 0o644 | 0o755), "{path:?} has mode {mode:o}");
        }
    }
}

/// What is under `dest`, without following symlinks.
#[derive(Default)]
struct Tree {
    files: u64,
    dirs: u64,
    bytes: u64,
    /// Paths relative to dest.
    symlinks: Vec<PathBuf>,
    /// Permission bits of every file and directory.
    modes: Vec<(PathBuf, u32)>,
}

fn walk(dest: &Path) -> Tree {
    let mut tree = Tree::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(dest.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let path = rel.join(entry.file_name());
            let meta = fs::symlink_metadata(dest.join(&path)).unwrap();
            let kind = meta.file_type();
            if kind.is_symlink() {
                tree.symlinks.push(path);
            } else if kind.is_dir() {
                tree.dirs += 1;
                tree.modes
                    .push((path.clone(), meta.permissions().mode() & 0o7777));
                stack.push(path);
            } else if kind.is_file() {
                tree.files += 1;
                tree.bytes += meta.len();
                tree.modes.push((path, meta.permissions().mode() & 0o7777));
            } else {
                panic!("{path:?} is neither file, directory nor symlink: {kind:?}");
            }
        }
    }
    tree
}

/// Resolves the symlink at `link` (relative to `dest`) the way the kernel would, but treating
/// names that do not exist yet as directories that could be created later, and fails if the
/// resolution ever climbs above `dest` or reaches an absolute path.
fn resolve_within(dest: &Path, link: &Path) -> Result<(), String> {
    // Current position as names below dest, and the components still to walk (reversed).
    let mut at: Vec<String> = Vec::new();
    let mut todo: Vec<String> = link
        .components()
        .rev()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        match name.as_str() {
            "" | "." => continue,
            ".." => {
                if at.pop().is_none() {
                    return Err("`..` above dest".into());
                }
                continue;
            }
            _ => {}
        }
        at.push(name);
        let here: PathBuf = at.iter().fold(dest.to_path_buf(), |p, n| p.join(n));
        let Ok(meta) = fs::symlink_metadata(&here) else {
            continue; // Missing: assume a directory may appear here later.
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_HOPS {
                return Ok(()); // ELOOP: resolves nowhere.
            }
            let target = fs::read_link(&here).unwrap();
            at.pop();
            let mut parts = Vec::new();
            for component in target.components() {
                match component {
                    Component::RootDir | Component::Prefix(_) => {
                        return Err(format!("absolute target {target:?}"));
                    }
                    other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
                }
            }
            todo.extend(parts.into_iter().rev());
        } else if !meta.is_dir() && !todo.is_empty() {
            return Ok(()); // ENOTDIR: resolves nowhere.
        }
    }
    Ok(())
}
