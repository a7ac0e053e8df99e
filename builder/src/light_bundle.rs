//! sma-light bundles: an app folder's pages, handlers and files packed into one
//! content-addressed blob that running sma-light instances fetch, check and load
//! (`runtimes/sma-light/bundle.js` reads them).
//!
//! A bundle is gzip of `{"format":"kiln-light-bundle/1","files":{"<path>":"<base64>",…}}`
//! with sorted paths, the folder's files as `kiln build` would put them in the app layer
//! (ignore rules, no `node_modules`, no `.git`/`.env*`/`.npmrc`); its digest is the sha256
//! of those bytes. The same folder gives the same bytes on any machine. An instance takes
//! at most [`MAX_BUNDLE_BYTES`] of it, [`MAX_UNPACKED_BYTES`] once unzipped, [`MAX_FILES`]
//! files and paths of [`MAX_PATH_BYTES`] and [`MAX_PATH_PARTS`] parts; [`pack`] refuses more.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use kiln_layers::source::ScanOptions;
use kiln_layers::{SourceEntry, SourceKind, SourceTree};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::sandbox::{self, Script, WORK};

/// The format name a bundle carries.
pub const FORMAT: &str = "kiln-light-bundle/1";
/// Largest bundle an instance takes (its bytes, compressed).
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024 * 1024;
/// Most files a bundle holds (`runtimes/sma-light/bundle.js` enforces the same).
pub const MAX_FILES: usize = 20_000;
/// Largest bundle document before compression (the JSON that gzip packs), in bytes: what
/// an instance unpacks at most.
pub const MAX_UNPACKED_BYTES: usize = 128 * 1024 * 1024;
/// Longest path in a bundle, in bytes of UTF-8.
pub const MAX_PATH_BYTES: usize = 1024;
/// Most `/`-separated parts in a bundle path.
pub const MAX_PATH_PARTS: usize = 64;

/// Why a folder could not be packed or checked.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The folder could not be listed (missing, escaping symlink, special file…).
    #[error("{0}")]
    Scan(#[from] kiln_layers::Error),
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written out to check the bundle.
    #[error("write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bundle is larger than an instance takes.
    #[error("the bundle is {0} bytes, over the {MAX_BUNDLE_BYTES} bytes an instance takes")]
    TooBig(usize),
    /// The bundle's document, before compression, is larger than an instance unpacks.
    #[error(
        "the bundle is at least {0} bytes before compression, over the {MAX_UNPACKED_BYTES} \
         bytes (MAX_UNPACKED_BYTES) an instance unpacks"
    )]
    TooBigUnpacked(usize),
    /// More files than a bundle holds.
    #[error("the bundle would hold {0} files, over the {MAX_FILES} (MAX_FILES) an instance takes")]
    TooManyFiles(usize),
    /// A path longer than a bundle path may be.
    #[error(
        "{path} is {bytes} bytes long, over the {MAX_PATH_BYTES} bytes (MAX_PATH_BYTES) of a \
         bundle path"
    )]
    PathTooLong {
        /// The path.
        path: String,
        /// Its length in bytes.
        bytes: usize,
    },
    /// A path with more parts than a bundle path may have.
    #[error(
        "{path} has {parts} parts, over the {MAX_PATH_PARTS} (MAX_PATH_PARTS) of a bundle path"
    )]
    PathTooDeep {
        /// The path.
        path: String,
        /// Its `/`-separated parts.
        parts: usize,
    },
    /// A path an instance refuses: empty, absolute, with a backslash or NUL, or an empty,
    /// `.` or `..` part.
    #[error("bundle path {0:?} is not a plain relative path")]
    NotPlainPath(String),
    /// The bundle's bytes are not a bundle (not gzip, not JSON, another format, bad base64).
    #[error("the bundle cannot be read: {0}")]
    Undecodable(String),
    /// The runtime refused the folder: a syntax error, a module that throws on load, a
    /// handler that is not a function, nothing to serve.
    #[error("the sma-light runtime cannot load {dir}: {reason}")]
    Refused {
        /// The folder.
        dir: PathBuf,
        /// The runtime's words.
        reason: String,
    },
    /// The runtime's files could not be written out to run the check.
    #[error("{0}")]
    Runtime(#[from] kiln_runtimes::Error),
}

