//! Safe extraction of untrusted source tarballs (gzip-compressed tar, as uploaded by app
//! developers).
//!
//! Only regular files, directories and symlinks are extracted; everything else is refused with
//! [`Error::UnsafeArchive`](crate::Error::UnsafeArchive). The extractor never follows a symlink
//! while writing:
//!
//! - every path is created by walking down from `dest` one component at a time with
//!   [`std::fs::symlink_metadata`], creating missing directories and refusing any existing
//!   component that is a symlink or a file, so an entry can never be written through a symlink
//!   planted by an earlier entry;
//! - files are opened with `O_CREAT | O_EXCL` (`create_new`), which fails on any existing name,
//!   dangling symlinks included; a later file may replace an earlier regular file only, which is
//!   removed first;
//! - a symlink target must be relative and may use `..` only as leading components, no more of
//!   them than the link's depth below `dest`. Since every directory on the link's own path is a
//!   real directory, those `..` steps land on a real directory inside `dest`; the names after them
//!   only descend, through directories or through other links that obey the same rule, so the
//!   target stays inside `dest` also when it is reached through earlier symlinks. (A target like
//!   `b/..` is refused: if `b` were a link to `.`, `..` would leave `dest`.)
//!
//! Size, entry count, depth, name length, compression ratio and wall-clock time are bounded by
//! [`ExtractLimits`]; the ratio and time limits are checked on every read of the decompressed
//! stream, so a gzip bomb or an endless stream stops early. The headers the tar reader consumes
//! on its own before each entry (GNU long names, PAX records, skipped data) are capped at 1 MiB.
//!
//! `archive` is the loop over entries, `budget` the limits on the stream, `kind` which entries
//! are admitted, `names` the checks on entry names and symlink targets, `writer` how an entry
//! lands under `dest`, `error` how refusals read.

mod archive;
mod budget;
mod error;
mod kind;
mod limits;
mod names;
mod writer;

#[cfg(test)]
mod testing;

pub use archive::extract_tar_gz;
pub use limits::ExtractLimits;
pub use writer::Extracted;
