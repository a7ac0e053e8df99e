//! Publishing a bundle as a new version, and moving an app's pointer: rollback, canary,
//! promote, abort. Every pointer change is a compare-and-set on the pointer's revision, so
//! two commands at once never lose one's change.

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::object_store::ObjectMetadata;
use bytes::Bytes;
use kiln_builder::light_bundle::Bundle;

use super::{Canary, Pointer, Target, VersionRecord, version_key};
use crate::nats::{NatsError, Queue, nats_err, retry};
use crate::schema::validate_app;

/// Why a version command failed.
#[derive(Debug, thiserror::Error)]
pub enum LightError {
    /// Talking to NATS failed.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The command does not apply: a bad app name, no such version, no canary to promote.
    #[error("{0}")]
    Refused(String),
}

/// A pointer as it was written, with its KV revision (instances report the revision they
/// serve, so a wait can tell a later pointer from an earlier one).
#[derive(Clone, Debug)]
pub struct Moved {
    /// The pointer.
    pub pointer: Pointer,
    /// Its revision in the `kiln-light` KV.
    pub revision: u64,
}

/// What [`publish`] did.
#[derive(Clone, Debug)]
pub struct Published {
    /// The new version's record.
    pub record: VersionRecord,
    /// The pointer now in place.
    pub moved: Moved,
    /// The bundle was uploaded (false: the store had it already).
    pub uploaded: bool,
}

/// Stores `bundle` (unless the store has it), records it as the app's next version and
/// points the app at it: all traffic, or `canary` percent of the sticky keys. A canary
/// needs a live version beside it: on an app's first publish it is refused before anything
/// is uploaded or recorded.
pub async fn publish(
    queue: &Queue,
    app: &str,
    bundle: &Bundle,
    routes: serde_json::Value,
    canary: Option<f64>,
) -> Result<Published, LightError> {
    validate_app(app).map_err(|e| LightError::Refused(e.to_string()))?;
    if let Some(p) = canary
        && !(p > 0.0 && p < 100.0)
    {
        return Err(LightError::Refused(format!(
            "a canary takes between 0 and 100 percent, not {p}"
        )));
    }
    if canary.is_some() && pointer(queue, app).await?.is_none() {
        return Err(no_live_yet(app));
    }
    let uploaded = upload(queue, bundle).await?;
    let record = reserve(queue, app, bundle, routes).await?;
    let target = Target {
        version: record.version,
        digest: record.digest.clone(),
    };
    let moved = change(queue, app, |current| {
        next_pointer(app, current, &target, canary)
    })
    .await?;
    Ok(Published {
        record,
        moved,
        uploaded,
    })
}

/// The pointer after publishing `target` over `current`: live for all traffic, or (with a
/// live version already) its canary at `canary` percent.
fn next_pointer(
    app: &str,
    current: Option<Pointer>,
    target: &Target,
    canary: Option<f64>,
) -> Result<Pointer, LightError> {
    Ok(match (current, canary) {
        (None, Some(_)) => return Err(no_live_yet(app)),
        (None, None) => Pointer {
            app: app.into(),
            live: target.clone(),
            canary: None,
            previous: None,
        },
        (Some(p), Some(percent)) => Pointer {
            canary: Some(Canary {
                version: target.version,
                digest: target.digest.clone(),
                percent,
            }),
            ..p
        },
        (Some(p), None) => Pointer {
            app: app.into(),
            previous: Some(p.live),
            live: target.clone(),
            canary: None,
        },
    })
}

/// The app's pointer (if it ever published) and its version records, oldest first.
pub async fn versions(
    queue: &Queue,
    app: &str,
) -> Result<(Option<Pointer>, Vec<VersionRecord>), LightError> {
    validate_app(app).map_err(|e| LightError::Refused(e.to_string()))?;
    let pointer = pointer(queue, app).await?.map(|(p, _)| p);
    let mut records = Vec::new();
    for n in version_numbers(queue, app).await? {
        if let Some(value) = queue
            .light_pointers
            .get(version_key(app, n))
            .await
            .map_err(nats_err("read a version record"))?
            && let Ok(record) = serde_json::from_slice::<VersionRecord>(&value)
        {
            records.push(record);
        }
    }
    Ok((pointer, records))
}