/// A packed folder.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The bundle's bytes.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// Files in it.
    pub files: usize,
}

#[derive(Serialize)]
struct Document<'a> {
    format: &'a str,
    files: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Decoded {
    format: String,
    files: BTreeMap<String, String>,
}

/// Packs `dir` into a bundle; refuses what an instance would not take (see the `MAX_…`
/// limits and [`check_path`]).
pub fn pack(dir: &Path) -> Result<Bundle, BundleError> {
    let tree = SourceTree::scan(dir, &ScanOptions::app())?;
    let shipped: Vec<(&SourceEntry, u64)> = tree
        .entries()
        .iter()
        .filter_map(|e| match e.kind {
            SourceKind::File { size, .. } => Some((e, size)),
            _ => None,
        })
        .collect();
    if shipped.len() > MAX_FILES {
        return Err(BundleError::TooManyFiles(shipped.len()));
    }
    let files = encode_files(&shipped)?;
    let count = files.len();
    let json = serde_json::to_vec(&Document {
        format: FORMAT,
        files,
    })
    .expect("a map of strings serializes");
    if json.len() > MAX_UNPACKED_BYTES {
        return Err(BundleError::TooBigUnpacked(json.len()));
    }
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
    gz.write_all(&json).expect("writing to memory");
    let bytes = gz.finish().expect("writing to memory");
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooBig(bytes.len()));
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    Ok(Bundle {
        bytes,
        digest,
        files: count,
    })
}

/// Each file's path and base64 content; stops before reading a file that would take the
/// document over [`MAX_UNPACKED_BYTES`].
fn encode_files(shipped: &[(&SourceEntry, u64)]) -> Result<BTreeMap<String, String>, BundleError> {
    let mut files = BTreeMap::new();
    let mut unpacked = 0usize;
    for &(entry, size) in shipped {
        check_path(&entry.rel)?;
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        // Its base64 and path, quoted: a lower bound of what it adds to the document.
        unpacked = unpacked
            .saturating_add(size.div_ceil(3).saturating_mul(4))
            .saturating_add(entry.rel.len() + 6);
        if unpacked > MAX_UNPACKED_BYTES {
            return Err(BundleError::TooBigUnpacked(unpacked));
        }
        let bytes = std::fs::read(&entry.path).map_err(|source| BundleError::Read {
            path: entry.path.clone(),
            source,
        })?;
        files.insert(
            entry.rel.clone(),
            base64::engine::general_purpose::STANDARD.encode(bytes),
        );
    }
    Ok(files)
}

/// Refuses a path an instance would not unpack: not a plain relative path (empty, absolute,
/// a backslash or NUL in it, an empty, `.` or `..` part), over [`MAX_PATH_BYTES`] or over
/// [`MAX_PATH_PARTS`] parts.
pub fn check_path(rel: &str) -> Result<(), BundleError> {
    let parts = rel.split('/').count();
    let plain = !rel.is_empty()
        && !rel.contains(['\\', '\0'])
        && rel.split('/').all(|p| !matches!(p, "" | "." | ".."));
    if !plain {
        return Err(BundleError::NotPlainPath(rel.into()));
    }
    if rel.len() > MAX_PATH_BYTES {
        return Err(BundleError::PathTooLong {
            path: rel.into(),
            bytes: rel.len(),
        });
    }
    if parts > MAX_PATH_PARTS {
        return Err(BundleError::PathTooDeep {
            path: rel.into(),
            parts,
        });
    }
    Ok(())
}

