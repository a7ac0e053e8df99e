//! Source tarballs: `kiln submit` packs an app directory reproducibly (ignore rules applied,
//! secrets dropped) as `src/…` in a gzip tar named by its digest in the `kiln-sources` object
//! store; a worker fetches it, checks the digest and extracts it safely.

use std::path::{Path, PathBuf};

use async_nats::jetstream::object_store::{self, ObjectMetadata, PutErrorKind};
use kiln_layers::source::ScanOptions;
use kiln_layers::{BlobStore, Digest, LayerBuilder, SourceTree};
use tokio::io::AsyncReadExt;

use crate::nats::{NatsError, Queue, nats_err, retry};

/// The directory inside a source tarball that holds the app.
pub const SOURCE_ROOT: &str = "src";

/// Packs `dir` into `store` as a reproducible tar.gz; returns its object name
/// (`sha256-<hex>`) and the blob's path.
pub fn pack(dir: &Path, store: &BlobStore) -> kiln_layers::Result<(String, PathBuf)> {
    let tree = SourceTree::scan(
        dir,
        &ScanOptions {
            ignore_files: true,
            exclude_top: Vec::new(),
        },
    )?;
    let mut layer = LayerBuilder::new(0);
    layer.add(SOURCE_ROOT, kiln_layers::Entry::dir());
    tree.add_to(&mut layer, SOURCE_ROOT);
    let written = layer.write_to(store)?;
    let digest = written.descriptor.digest;
    Ok((object_name(&digest), store.blob_path(&digest)))
}

/// `sha256-<hex>`: the object name of a tarball with `digest`.
pub fn object_name(digest: &Digest) -> String {
    format!("sha256-{}", digest.hex())
}

/// Uploads the tarball at `path` as `name` unless the store already has it, trying again
/// while the store's stream is unavailable. Returns true when it uploaded.
pub async fn upload(queue: &Queue, name: &str, path: &Path) -> Result<bool, NatsError> {
    if queue.sources.info(name).await.is_ok() {
        return Ok(false);
    }
    // A missing file is an error of its own, not a retry.
    tokio::fs::metadata(path)
        .await
        .map_err(nats_err(format!("open {}", path.display())))?;
    retry::transient(
        queue.publish_budget,
        &format!("upload source {name}"),
        || async {
            // Each try reads the file from its start.
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| object_store::PutError::with_source(PutErrorKind::ReadChunks, e))?;
            let meta = ObjectMetadata {
                name: name.to_owned(),
                ..Default::default()
            };
            queue.sources.put(meta, &mut file).await
        },
    )
    .await?;
    Ok(true)
}

/// Why a source could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The object does not exist (bad input: not retried).
    #[error("source object {0} not found in kiln-sources")]
    Missing(String),
    /// The bytes do not match the name (bad input).
    #[error("source object {name} has digest {actual}")]
    Corrupt {
        /// Object name.
        name: String,
        /// Digest of what was read.
        actual: String,
    },
    /// NATS trouble (retried).
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// Reads the object `name` fully, checking its digest.
pub async fn fetch(queue: &Queue, name: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
    let mut object = match queue.sources.get(name).await {
        Ok(o) => o,
        Err(e) => {
            use async_nats::jetstream::object_store::GetErrorKind;
            return Err(match e.kind() {
                GetErrorKind::NotFound => FetchError::Missing(name.to_owned()),
                _ => nats_err(format!("get source {name}"))(e).into(),
            });
        }
    };
    let mut bytes = Vec::new();
    (&mut object)
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(nats_err(format!("read source {name}")))?;
    let actual = object_name(&Digest::of(&bytes));
    if actual != name {
        return Err(FetchError::Corrupt {
            name: name.to_owned(),
            actual,
        });
    }
    Ok(bytes)
}
