//! The shared layer cache on NATS KV (`kiln-layer-cache`): a dependency layer one worker made
//! and pushed is a cache hit on every other (its push mounts the blob instead of uploading).

use bytes::Bytes;
use kiln_builder::shared::{SharedLayer, SharedLayers};
use kiln_layers::Digest;

use crate::nats::{NatsError, Queue, retry};

/// [`SharedLayers`] over the queue's KV, for use on a blocking build thread.
pub struct KvLayers {
    queue: Queue,
    runtime: tokio::runtime::Handle,
}

impl KvLayers {
    /// Looks layers up in `queue`'s bucket, blocking on `runtime`.
    pub fn new(queue: Queue, runtime: tokio::runtime::Handle) -> Self {
        KvLayers { queue, runtime }
    }
}

impl SharedLayers for KvLayers {
    fn get(&self, key: &Digest) -> Option<SharedLayer> {
        let bytes = self
            .runtime
            .block_on(self.queue.layer_cache.get(key.hex()))
            .ok()??;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Records that the layer for cache key `key` is in `shared.repository`.
pub async fn record(queue: &Queue, key: &Digest, shared: &SharedLayer) -> Result<(), NatsError> {
    let body = Bytes::from(serde_json::to_vec(shared).expect("layer"));
    retry::transient(queue.publish_budget, "record shared layer", || {
        queue.layer_cache.put(key.hex(), body.clone())
    })
    .await?;
    Ok(())
}