/// The files of a bundle's bytes (path to content), every path checked by [`check_path`].
fn decode(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| BundleError::Undecodable(format!("{what}: {e}"));
    let mut json = Vec::new();
    GzDecoder::new(bytes)
        .take(MAX_UNPACKED_BYTES as u64 + 1)
        .read_to_end(&mut json)
        .map_err(|e| bad("gzip", &e))?;
    if json.len() > MAX_UNPACKED_BYTES {
        return Err(BundleError::TooBigUnpacked(json.len()));
    }
    let doc: Decoded = serde_json::from_slice(&json).map_err(|e| bad("JSON", &e))?;
    if doc.format != FORMAT {
        return Err(bad("format", &format!("{:?}, not {FORMAT}", doc.format)));
    }
    if doc.files.len() > MAX_FILES {
        return Err(BundleError::TooManyFiles(doc.files.len()));
    }
    doc.files
        .into_iter()
        .map(|(rel, b64)| {
            check_path(&rel)?;
            let content = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| bad(&rel, &e))?;
            Ok((rel, content))
        })
        .collect()
}

/// Writes `files` under `root`, leaving out `node_modules` (an instance links the image's
/// there instead), as an instance unpacks a version.
fn write_files(files: &BTreeMap<String, Vec<u8>>, root: &Path) -> Result<(), BundleError> {
    for (rel, content) in files {
        if rel == "node_modules" || rel.starts_with("node_modules/") {
            continue;
        }
        let file = rel.split('/').fold(root.to_owned(), |p, part| p.join(part));
        let write = |path: &Path, done: std::io::Result<()>| {
            done.map_err(|source| BundleError::Write {
                path: path.into(),
                source,
            })
        };
        if let Some(parent) = file.parent() {
            write(parent, std::fs::create_dir_all(parent))?;
        }
        write(&file, std::fs::write(&file, content))?;
    }
    Ok(())
}

/// Loads `bundle` the way an instance loads a version (the sma-light runtime's own loader,
/// run by `node`, each module in a worker thread) and returns its routes: refuses a bundle
/// with a syntax error, a module that throws on load, a page or handler that is not a
/// function, or nothing to serve. The bundle's files are unpacked into a scratch folder, so
/// what is checked is what ships (not files of `dir` that the ignore rules leave out);
/// `dir`'s own `node_modules`, if any, is where they find their dependencies. The code runs
/// in the build sandbox ([`sandbox`]): no network, no credentials, an empty environment,
/// the files and `node_modules` read-only. Errors name files under `dir`.
pub fn check(dir: &Path, bundle: &Bundle) -> Result<serde_json::Value, BundleError> {
    let files = decode(&bundle.bytes)?;
    let checked = scratch_dir()?;
    write_files(&files, checked.path())?;
    let mut read_only = vec![(checked.path().to_owned(), CHECKED.to_owned())];
    if let Some(modules) = node_modules(dir)? {
        // The mount point, made before its parent is mounted read-only.
        let point = checked.path().join("node_modules");
        std::fs::create_dir(&point).map_err(|source| BundleError::Write {
            path: point,
            source,
        })?;
        read_only.push((modules, format!("{CHECKED}/node_modules")));
    }
    run_check(dir, read_only)
}

/// A scratch folder, removed when dropped.
fn scratch_dir() -> Result<tempfile::TempDir, BundleError> {
    tempfile::tempdir().map_err(|source| BundleError::Write {
        path: std::env::temp_dir(),
        source,
    })
}

/// `dir/node_modules`, resolved, when it is a folder.
fn node_modules(dir: &Path) -> Result<Option<PathBuf>, BundleError> {
    let modules = dir.join("node_modules");
    if !modules.is_dir() {
        return Ok(None);
    }
    modules
        .canonicalize()
        .map(Some)
        .map_err(|source| BundleError::Read {
            path: modules,
            source,
        })
}

