//! Revision records: one deployable image of an app, with its layers and timings.

use serde::{Deserialize, Serialize};

use super::DeploySettings;

/// One layer of a revision's image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// `base`, `runtime`, `deps` or `app`.
    pub kind: String,
    /// Layer digest.
    pub digest: String,
    /// Compressed size.
    pub size: u64,
    /// True when the layer came from a cache.
    pub cache_hit: bool,
}

/// A revision: one deployable image of an app, `<app>-<NNNNN>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    /// Always [`SCHEMA_VERSION`](super::SCHEMA_VERSION).
    pub schema_version: u32,
    /// `<app>-<NNNNN>`.
    pub name: String,
    /// The app.
    pub app: String,
    /// The revision number (1, 2, …, contiguous per app).
    pub number: u64,
    /// The job that made it.
    pub job_id: String,
    /// The image pinned by digest: `host/repo@sha256:…`.
    pub image: String,
    /// The image manifest digest.
    pub digest: String,
    /// Runtime name.
    pub runtime: String,
    /// Base image name.
    pub base: String,
    /// Base manifest digest.
    pub base_digest: String,
    /// Source digest (app files + dependency inputs).
    pub source_digest: String,
    /// Source tarball object name.
    pub source_object: String,
    /// User environment.
    pub env: Vec<String>,
    /// Container port.
    pub port: u16,
    /// Knative settings from the job.
    #[serde(default)]
    pub deploy: DeploySettings,
    /// Layers, bottom first, with cache hits.
    pub layers: Vec<LayerRecord>,
    /// Milliseconds spent: build, push, total.
    pub timings_ms: Timings,
    /// When it was recorded (RFC 3339).
    pub created: String,
}

/// Time spent on a revision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Fetch, extract and build.
    pub build: u64,
    /// Push to the registry.
    pub push: u64,
    /// From the worker taking the job to the revision recorded.
    pub total: u64,
}

/// `<app>-<NNNNN>`.
pub fn revision_name(app: &str, number: u64) -> String {
    format!("{app}-{number:05}")
}
