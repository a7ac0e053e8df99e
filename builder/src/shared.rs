//! A layer cache shared between machines (the worker backs it with NATS KV): a cache key
//! names a layer descriptor and a registry repository its blob is in. A hit means the layer
//! is neither made nor uploaded here: the push mounts it from that repository.

use kiln_layers::{Digest, Layer};

/// A layer another machine made and pushed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedLayer {
    /// The layer.
    pub layer: Layer,
    /// `host[:port]/repository` its blob was pushed to.
    pub repository: String,
}

/// Looks layers up by cache key in a shared index.
pub trait SharedLayers: Sync {
    /// The layer for cache key `key`, if another machine recorded one.
    fn get(&self, key: &Digest) -> Option<SharedLayer>;
}

/// No shared cache: every miss is made locally.
pub struct NoSharedLayers;

impl SharedLayers for NoSharedLayers {
    fn get(&self, _key: &Digest) -> Option<SharedLayer> {
        None
    }
}
