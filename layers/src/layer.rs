//! Reproducible layers: a sorted set of entries written as a normalized tar, streamed through
//! the nested writers tar → sha256 (diff id) → parallel gzip → sha256 (digest) → blob file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::oci::MEDIA_TYPE_LAYER_GZIP;
use crate::pgzip::ParallelGzWriter;
use crate::{BlobStore, Descriptor, Digest, Error, HashingWriter, Result};

/// A layer stored in a blob store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    /// The compressed blob.
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
}

/// What an entry is and where its bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file read from disk at write time; `size` is what was seen when listed.
    File {
        /// Where to read it.
        source: PathBuf,
        /// Its size when listed.
        size: u64,
    },
    /// A regular file with these bytes.
    Bytes(Vec<u8>),
    /// A symbolic link to `target`.
    Symlink(String),
}

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (already normalized by the caller, e.g. 0o644 / 0o755).
    pub mode: u32,
    /// Owner uid and gid.
    pub owner: (u64, u64),
}

impl Entry {
    /// A 0755 root-owned directory.
    pub fn dir() -> Self {
        Entry {
            kind: EntryKind::Dir,
            mode: 0o755,
            owner: (0, 0),
        }
    }

    /// A root-owned file from disk, 0755 when `executable`, else 0644.
    pub fn file(source: impl Into<PathBuf>, size: u64, executable: bool) -> Self {
        let mode = if executable { 0o755 } else { 0o644 };
        Entry {
            kind: EntryKind::File {
                source: source.into(),
                size,
            },
            mode,
            owner: (0, 0),
        }
    }

    /// A root-owned 0644 file with these bytes.
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Entry {
            kind: EntryKind::Bytes(bytes.into()),
            mode: 0o644,
            owner: (0, 0),
        }
    }

    /// A symlink to `target`.
    pub fn symlink(target: impl Into<String>) -> Self {
        Entry {
            kind: EntryKind::Symlink(target.into()),
            mode: 0o777,
            owner: (0, 0),
        }
    }

    /// The same entry with other permission bits.
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// The same entry with another owner.
    pub fn with_owner(mut self, uid: u64, gid: u64) -> Self {
        self.owner = (uid, gid);
        self
    }
}

/// Collects entries by path and writes them as one reproducible layer.
///
/// Paths are relative (`app/index.js`); parent directories are added as 0755 root-owned
/// directories unless given. Entries are written in path-component order, every mtime is
/// the builder's epoch, user and group names are empty.
#[derive(Debug)]
pub struct LayerBuilder {
    entries: BTreeMap<Vec<String>, Entry>,
    mtime: u64,
}

impl LayerBuilder {
    /// An empty layer whose entries get `mtime` (seconds since the epoch).
    pub fn new(mtime: u64) -> Self {
        LayerBuilder {
            entries: BTreeMap::new(),
            mtime,
        }
    }

    /// Adds (or replaces) the entry at `path` and any missing parents.
    pub fn add(&mut self, path: &str, entry: Entry) -> &mut Self {
        let parts: Vec<String> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(str::to_owned)
            .collect();
        for depth in 1..parts.len() {
            self.entries
                .entry(parts[..depth].to_vec())
                .or_insert_with(Entry::dir);
        }
        if !parts.is_empty() {
            self.entries.insert(parts, entry);
        }
        self
    }

    /// Number of entries, parents included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the layer has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the uncompressed tar to `out` (used for digests and by tests).
    pub fn write_tar<W: Write>(&self, out: W) -> Result<W> {
        let mut tar = tar::Builder::new(out);
        for (parts, entry) in &self.entries {
            append(&mut tar, self.mtime, &parts.join("/"), entry)?;
        }
        tar.into_inner().map_err(Error::io("finish tar", "layer"))
    }

    /// Writes the layer into `store` in one pass and returns its descriptor and diff id.
    pub fn write_to(&self, store: &BlobStore) -> Result<Layer> {
        let mut stream = LayerStream::new(store, self.mtime)?;
        for (parts, entry) in &self.entries {
            stream.entry(&parts.join("/"), entry)?;
        }
        stream.finish()
    }
}

/// A layer written entry by entry, in the caller's order, straight into a blob store: for
/// entries whose bytes come from a stream (a package tarball) rather than from disk. The
/// caller owns the order and must not repeat a path; parents are not added.
pub struct LayerStream {
    tar: tar::Builder<HashingWriter<ParallelGzWriter<crate::store::BlobWriter>>>,
    mtime: u64,
    root: PathBuf,
}

impl LayerStream {
    /// A new layer in `store` whose entries get `mtime`.
    pub fn new(store: &BlobStore, mtime: u64) -> Result<Self> {
        let blob = store.blob_writer()?;
        Ok(LayerStream {
            tar: tar::Builder::new(HashingWriter::new(ParallelGzWriter::new(blob))),
            mtime,
            root: store.root().join("blobs/sha256"),
        })
    }

