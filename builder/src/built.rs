//! What a build returns: the image, where its blobs are, and one record per layer that the
//! CLI's `--json`, the worker's revisions and the shared deps cache read directly.

use std::fmt;

use kiln_layers::{BlobStore, Descriptor, Digest, ImageManifest};
use serde::{Deserialize, Serialize};

/// Which part of the image a layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// A layer of the base image (the runtime layer of a runtime base excepted).
    Base,
    /// The runtime layer (`faas`, `sma` or `app` launcher).
    Runtime,
    /// `/app/node_modules`.
    Deps,
    /// `/app`: the app's files, or its build output.
    App,
}

impl LayerKind {
    /// Its name, as in records and progress.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::Base => "base",
            LayerKind::Runtime => "runtime",
            LayerKind::Deps => "deps",
            LayerKind::App => "app",
        }
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One layer of a built image, bottom first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Which part of the image it is.
    pub kind: LayerKind,
    /// The layer blob.
    pub descriptor: Descriptor,
    /// Digest of its uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// The cache key it is stored under (none for base layers).
    pub cache_key: Option<Digest>,
    /// True when no work made it: in the base, the local cache or the shared cache.
    pub cache_hit: bool,
    /// True when it came from another machine through the shared cache.
    pub shared: bool,
    /// Where it came from (`npm ci`, `12 entries`, …).
    pub detail: String,
    /// Time spent on it in this build, in milliseconds.
    pub millis: u64,
}

/// A built image; its blobs are in `store`.
#[derive(Clone, Debug)]
pub struct Built {
    /// The image manifest.
    pub manifest: Descriptor,
    /// The manifest document.
    pub image: ImageManifest,
    /// Every layer, bottom first (the same order as `image.layers`).
    pub layers: Vec<LayerRecord>,
    /// The runtime the image runs (`faas`, `sma`, `app`).
    pub runtime: String,
    /// The base image's name, as it was asked for.
    pub base_name: String,
    /// Every blob of the image: layers, config, manifest.
    pub blobs: Vec<Digest>,
    /// The store holding them (the cache layout).
    pub store: BlobStore,
}

impl Built {
    /// The image with manifest `manifest` (document `image`) whose blobs are in `store`.
    pub fn new(
        store: BlobStore,
        manifest: Descriptor,
        image: ImageManifest,
        layers: Vec<LayerRecord>,
        runtime: String,
        base_name: String,
    ) -> Built {
        let mut blobs: Vec<Digest> = image.layers.iter().map(|d| d.digest.clone()).collect();
        blobs.push(image.config.digest.clone());
        blobs.push(manifest.digest.clone());
        Built {
            manifest,
            image,
            layers,
            runtime,
            base_name,
            blobs,
            store,
        }
    }

    /// An image made outside the stages (a base, a rebase): no layer records; runtime and
    /// base name from its annotations.
    pub fn unrecorded(store: BlobStore, manifest: Descriptor, image: ImageManifest) -> Built {
        let annotation = |key: &str| image.annotations.get(key).cloned().unwrap_or_default();
        let runtime = annotation(crate::build::ANNOTATION_RUNTIME);
        let base_name = annotation(crate::build::ANNOTATION_BASE_NAME);
        Built::new(store, manifest, image, Vec::new(), runtime, base_name)
    }

    /// A manifest annotation of the image.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.image.annotations.get(key).map(String::as_str)
    }

    /// The layers of `kind`.
    pub fn layers_of(&self, kind: LayerKind) -> impl Iterator<Item = &LayerRecord> {
        self.layers.iter().filter(move |l| l.kind == kind)
    }
}
