//! sma-light bundles: an app folder's pages, handlers and files packed into one
//! content-addressed blob that running sma-light instances fetch, check and load
//! (`runtimes/sma-light/bundle.js` reads them).
//!
//! A bundle is gzip of `{"format":"kiln-light-bundle/1","files":{"<path>":"<base64>",…}}`
//! with sorted paths, the folder's files as `kiln build` would put them in the app layer
//! (ignore rules, no `node_modules`, no `.git`/`.env*`/`.npmrc`); its digest is the sha256
//! of those bytes. The same folder gives the same bytes on any machine.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use flate2::Compression;
use flate2::write::GzEncoder;
use kiln_layers::source::ScanOptions;
use kiln_layers::{SourceKind, SourceTree};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::sandbox::{self, Script, WORK};

/// The format name a bundle carries.
pub const FORMAT: &str = "kiln-light-bundle/1";
/// Largest bundle an instance takes (its bytes, compressed).
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024 * 1024;

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
    /// The bundle is larger than an instance takes.
    #[error("the bundle is {0} bytes, over the {MAX_BUNDLE_BYTES} bytes an instance takes")]
    TooBig(usize),
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

/// Packs `dir` into a bundle.
pub fn pack(dir: &Path) -> Result<Bundle, BundleError> {
    let tree = SourceTree::scan(dir, &ScanOptions::app())?;
    let mut files = BTreeMap::new();
    for entry in tree.entries() {
        if let SourceKind::File { .. } = entry.kind {
            let bytes = std::fs::read(&entry.path).map_err(|source| BundleError::Read {
                path: entry.path.clone(),
                source,
            })?;
            files.insert(
                entry.rel.clone(),
                base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
    }
    let count = files.len();
    let json = serde_json::to_vec(&Document {
        format: FORMAT,
        files,
    })
    .expect("a map of strings serializes");
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

/// Loads `dir` the way an instance loads a version (the sma-light runtime's own loader, run
/// by `node`, each module in a worker thread) and returns its routes: refuses a folder with
/// a syntax error, a module that throws on load, a page or handler that is not a function,
/// or nothing to serve. The folder's code runs in the build sandbox ([`sandbox`]): no
/// network, no credentials, an empty environment, the folder itself read-only.
pub fn check(dir: &Path) -> Result<serde_json::Value, BundleError> {
    let scratch = tempfile::tempdir().map_err(|source| BundleError::Read {
        path: std::env::temp_dir(),
        source,
    })?;
    kiln_runtimes::Runtime::get("sma-light")?.write_files(scratch.path())?;
    let source = dir.canonicalize().map_err(|source| BundleError::Read {
        path: dir.into(),
        source,
    })?;
    let command = format!("node {WORK}/kiln/runtime/sma-light/server.js --check {CHECKED}");
    let mut lines = Vec::new();
    let ran = sandbox::run(
        &Script {
            command: &command,
            work: scratch.path(),
            read_only: vec![(source, CHECKED.into())],
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
            said.replace(CHECKED, &dir.display().to_string())
        }));
    }
    // The loader's answer is its last line; the app's own output may come before it.
    lines
        .iter()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.get("api").is_some())
        })
        .ok_or_else(|| refused(format!("no answer from the check: {}", lines.join(" | "))))
}

/// Where the checked folder appears in the sandbox.
const CHECKED: &str = "/src";
/// How long loading a folder may take.
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
}