/// Rolls the app back: with a canary in flight, the canary ends and the live version keeps
/// all traffic; otherwise version `to`, or the version live before the current one, becomes
/// live. Instances keep recent bundles, so going back needs no fetch.
pub async fn rollback(queue: &Queue, app: &str, to: Option<u64>) -> Result<Moved, LightError> {
    let chosen = match to {
        Some(n) => Some(record(queue, app, n).await?),
        None => None,
    };
    change(queue, app, |current| {
        let p = current.ok_or_else(|| no_versions(app))?;
        if let Some(record) = &chosen {
            return Ok(Pointer {
                previous: Some(p.live.clone()),
                live: Target {
                    version: record.version,
                    digest: record.digest.clone(),
                },
                canary: None,
                app: app.into(),
            });
        }
        if p.canary.is_some() {
            return Ok(Pointer { canary: None, ..p });
        }
        let back = p.previous.clone().ok_or_else(|| {
            LightError::Refused(format!(
                "{app} has no earlier version to roll back to (give --to N)"
            ))
        })?;
        Ok(Pointer {
            app: app.into(),
            previous: Some(p.live),
            live: back,
            canary: None,
        })
    })
    .await
}

/// The canary becomes live for all traffic.
pub async fn promote(queue: &Queue, app: &str) -> Result<Moved, LightError> {
    change(queue, app, |current| {
        let p = current.ok_or_else(|| no_versions(app))?;
        let canary = p.canary.clone().ok_or_else(|| no_canary(app))?;
        Ok(Pointer {
            app: app.into(),
            previous: Some(p.live),
            live: canary.target(),
            canary: None,
        })
    })
    .await
}

/// The canary ends; the live version keeps all traffic.
pub async fn abort(queue: &Queue, app: &str) -> Result<Moved, LightError> {
    change(queue, app, |current| {
        let p = current.ok_or_else(|| no_versions(app))?;
        p.canary.as_ref().ok_or_else(|| no_canary(app))?;
        Ok(Pointer { canary: None, ..p })
    })
    .await
}

fn no_versions(app: &str) -> LightError {
    LightError::Refused(format!("{app} has no published version"))
}

fn no_live_yet(app: &str) -> LightError {
    LightError::Refused(format!(
        "{app} has no live version yet: publish without --canary first"
    ))
}

fn no_canary(app: &str) -> LightError {
    LightError::Refused(format!("{app} has no canary in flight"))
}

/// Uploads the bundle as `sha256-<hex>` unless the store has it. True when it uploaded.
async fn upload(queue: &Queue, bundle: &Bundle) -> Result<bool, NatsError> {
    let name = format!("sha256-{}", bundle.digest.trim_start_matches("sha256:"));
    // A bundle pruned earlier reads back as deleted: it is uploaded again.
    if matches!(queue.bundles.info(&name).await, Ok(info) if !info.deleted) {
        return Ok(false);
    }
    retry::transient(
        queue.publish_budget,
        &format!("upload bundle {name}"),
        || async {
            let meta = ObjectMetadata {
                name: name.clone(),
                ..Default::default()
            };
            let mut bytes = &bundle.bytes[..];
            queue.bundles.put(meta, &mut bytes).await
        },
    )
    .await?;
    Ok(true)
}

