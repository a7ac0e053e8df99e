//! Deterministic layer engine for kiln.
//!
//! Walks a source tree under ignore rules, writes normalized tar layers through one-pass
//! nested writers (tar → sha256 diff id → parallel gzip → sha256 digest → blob file), keeps
//! blobs in a content-addressed OCI image layout, caches layers by key, and validates images.
//! No network.

pub mod cache;
pub mod digest;
pub mod error;
pub mod extract;
pub mod layer;
pub mod oci;
pub mod pgzip;
pub mod source;
pub mod store;
pub mod validate;

pub use cache::{CacheKey, LayerCache};
pub use digest::{Digest, HashingWriter};
pub use error::{Error, Result};
pub use extract::{ExtractLimits, Extracted, extract_tar_gz};
pub use layer::{Entry, EntryKind, Layer, LayerBuilder, LayerStream};
pub use oci::{Descriptor, ImageConfig, ImageIndex, ImageManifest};
pub use source::{SourceEntry, SourceKind, SourceTree};
pub use store::BlobStore;

/// Version of the layer format: tar normalization and the pinned compression setting.
/// Part of every cache key, so a change here never reuses layers made the old way.
pub const LAYER_FORMAT: &str = "kiln-layer-v1;tar=ustar,mtime=epoch,owner=0;gzip=6,members=1MiB";
