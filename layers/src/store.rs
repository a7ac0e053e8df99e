//! A content-addressed blob store that is an OCI image layout on disk.
//!
//! Blobs are written to a temp file inside `blobs/sha256/` and renamed into place only once
//! complete, so a crash never leaves a partial blob under a digest name. `index.json` is
//! replaced atomically under a lock on the `oci-layout` file.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::oci::{
    ANNOTATION_REF_NAME, ImageIndex, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST,
    to_canonical_json,
};
use crate::{Descriptor, Digest, Error, HashingWriter, Result};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// An OCI image layout directory used as a blob store.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens the layout at `root`, creating it (and `oci-layout`, `index.json`) if needed.
    pub fn open_or_create(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(Error::io("create directory", &blobs))?;
        let store = BlobStore { root };
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, OCI_LAYOUT)?;
        }
        let index = store.root.join("index.json");
        if !index.exists() {
            let empty = ImageIndex {
                schema_version: 2,
                media_type: Some(MEDIA_TYPE_INDEX.into()),
                manifests: vec![],
            };
            write_atomic(&index, &to_canonical_json(&empty))?;
        }
        Ok(store)
    }

    /// Opens an existing layout; fails if `root` holds no `oci-layout` file.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let layout = root.join("oci-layout");
        fs::metadata(&layout).map_err(Error::io("open OCI layout", &layout))?;
        Ok(BlobStore { root })
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// True if the blob is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Reads a whole blob (for small documents: manifests, configs).
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        fs::read(&path).map_err(Error::io("read blob", path))
    }

    /// Stores `bytes` as a blob and returns its descriptor.
    pub fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let digest = Digest::of(bytes);
        if !self.contains(&digest) {
            let mut w = self.blob_writer()?;
            w.write_all(bytes)
                .map_err(Error::io("write blob", self.root.join("blobs")))?;
            w.commit()?;
        }
        Ok(Descriptor::new(media_type, digest, bytes.len() as u64))
    }

    /// Writes `config` and an OCI manifest over it and `layers` (bottom first); returns the
    /// manifest's descriptor and document.
    pub fn write_image(
        &self,
        config: &crate::ImageConfig,
        layers: Vec<Descriptor>,
        annotations: std::collections::BTreeMap<String, String>,
    ) -> Result<(Descriptor, crate::ImageManifest)> {
        let config = self.write_blob(MEDIA_TYPE_CONFIG, &to_canonical_json(config))?;
        let manifest = crate::ImageManifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.into()),
            config,
            layers,
            annotations,
        };
        let desc = self.write_blob(MEDIA_TYPE_MANIFEST, &to_canonical_json(&manifest))?;
        Ok((desc, manifest))
    }

    /// A writer for a new blob whose digest is computed as it is written.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let dir = self.root.join("blobs/sha256");
        let file = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(Error::io("create temp file in", &dir))?;
        let out = BufWriter::with_capacity(256 * 1024, file);
        Ok(BlobWriter {
            inner: HashingWriter::new(out),
            store: self.clone(),
        })
    }

    /// Makes a blob of `other` present here: hard link when possible, else a copy.
    pub fn import_blob(&self, other: &BlobStore, digest: &Digest) -> Result<()> {
        if self.contains(digest) {
            return Ok(());
        }
        let from = other.blob_path(digest);
        let to = self.blob_path(digest);
        if fs::hard_link(&from, &to).is_ok() {
            return Ok(());
        }
        let dir = self.root.join("blobs/sha256");
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(Error::io("create temp file in", &dir))?;
        let mut src = File::open(&from).map_err(Error::io("open blob", &from))?;
        io::copy(&mut src, &mut tmp.as_file()).map_err(Error::io("copy blob", &from))?;
        persist(tmp, &to)
    }

    /// Reads the layout's `index.json`.
    pub fn index(&self) -> Result<ImageIndex> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(Error::io("read", &path))?;
        serde_json::from_slice(&bytes).map_err(Error::json(path.display().to_string()))
    }

    /// Finds the manifest that `index.json` names `name`.
    pub fn resolve(&self, name: &str) -> Result<Descriptor> {
        self.index()?
            .manifests
            .into_iter()
            .find(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(name))
            .ok_or_else(|| Error::RefNotFound {
                layout: self.root.clone(),
                name: name.into(),
            })
    }

    /// Points `name` at `manifest` in `index.json` (replacing an earlier entry of that name).
    pub fn tag(&self, name: &str, manifest: &Descriptor) -> Result<()> {
        let lock_path = self.root.join("oci-layout");
        let lock = File::open(&lock_path).map_err(Error::io("open", &lock_path))?;
        lock.lock().map_err(Error::io("lock", &lock_path))?;
        let mut index = self.index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name));
        let mut entry = manifest.clone();
        entry
            .annotations
            .insert(ANNOTATION_REF_NAME.into(), name.into());
        index.manifests.push(entry);
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(ANNOTATION_REF_NAME)
                .cmp(&b.annotations.get(ANNOTATION_REF_NAME))
        });
        write_atomic(&self.root.join("index.json"), &to_canonical_json(&index))
    }
}

/// A blob being written; [`BlobWriter::commit`] moves it under its digest.
pub struct BlobWriter {
    inner: HashingWriter<BufWriter<NamedTempFile>>,
    store: BlobStore,
}

impl BlobWriter {
    /// Finishes the blob and renames it into place; returns its digest and size.
    pub fn commit(self) -> Result<(Digest, u64)> {
        let (out, digest, size) = self.inner.finish();
        let dir = self.store.root.join("blobs/sha256");
        let file = out.into_inner().map_err(|e| Error::Io {
            op: "write blob",
            path: dir.clone(),
            source: e.into_error(),
        })?;
        persist(file, &self.store.blob_path(&digest))?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn persist(tmp: NamedTempFile, to: &Path) -> Result<()> {
    tmp.persist(to).map_err(|e| Error::Io {
        op: "rename blob to",
        path: to.into(),
        source: e.error,
    })?;
    Ok(())
}

/// Replaces `path` with `bytes` atomically (temp file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(Error::io("create temp file in", dir))?;
    tmp.write_all(bytes).map_err(Error::io("write", path))?;
    tmp.persist(path).map_err(|e| Error::Io {
        op: "replace",
        path: path.into(),
        source: e.error,
    })?;
    Ok(())
}
