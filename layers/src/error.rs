//! The error type of the layer engine: every variant names the file or value at fault.

use std::path::PathBuf;

/// Result with the layer engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and with which file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The source directory does not exist or is not a directory.
    #[error("source directory {0} does not exist or is not a directory")]
    SourceMissing(PathBuf),
    /// A symlink in the source points outside the source directory.
    #[error("symlink {path} points outside the source directory (target {target})")]
    SymlinkEscapes {
        /// The symlink.
        path: PathBuf,
        /// Its target as written.
        target: PathBuf,
    },
    /// A file type that has no place in a layer (fifo, socket, device).
    #[error("{0}: unsupported file type (only files, directories and symlinks can enter a layer)")]
    UnsupportedFileType(PathBuf),
    /// A file name that is not UTF-8.
    #[error("{0}: file name is not valid UTF-8")]
    NonUtf8Name(PathBuf),
    /// An ignore file could not be parsed.
    #[error("ignore file {path}: {message}")]
    IgnoreFile {
        /// The ignore file.
        path: PathBuf,
        /// The parser's complaint.
        message: String,
    },
    /// A file changed size while it was being added to a layer.
    #[error("{path}: file changed while it was read (expected {expected} bytes, read {found})")]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// Size seen when the entry was listed.
        expected: u64,
        /// Bytes actually read.
        found: u64,
    },
    /// A string that is not a `sha256:<64 hex>` digest.
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    /// Content did not hash to the digest it claims.
    #[error("{what}: digest mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The digest claimed.
        expected: String,
        /// The digest computed.
        found: String,
    },
    /// A JSON document could not be read or written.
    #[error("{what}: invalid JSON: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A reference name is not in the layout's index.
    #[error("{name:?} not found in OCI layout {layout}")]
    RefNotFound {
        /// The layout directory.
        layout: PathBuf,
        /// The reference name asked for.
        name: String,
    },
    /// An image breaks a rule the validator checks.
    #[error("invalid image {image}: {problem}")]
    InvalidImage {
        /// The manifest digest or reference.
        image: String,
        /// What is wrong.
        problem: String,
    },
    /// An entry of an untrusted source archive is unsafe or breaks an extraction limit.
    #[error("source archive entry {entry:?}: {problem}")]
    UnsafeArchive {
        /// The entry's name as written in the archive (lossy UTF-8, possibly shortened).
        entry: String,
        /// What is wrong.
        problem: String,
    },
}

impl Error {
    /// Wraps an I/O error with the operation and the path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// Wraps a JSON error with what was being parsed.
    pub fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Error {
        let what = what.into();
        move |source| Error::Json { what, source }
    }
}
