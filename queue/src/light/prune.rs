//! Dropping an app's old versions: their records, and their bundles when no version kept by
//! any app still names them (bundles are shared by digest).

use std::collections::BTreeSet;

use async_nats::jetstream::object_store::DeleteErrorKind;

use super::publish::{LightError, versions};
use super::{LIGHT_VERSIONS, Pointer, keys_under, version_key};
use crate::nats::{NatsError, Queue, nats_err};

/// What [`prune`] dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Version numbers whose records were deleted.
    pub versions: Vec<u64>,
    /// Bundles deleted from the object store (`sha256:<hex>`).
    pub bundles: Vec<String>,
}

/// Keeps the app's newest `keep` (at least 1) versions and whatever its pointer names (live, canary,
/// previous); deletes the other records, then each of their bundles that no kept version of
/// any app names. Instances keep their own copies of recent bundles, so a rollback to a
/// pruned version may still work on them, but not on an instance that starts later.
pub async fn prune(queue: &Queue, app: &str, keep: usize) -> Result<Pruned, LightError> {
    // The newest version always stays: version numbers are never given out twice.
    if keep == 0 {
        return Err(LightError::Refused("prune keeps at least 1 version".into()));
    }
    let (pointer, records) = versions(queue, app).await?;
    let named: BTreeSet<u64> = pointer.iter().flat_map(named_versions).collect();
    let newest: BTreeSet<u64> = records.iter().rev().take(keep).map(|r| r.version).collect();
    let (dropped, kept): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| !newest.contains(&r.version) && !named.contains(&r.version));
    let mut pruned = Pruned::default();
    for record in &dropped {
        queue
            .light_pointers
            .purge(version_key(app, record.version))
            .await
            .map_err(nats_err("delete a version record"))?;
        pruned.versions.push(record.version);
    }
    let mut still_named: BTreeSet<String> = kept.into_iter().map(|r| r.digest).collect();
    still_named.extend(digests_of_other_apps(queue, app).await?);
    let unnamed: BTreeSet<String> = dropped
        .into_iter()
        .map(|r| r.digest)
        .filter(|d| !still_named.contains(d))
        .collect();
    for digest in unnamed {
        let name = format!("sha256-{}", digest.trim_start_matches("sha256:"));
        match queue.bundles.delete(&name).await {
            Ok(()) => pruned.bundles.push(digest),
            Err(e) if e.kind() == DeleteErrorKind::NotFound => {}
            Err(e) => return Err(NatsError::new(format!("delete bundle {name}"), e).into()),
        }
    }
    Ok(pruned)
}

/// The versions a pointer names.
fn named_versions(p: &Pointer) -> Vec<u64> {
    let mut out = vec![p.live.version];
    out.extend(p.canary.as_ref().map(|c| c.version));
    out.extend(p.previous.as_ref().map(|t| t.version));
    out
}

/// The digests of every other app's version records.
async fn digests_of_other_apps(queue: &Queue, app: &str) -> Result<Vec<String>, NatsError> {
    let mut digests = Vec::new();
    for key in keys_under(&queue.light_pointers, "", "sma-light versions").await? {
        let Some((owner, _)) = key.split_once(LIGHT_VERSIONS) else {
            continue;
        };
        if owner == app {
            continue;
        }
        if let Some(value) = queue
            .light_pointers
            .get(&key)
            .await
            .map_err(nats_err("read a version record"))?
            && let Ok(record) = serde_json::from_slice::<super::VersionRecord>(&value)
        {
            digests.push(record.digest);
        }
    }
    Ok(digests)
}
