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

/// While waiting, an instance whose record was not refreshed for this long (by the NATS
/// server's clock) is taken as gone: instances refresh every 3 s. Records of stopped
/// instances are deleted as they stop, or expire after `LIGHT_INSTANCES_TTL` on the server.
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

/// Each instance's record, with when the server stored it (ms since the Unix epoch).
type Seen = BTreeMap<String, (Presence, i128)>;

/// The app's running instances: the records in the bucket. Records of instances that stop
/// are deleted, and the server expires those of instances that die (the bucket's max age),
/// so no local clock is consulted.
pub async fn instances(queue: &Queue, app: &str) -> Result<Vec<Presence>, NatsError> {
    let seen = current(queue, app).await?;
    Ok(seen.into_values().map(|(p, _)| p).collect())
}

/// The NATS server's clock, read off an entry it stored: the entry's time plus the local
/// time passed since it was read. Records' ages are measured against it, never against the
/// local wall clock, which may be off by any amount.
#[derive(Clone, Copy, Debug)]
struct ServerClock {
    /// A server time, ms since the Unix epoch.
    at_ms: i128,
    /// When (locally, monotonic) that time was current.
    read: Instant,
}

impl ServerClock {
    /// The server's clock, from the app's pointer entry, just written by the command that
    /// waits (its time is at most the latency behind the server's now, so records age no
    /// faster than they do); the local clock if the pointer is gone (nothing deletes it).
    async fn from_pointer(queue: &Queue, app: &str) -> Result<Self, NatsError> {
        let read = Instant::now();
        let entry = queue
            .light_pointers
            .entry(app)
            .await
            .map_err(nats_err("read the sma-light pointer"))?;
        let at_ms = match entry {
            Some(e) => stored_ms(&e),
            None => {
                tracing::warn!("{app} has no pointer: instance ages by the local clock");
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i128)
            }
        };
        Ok(Self { at_ms, read })
    }

    /// The server's time now, ms since the Unix epoch.
    fn now_ms(&self) -> i128 {
        self.at_ms + self.read.elapsed().as_millis() as i128
    }
}

/// Waits until every running instance of `app` serves `pointer` (written at KV `revision`)
/// or a later pointer, or one reports that it cannot load it; `since` is when the pointer
/// changed. No instance running is not an
/// error: instances that start later load the pointer before they are ready.
pub async fn wait_live(
    queue: &Queue,
    app: &str,
    pointer: &Pointer,
    revision: u64,
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
    let clock = ServerClock::from_pointer(queue, app).await?;
    let deadline = since + timeout;
    loop {
        prune(&mut seen, clock.now_ms());
        let failed: Vec<(String, Failed)> = seen
            .iter()
            .filter_map(|(name, (p, _))| Some((name.clone(), p.failed_on(pointer)?.clone())))
            .collect();
        let all = seen
            .values()
            .all(|(p, _)| p.serves_since(pointer, revision));
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
                .filter(|(_, (p, _))| !p.serves_since(pointer, revision))
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
                let at = stored_ms(&entry);
                seen.insert(entry.key, (p, at));
            }
            Err(e) => tracing::warn!("ignoring instance record {}: {e}", entry.key),
        },
        Operation::Delete | Operation::Purge => {
            seen.remove(&entry.key);
        }
    }
}

/// Drops records not refreshed within [`STALE`] of `now_ms` (the server's time).
fn prune(seen: &mut Seen, now_ms: i128) {
    seen.retain(|_, (_, at)| now_ms - *at < STALE.as_millis() as i128);
}

/// When the server stored `entry`, in ms since the Unix epoch (by the server's clock).
fn stored_ms(entry: &kv::Entry) -> i128 {
    entry.created.unix_timestamp_nanos() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(name: &str) -> Presence {
        Presence {
            instance: name.into(),
            app: "pages".into(),
            live: None,
            canary: None,
            revision: 0,
            failed: None,
            switched: None,
        }
    }

    #[test]
    fn a_later_pointer_counts_and_a_failure_tried_again_does_not() {
        let target = |version| super::super::Target {
            version,
            digest: format!("sha256:{version:064}"),
        };
        let pointer = Pointer {
            app: "pages".into(),
            live: target(4),
            canary: None,
            previous: None,
        };
        let mut p = presence("a");
        p.live = Some(target(3));
        p.revision = 9;
        assert!(!p.serves_since(&pointer, 10), "an earlier pointer");
        assert!(
            p.serves_since(&pointer, 9) && p.serves_since(&pointer, 8),
            "this one or a later one"
        );
        p.revision = 0;
        p.live = Some(target(4));
        assert!(
            p.serves_since(&pointer, 10),
            "exactly what the pointer says"
        );
        p.failed = Some(Failed {
            version: 4,
            digest: target(4).digest,
            error: "timed out".into(),
            retry: true,
        });
        assert!(p.failed_on(&pointer).is_none(), "it tries again");
        p.failed.as_mut().unwrap().retry = false;
        assert!(p.failed_on(&pointer).is_some());
    }

    #[test]
    fn records_age_by_the_servers_clock_whatever_the_local_one_says() {
        // A server 1 h ahead of (or behind) this machine: its times are all that count.
        for skew_ms in [3_600_000i128, -3_600_000] {
            let local_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i128;
            let server_ms = local_ms + skew_ms;
            let clock = ServerClock {
                at_ms: server_ms,
                read: Instant::now(),
            };
            let now = clock.now_ms();
            assert!((server_ms..server_ms + 1_000).contains(&now), "{now}");
            let mut seen = Seen::new();
            seen.insert("fresh".into(), (presence("fresh"), server_ms - 2_000));
            seen.insert("stale".into(), (presence("stale"), server_ms - 11_000));
            prune(&mut seen, now);
            assert_eq!(seen.keys().collect::<Vec<_>>(), ["fresh"], "skew {skew_ms}");
        }
    }

    #[test]
    fn the_server_clock_runs_on_with_local_time() {
        let clock = ServerClock {
            at_ms: 1_000_000,
            read: Instant::now() - Duration::from_secs(4),
        };
        let now = clock.now_ms();
        assert!((1_004_000..1_005_000).contains(&now), "{now}");
    }
}
