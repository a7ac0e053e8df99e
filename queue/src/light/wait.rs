//! Which instances of an app are running and what they serve, and waiting until every one
//! serves a pointer (`kiln publish --wait`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::publish::LightError;
use super::{Failed, Pointer, Presence};
use crate::nats::{NatsError, Queue, nats_err};

/// An instance whose record was not refreshed for this long is taken as gone (instances
/// refresh every 3 s; the record itself expires after `LIGHT_INSTANCES_TTL`).
pub const STALE: Duration = Duration::from_secs(10);

/// How a wait ended.
#[derive(Clone, Debug)]
pub struct Live {
    /// The instances that serve the pointer.
    pub instances: Vec<String>,
    /// From the pointer's change to the last instance's report.
    pub elapsed: Duration,
    /// Instances that could not load a version of the pointer (they keep serving what they
    /// served), with why.
    pub failed: Vec<(String, Failed)>,
}

/// Each instance's record, with when it was written (ms since the Unix epoch).
type Seen = BTreeMap<String, (Presence, i128)>;

/// The app's running instances (records refreshed within [`STALE`]).
pub async fn instances(queue: &Queue, app: &str) -> Result<Vec<Presence>, NatsError> {
    let mut seen = current(queue, app).await?;
    prune(&mut seen);
    Ok(seen.into_values().map(|(p, _)| p).collect())
}

/// Waits until every running instance of `app` serves `pointer`, or one reports that it
/// cannot load it; `since` is when the pointer changed. No instance running is not an
/// error: instances that start later load the pointer before they are ready.
pub async fn wait_live(
    queue: &Queue,
    app: &str,
    pointer: &Pointer,
    since: Instant,
    timeout: Duration,
) -> Result<Live, LightError> {
    let mut watch = queue
        .light_instances
        .watch(format!("{app}.*"))
        .await
        .map_err(nats_err("watch sma-light instances"))?;
    // Reports made before the watch started are in the records.
    let mut seen = current(queue, app).await?;
    let deadline = since + timeout;
    loop {
        prune(&mut seen);
        let failed: Vec<(String, Failed)> = seen
            .iter()
            .filter_map(|(name, (p, _))| Some((name.clone(), p.failed_on(pointer)?.clone())))
            .collect();
        let all = seen.values().all(|(p, _)| p.serves(pointer));
        if !failed.is_empty() || all {
            return Ok(Live {
                instances: seen.keys().cloned().collect(),
                elapsed: since.elapsed(),
                failed,
            });
        }
        let now = Instant::now();
        if now >= deadline {
            let behind: Vec<String> = seen
                .iter()
                .filter(|(_, (p, _))| !p.serves(pointer))
                .map(|(name, (p, _))| {
                    let live = p.live.as_ref().map_or(0, |t| t.version);
                    format!("{name} serves version {live}")
                })
                .collect();
            return Err(LightError::Refused(format!(
                "after {} s, {} of {} instances of {app} do not serve version {} yet: {}",
                timeout.as_secs(),
                behind.len(),
                seen.len(),
                pointer.live.version,
                behind.join("; ")
            )));
        }
        // Wake at least twice a second to let records of stopped instances go stale.
        let wake = (deadline - now).min(Duration::from_millis(500));
        match tokio::time::timeout(wake, watch.next()).await {
            Err(_) => {}
            Ok(None) => {
                return Err(NatsError::new("watch sma-light instances", "the watch ended").into());
            }
            Ok(Some(entry)) => {
                let entry = entry.map_err(nats_err("watch sma-light instances"))?;
                note(&mut seen, entry);
            }
        }
    }
}

/// The app's instance records as they are now.
async fn current(queue: &Queue, app: &str) -> Result<Seen, NatsError> {
    let prefix = format!("{app}.");
    let names = super::keys_under(&queue.light_instances, &prefix, "sma-light instances").await?;
    let mut seen = Seen::new();
    for name in names {
        if let Some(entry) = queue
            .light_instances
            .entry(format!("{prefix}{name}"))
            .await
            .map_err(nats_err("read a sma-light instance"))?
        {
            note(&mut seen, entry);
        }
    }
    Ok(seen)
}

/// Takes one record (or its deletion) into `seen`.
fn note(seen: &mut Seen, entry: kv::Entry) {
    match entry.operation {
        Operation::Put => match serde_json::from_slice::<Presence>(&entry.value) {
            Ok(p) => {
                let at = entry.created.unix_timestamp_nanos() / 1_000_000;
                seen.insert(entry.key, (p, at));
            }
            Err(e) => tracing::warn!("ignoring instance record {}: {e}", entry.key),
        },
        Operation::Delete | Operation::Purge => {
            seen.remove(&entry.key);
        }
    }
}

/// Drops records not refreshed within [`STALE`].
fn prune(seen: &mut Seen) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i128);
    seen.retain(|_, (_, at)| now - *at < STALE.as_millis() as i128);
}