/// Runs the runtime's check on [`CHECKED`] in the sandbox, with `read_only` mounted; its
/// words name files under `dir`.
fn run_check(
    dir: &Path,
    read_only: Vec<(PathBuf, String)>,
) -> Result<serde_json::Value, BundleError> {
    let runtime = scratch_dir()?;
    kiln_runtimes::Runtime::get("sma-light")?.write_files(runtime.path())?;
    let command = format!("node {WORK}/kiln/runtime/sma-light/server.js --check {CHECKED}");
    let mut lines = Vec::new();
    let ran = sandbox::run(
        &Script {
            command: &command,
            work: runtime.path(),
            read_only,
            tmpfs: Vec::new(),
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            timeout: CHECK_TIMEOUT,
        },
        &mut |line| lines.push(line.to_owned()),
    );
    let refused = |reason: String| BundleError::Refused {
        dir: dir.into(),
        reason,
    };
    if let Err(failure) = ran {
        let said = failure.output.join("\n");
        return Err(refused(if said.trim().is_empty() {
            failure.problem
        } else {
            said.replace(&format!("{CHECKED}/"), &format!("{}/", dir.display()))
        }));
    }
    answer(&lines)
        .ok_or_else(|| refused(format!("no answer from the check: {}", lines.join(" | "))))
}

/// The loader's answer: its last line; the app's own output may come before it.
fn answer(lines: &[String]) -> Option<serde_json::Value> {
    lines.iter().rev().find_map(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .filter(|v| v.get("api").is_some())
    })
}