    /// Appends `entry` at `path`.
    pub fn entry(&mut self, path: &str, entry: &Entry) -> Result<()> {
        append(&mut self.tar, self.mtime, path, entry).map_err(|e| self.output_error(e))
    }

    /// Appends a root-owned regular file of `size` bytes read from `data`, with `mode`. A
    /// read failure is `Error::Io` with op `read`; fewer bytes than `size` is
    /// `Error::FileChanged`.
    pub fn reader(&mut self, path: &str, mode: u32, size: u64, data: impl Read) -> Result<()> {
        let header = header(self.mtime, mode, (0, 0));
        append_file(&mut self.tar, header, path, size, data, Path::new(path))
            .map_err(|e| self.output_error(e))
    }

    /// Finishes the tar and the gzip stream and commits the blob.
    pub fn finish(self) -> Result<Layer> {
        let root = self.root.clone();
        let tar_out = self.tar.into_inner().map_err(|source| Error::Io {
            op: "write layer into",
            path: root.clone(),
            source,
        })?;
        let (gz, diff_id, _) = tar_out.finish();
        let blob = gz.finish().map_err(Error::io("gzip layer into", &root))?;
        let (digest, size) = blob.commit()?;
        Ok(Layer {
            descriptor: Descriptor::new(MEDIA_TYPE_LAYER_GZIP, digest, size),
            diff_id,
        })
    }

    /// A failure to write the output names the store, not the entry.
    fn output_error(&self, e: Error) -> Error {
        match e {
            Error::Io { op, source, .. } if op.starts_with("write") || op == "finish tar" => {
                Error::Io {
                    op: "write layer into",
                    path: self.root.clone(),
                    source,
                }
            }
            other => other,
        }
    }
}

fn header(mtime: u64, mode: u32, owner: (u64, u64)) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_mtime(mtime);
    header.set_uid(owner.0);
    header.set_gid(owner.1);
    header.set_mode(mode);
    header
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    mtime: u64,
    path: &str,
    entry: &Entry,
) -> Result<()> {
    let mut header = header(mtime, entry.mode, entry.owner);
    let failed = |e: io::Error| Error::Io {
        op: "write tar entry",
        path: path.into(),
        source: e,
    };
    match &entry.kind {
        EntryKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, format!("{path}/"), io::empty())
                .map_err(failed)
        }
        EntryKind::Bytes(bytes) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, path, bytes.as_slice())
                .map_err(failed)
        }
        EntryKind::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, path, target).map_err(failed)
        }
        EntryKind::File { source, size } => {
            let file = File::open(source).map_err(Error::io("open", source))?;
            append_file(tar, header, path, *size, file, source)
        }
    }
}

/// Appends a regular file of `size` bytes read from `data`; a read failure or fewer bytes
/// than `size` name `source`, a write failure names `path`.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    mut header: tar::Header,
    path: &str,
    size: u64,
    data: impl Read,
    source: &Path,
) -> Result<()> {
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    let mut reader = CountingReader {
        inner: data.take(size),
        read: 0,
        failed: false,
    };
    match tar.append_data(&mut header, path, &mut reader) {
        // The output failed (disk full, …), not the input.
        Err(e) if !reader.failed => Err(Error::Io {
            op: "write tar entry",
            path: path.into(),
            source: e,
        }),
        Err(e) => Err(Error::Io {
            op: "read",
            path: source.into(),
            source: e,
        }),
        Ok(()) if reader.read != size => Err(Error::FileChanged {
            path: source.into(),
            expected: size,
            found: reader.read,
        }),
        Ok(()) => Ok(()),
    }
}

struct CountingReader<R> {
    inner: R,
    read: u64,
    failed: bool,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|_| self.failed = true)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(b: &LayerBuilder) -> Vec<String> {
        let tar_bytes = b.write_tar(Vec::new()).unwrap();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn entries_are_sorted_with_parents_first() {
        let mut b = LayerBuilder::new(0);
        b.add("app/z.js", Entry::bytes("z"))
            .add("app-x/a", Entry::bytes("a"))
            .add("app/lib/a.js", Entry::bytes("a"));
        assert_eq!(
            names(&b),
            [
                "app/",
                "app/lib/",
                "app/lib/a.js",
                "app/z.js",
                "app-x/",
                "app-x/a"
            ]
        );
    }

    #[test]
    fn headers_are_normalized() {
        let mut b = LayerBuilder::new(1234);
        b.add("a/b", Entry::bytes("x").with_mode(0o755));
        let tar_bytes = b.write_tar(Vec::new()).unwrap();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        for e in archive.entries().unwrap() {
            let h = e.unwrap().header().clone();
            assert_eq!(
                (h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
                (1234, 0, 0)
            );
            assert_eq!(h.username().unwrap(), Some(""));
            assert_eq!(h.mode().unwrap(), 0o755);
        }
    }

    #[test]
    fn long_paths_survive() {
        let long = format!("app/{}/file.js", "d".repeat(150));
        let mut b = LayerBuilder::new(0);
        b.add(&long, Entry::bytes("x"));
        assert!(names(&b).contains(&long));
    }
}
