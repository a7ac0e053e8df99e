//! The local layer cache: an OCI layout of blobs plus small key files mapping a cache key to
//! the layer made for it. A key file is written only after its blob is in place, and an entry
//! whose blob is missing or has the wrong size counts as a miss, so a crash never poisons it.

use std::fs;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use crate::store::write_atomic;
use crate::{BlobStore, Digest, Error, Layer, Result};

/// A cache key built from labelled parts, e.g. `lockfile=<sha>`, `abi=115`.
#[derive(Clone, Debug, Default)]
pub struct CacheKey {
    parts: Vec<(String, String)>,
}

impl CacheKey {
    /// A key whose first part names the kind of layer (`deps`, `app`, …).
    pub fn new(kind: &str) -> Self {
        CacheKey::default()
            .with("kind", kind)
            .with("format", crate::LAYER_FORMAT)
    }

    /// Adds a labelled part.
    pub fn with(mut self, label: &str, value: impl AsRef<str>) -> Self {
        self.parts.push((label.into(), value.as_ref().into()));
        self
    }

    /// The digest of all parts in order.
    pub fn digest(&self) -> Digest {
        let mut h = Sha256::new();
        for (label, value) in &self.parts {
            h.update(format!("{label}={value}\n").as_bytes());
        }
        Digest::from_hasher(h)
    }
}

/// Layers made earlier, found by key; blobs live in an OCI layout under the cache directory.
#[derive(Clone, Debug)]
pub struct LayerCache {
    store: BlobStore,
    keys: PathBuf,
}

impl LayerCache {
    /// Opens (creating if needed) the cache in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let store = BlobStore::open_or_create(&dir)?;
        let keys = dir.join("keys");
        fs::create_dir_all(&keys).map_err(Error::io("create directory", &keys))?;
        Ok(LayerCache { store, keys })
    }

    /// The blob store holding the cached blobs.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The layer stored for `key`, if it is there and whole.
    pub fn get(&self, key: &CacheKey) -> Option<Layer> {
        let bytes = fs::read(self.key_path(key)).ok()?;
        let layer: Layer = serde_json::from_slice(&bytes).ok()?;
        let size = fs::metadata(self.store.blob_path(&layer.descriptor.digest))
            .ok()?
            .len();
        (size == layer.descriptor.size).then_some(layer)
    }

    /// Records `layer` (already in the store) under `key`.
    pub fn put(&self, key: &CacheKey, layer: &Layer) -> Result<()> {
        let json = serde_json::to_vec(layer).map_err(Error::json("cache entry"))?;
        write_atomic(&self.key_path(key), &json)
    }

    fn key_path(&self, key: &CacheKey) -> PathBuf {
        self.keys.join(format!("{}.json", key.digest().hex()))
    }
}