/// Where the checked files appear in the sandbox.
const CHECKED: &str = "/kiln-checked-bundle";
/// How long loading a bundle may take.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_packs_to_the_same_bytes_and_leaves_out_what_never_ships() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("public")).unwrap();
        std::fs::create_dir_all(dir.path().join("node_modules/x")).unwrap();
        std::fs::write(dir.path().join("public/index.html"), "<p>hi</p>").unwrap();
        std::fs::write(dir.path().join("node_modules/x/index.js"), "").unwrap();
        std::fs::write(dir.path().join(".env"), "SECRET=1").unwrap();
        let a = pack(dir.path()).unwrap();
        let b = pack(dir.path()).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.files, 1);
        let mut json = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&a.bytes[..]), &mut json)
            .unwrap();
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["format"], FORMAT);
        assert_eq!(doc["files"]["public/index.html"], "PHA+aGk8L3A+");
        assert_eq!(doc["files"].as_object().unwrap().len(), 1);
        std::fs::write(dir.path().join("public/index.html"), "<p>ho</p>").unwrap();
        assert_ne!(pack(dir.path()).unwrap().digest, a.digest);
    }

    /// A bundle made by hand from `(path, content)` pairs.
    fn crafted(format: &str, files: &[(&str, &str)]) -> Vec<u8> {
        let files: BTreeMap<String, String> = files
            .iter()
            .map(|(p, c)| {
                let b64 = base64::engine::general_purpose::STANDARD.encode(c);
                (p.to_string(), b64)
            })
            .collect();
        let json = serde_json::to_vec(&Document { format, files }).unwrap();
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&json).unwrap();
        gz.finish().unwrap()
    }

    fn write(root: &Path, rel: &str, content: &str) {
        let file = root.join(rel);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }

    #[test]
    fn only_plain_relative_paths_within_the_limits_pass() {
        for ok in ["a", "public/index.html", "a/.b/c..d", "ü/ß.js"] {
            check_path(ok).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "../a",
            "a/../b",
            "a\\b",
            "a\0b",
        ] {
            assert!(
                matches!(check_path(bad), Err(BundleError::NotPlainPath(_))),
                "{bad:?} passed"
            );
        }
        let long = "a".repeat(MAX_PATH_BYTES);
        check_path(&long).unwrap();
        let longer = format!("{long}b");
        match check_path(&longer) {
            Err(e @ BundleError::PathTooLong { bytes: 1025, .. }) => {
                assert!(e.to_string().contains("MAX_PATH_BYTES"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let deep = vec!["d"; MAX_PATH_PARTS].join("/");
        check_path(&deep).unwrap();
        let deeper = format!("{deep}/f");
        match check_path(&deeper) {
            Err(e @ BundleError::PathTooDeep { parts: 65, .. }) => {
                assert!(e.to_string().contains(&deeper), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pack_refuses_a_path_over_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let deep = format!("{}/f.js", vec!["d"; MAX_PATH_PARTS].join("/"));
        write(dir.path(), &deep, "");
        match pack(dir.path()) {
            Err(BundleError::PathTooDeep { path, parts: 65 }) => assert_eq!(path, deep),
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        // 5 parts of 250 bytes: each name fits a file system, the path does not fit a bundle.
        let long = vec!["x".repeat(250); 5].join("/");
        write(dir.path(), &long, "");
        match pack(dir.path()) {
            Err(BundleError::PathTooLong { path, bytes: 1254 }) => assert_eq!(path, long),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pack_refuses_more_files_than_an_instance_takes() {
        let dir = tempfile::tempdir().unwrap();
        for n in 0..=MAX_FILES {
            write(dir.path(), &format!("f/{}/{n}", n % 100), "");
        }
        match pack(dir.path()) {
            Err(e @ BundleError::TooManyFiles(20_001)) => {
                assert!(e.to_string().contains("20000"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(dir.path().join("f/0/0")).unwrap();
        assert_eq!(pack(dir.path()).unwrap().files, MAX_FILES);
    }

    #[test]
    fn pack_refuses_a_document_over_the_unpacked_limit_before_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        // Sparse: 97 MiB of zeros is about 129 MiB of base64, and it gzips to almost nothing.
        let big = std::fs::File::create(dir.path().join("big.bin")).unwrap();
        big.set_len(97 * 1024 * 1024).unwrap();
        match pack(dir.path()) {
            Err(e @ BundleError::TooBigUnpacked(n)) => {
                assert!(n > MAX_UNPACKED_BYTES, "{n}");
                assert!(e.to_string().contains("MAX_UNPACKED_BYTES"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decode_gives_back_what_pack_packed_and_refuses_what_an_instance_would() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "api/a.js", "module.exports = 1;");
        write(dir.path(), "public/x.txt", "x");
        let files = decode(&pack(dir.path()).unwrap().bytes).unwrap();
        let paths: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(paths, ["api/a.js", "public/x.txt"]);
        assert_eq!(files["api/a.js"], b"module.exports = 1;");

        let climbs = crafted(FORMAT, &[("../evil.js", "x")]);
        assert!(matches!(decode(&climbs), Err(BundleError::NotPlainPath(p)) if p == "../evil.js"));
        let other = crafted("something-else/1", &[("a", "x")]);
        assert!(matches!(decode(&other), Err(BundleError::Undecodable(_))));
        assert!(matches!(
            decode(b"not gzip"),
            Err(BundleError::Undecodable(_))
        ));
    }

    #[test]
    fn write_files_lays_out_the_bundle_without_node_modules() {
        let out = tempfile::tempdir().unwrap();
        let files: BTreeMap<String, Vec<u8>> =
            [("pages/a/index.js", "1"), ("node_modules/x/index.js", "2")]
                .iter()
                .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
                .collect();
        write_files(&files, out.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("pages/a/index.js")).unwrap(),
            "1"
        );
        assert!(!out.path().join("node_modules").exists());
    }

    /// Needs `node` and `bwrap` (the sandbox), as `kiln publish` does.
    #[test]
    fn check_loads_what_ships_with_the_folders_node_modules() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "node_modules/greet/index.js",
            "module.exports = (n) => `hi ${n}`;",
        );
        write(
            d,
            "api/hello.js",
            "const greet = require('greet');\nmodule.exports = async () => greet('x');\n",
        );
        // Left out by the ignore rules: never shipped, so never loaded.
        write(d, ".kilnignore", "api/broken.js\n");
        write(d, "api/broken.js", "throw new Error('not shipped');");
        let bundle = pack(d).unwrap();
        let routes = check(d, &bundle).unwrap();
        assert_eq!(routes["api"], serde_json::json!(["hello"]), "{routes}");

        // A shipped file that throws: refused, named by its place in the folder.
        write(d, "api/throws.js", "throw new Error('no config');");
        let bundle = pack(d).unwrap();
        let err = check(d, &bundle).unwrap_err().to_string();
        assert!(err.contains("no config"), "{err}");
        assert!(
            err.contains(&format!("{}/api/throws.js", d.display())),
            "{err}"
        );
    }
}
