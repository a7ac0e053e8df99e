//! sma-light versions on NATS: bundles in the `kiln-bundles` object store, a pointer per app
//! in the `kiln-light` KV that every running instance watches, version records beside it,
//! and what each instance serves in `kiln-light-instances`.
//!
//! Why NATS rather than the registry: the platform already runs it, an instance learns of a
//! new pointer by a KV watch within a millisecond on loopback (no polling), the pointer is
//! swapped with a compare-and-set, and the buckets get the replicas of the rest of kiln's
//! state. The `kiln-light` key `<app>` holds a [`Pointer`]; `<app>.versions.<n>` holds a
//! [`VersionRecord`]; an instance's `<app>.<instance>` record ([`Presence`]) is refreshed every
//! few seconds and expires when it stops.

pub mod prune;
pub mod publish;
pub mod wait;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::nats::{NatsError, nats_err};

pub use prune::{Pruned, prune};
pub use publish::{Moved, Published, abort, promote, publish, rollback, versions};
pub use wait::{Live, instances, wait_live};

/// One version an instance loads: its number and its bundle's digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The version number (1, 2, …).
    pub version: u64,
    /// `sha256:<hex>` of its bundle.
    pub digest: String,
}

/// A canary: a version that gets `percent` of the sticky keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// The version number.
    pub version: u64,
    /// Its bundle's digest.
    pub digest: String,
    /// Share of sticky keys (0-100) sent to it.
    pub percent: f64,
}

impl Canary {
    /// The canary's version, without its share.
    pub fn target(&self) -> Target {
        Target {
            version: self.version,
            digest: self.digest.clone(),
        }
    }
}

/// What an app's instances serve: the `kiln-light` value under `<app>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pointer {
    /// The app.
    pub app: String,
    /// The version every request goes to (except the canary's share).
    pub live: Target,
    /// A canary in flight.
    #[serde(default)]
    pub canary: Option<Canary>,
    /// The version that was live before `live` (what a rollback goes back to).
    #[serde(default)]
    pub previous: Option<Target>,
}

/// A published version: the `kiln-light` value under `<app>.versions.<n>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The app.
    pub app: String,
    /// Its number.
    pub version: u64,
    /// Its bundle's digest.
    pub digest: String,
    /// Files in the bundle.
    pub files: usize,
    /// Bundle size in bytes.
    pub bytes: usize,
    /// Its pages, API handlers and middleware, as the runtime's check found them.
    pub routes: serde_json::Value,
    /// When it was published (RFC 3339).
    pub published_at: String,
}

/// What one running instance says it serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// The instance's name.
    pub instance: String,
    /// The app.
    pub app: String,
    /// The live version (version 0, digest `image`, is the image's own).
    pub live: Option<Target>,
    /// The canary it serves, with its share.
    #[serde(default)]
    pub canary: Option<Canary>,
    /// The KV revision of the pointer it serves (0: none yet).
    #[serde(default)]
    pub revision: u64,
    /// The last version it failed to load, while it keeps serving `live`.
    #[serde(default)]
    pub failed: Option<Failed>,
    /// Its last switch.
    #[serde(default)]
    pub switched: Option<Switched>,
}

/// An instance's last switch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Switched {
    /// The version it switched to.
    pub version: u64,
    /// It fetched a bundle from the store (false: all came from its own cache).
    pub fetched: bool,
    /// From the pointer's arrival to serving, in ms.
    pub ms: u64,
}

/// A version an instance could not load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    /// The version.
    pub version: u64,
    /// Its digest.
    pub digest: String,
    /// Why, in the runtime's words.
    pub error: String,
    /// The fetch did not reach the store: the instance tries again.
    #[serde(default)]
    pub retry: bool,
}

impl Presence {
    /// True when the instance serves the pointer written at `revision`, or a later one.
    pub fn serves_since(&self, pointer: &Pointer, revision: u64) -> bool {
        self.revision >= revision && revision > 0 || self.serves(pointer)
    }

    /// True when the instance serves exactly what `pointer` says.
    pub fn serves(&self, pointer: &Pointer) -> bool {
        self.live.as_ref() == Some(&pointer.live)
            && match (&self.canary, &pointer.canary) {
                (None, None) => true,
                (Some(have), Some(want)) => have == want,
                _ => false,
            }
    }

    /// The failure to load one of `pointer`'s versions, if this instance reports one and
    /// does not try again.
    pub fn failed_on(&self, pointer: &Pointer) -> Option<&Failed> {
        let wanted = [
            Some(pointer.live.clone()),
            pointer.canary.as_ref().map(Canary::target),
        ];
        self.failed.as_ref().filter(|f| {
            !f.retry
                && wanted
                    .iter()
                    .flatten()
                    .any(|t| t.version == f.version && t.digest == f.digest)
        })
    }
}

/// What separates an app from a version number in a version record's key.
const LIGHT_VERSIONS: &str = ".versions.";

/// The `kiln-light` key of an app's version record.
pub fn version_key(app: &str, version: u64) -> String {
    format!("{app}{LIGHT_VERSIONS}{version}")
}

/// The keys of `store` that start with `prefix`, with that prefix taken off; `what` names
/// them in an error.
async fn keys_under(store: &kv::Store, prefix: &str, what: &str) -> Result<Vec<String>, NatsError> {
    let action = format!("list {what}");
    let mut keys = store.keys().await.map_err(nats_err(action.clone()))?;
    let mut found = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(nats_err(action.clone()))?;
        if let Some(rest) = key.strip_prefix(prefix) {
            found.push(rest.to_owned());
        }
    }
    Ok(found)
}