/// The app's version numbers, ascending.
async fn version_numbers(queue: &Queue, app: &str) -> Result<Vec<u64>, NatsError> {
    let prefix = format!("{app}{}", super::LIGHT_VERSIONS);
    let keys = super::keys_under(&queue.light_pointers, &prefix, "sma-light versions").await?;
    let mut numbers: Vec<u64> = keys.iter().filter_map(|n| n.parse().ok()).collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Records the bundle under the app's next version number (a create, so two publishes at
/// once get different numbers).
async fn reserve(
    queue: &Queue,
    app: &str,
    bundle: &Bundle,
    routes: serde_json::Value,
) -> Result<VersionRecord, NatsError> {
    let mut next = version_numbers(queue, app)
        .await?
        .last()
        .copied()
        .unwrap_or(0)
        + 1;
    loop {
        let record = VersionRecord {
            app: app.into(),
            version: next,
            digest: bundle.digest.clone(),
            files: bundle.files,
            bytes: bundle.bytes.len(),
            routes: routes.clone(),
            published_at: crate::schema::now(),
        };
        let value = Bytes::from(serde_json::to_vec(&record).expect("a record serializes"));
        match queue
            .light_pointers
            .create(version_key(app, next), value)
            .await
        {
            Ok(_) => return Ok(record),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => next += 1,
            Err(e) => return Err(NatsError::new("record a sma-light version", e)),
        }
    }
}

/// Version `n`'s record, or an error naming it.
async fn record(queue: &Queue, app: &str, n: u64) -> Result<VersionRecord, LightError> {
    validate_app(app).map_err(|e| LightError::Refused(e.to_string()))?;
    let value = queue
        .light_pointers
        .get(version_key(app, n))
        .await
        .map_err(nats_err("read a version record"))?
        .ok_or_else(|| LightError::Refused(format!("{app} has no version {n}")))?;
    serde_json::from_slice(&value)
        .map_err(|e| LightError::Refused(format!("version record {app} {n}: {e}")))
}

/// The app's pointer and its KV revision.
async fn pointer(queue: &Queue, app: &str) -> Result<Option<(Pointer, u64)>, NatsError> {
    let entry = queue
        .light_pointers
        .entry(app)
        .await
        .map_err(nats_err("read the sma-light pointer"))?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .and_then(|e| Some((serde_json::from_slice(&e.value).ok()?, e.revision))))
}

/// Replaces the app's pointer with `next(current)`, again on a concurrent change.
async fn change(
    queue: &Queue,
    app: &str,
    next: impl Fn(Option<Pointer>) -> Result<Pointer, LightError>,
) -> Result<Moved, LightError> {
    validate_app(app).map_err(|e| LightError::Refused(e.to_string()))?;
    loop {
        let current = pointer(queue, app).await?;
        let revision = current.as_ref().map(|(_, r)| *r);
        let wanted = next(current.map(|(p, _)| p))?;
        let value = Bytes::from(serde_json::to_vec(&wanted).expect("a pointer serializes"));
        let done = match revision {
            Some(r) => match queue.light_pointers.update(app, value, r).await {
                Ok(revision) => Some(revision),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
                Err(e) => return Err(NatsError::new("move the sma-light pointer", e).into()),
            },
            None => match queue.light_pointers.create(app, value).await {
                Ok(revision) => Some(revision),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => None,
                Err(e) => return Err(NatsError::new("set the sma-light pointer", e).into()),
            },
        };
        if let Some(revision) = done {
            return Ok(Moved {
                pointer: wanted,
                revision,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(version: u64) -> Target {
        Target {
            version,
            digest: format!("sha256:{version:064}"),
        }
    }

    #[test]
    fn a_first_publish_is_live_and_a_first_canary_is_refused() {
        let first = next_pointer("pages", None, &target(1), None).unwrap();
        assert_eq!(first.live, target(1));
        assert_eq!((first.canary, first.previous), (None, None));
        let err = next_pointer("pages", None, &target(1), Some(10.0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pages has no live version yet: publish without --canary first"
        );
    }

    #[test]
    fn later_publishes_go_live_or_ride_beside_the_live_version_as_a_canary() {
        let live = next_pointer("pages", None, &target(1), None).unwrap();
        let canary = next_pointer("pages", Some(live.clone()), &target(2), Some(10.0)).unwrap();
        assert_eq!(canary.live, target(1));
        assert_eq!(canary.canary.as_ref().map(Canary::target), Some(target(2)));
        assert_eq!(canary.canary.as_ref().map(|c| c.percent), Some(10.0));
        let next = next_pointer("pages", Some(canary), &target(3), None).unwrap();
        assert_eq!(next.live, target(3));
        assert_eq!(next.previous, Some(target(1)));
        assert_eq!(next.canary, None);
    }
}
