//! Runtime-wide rebase: a rebase job on the queue for every app whose latest revision runs
//! on a runtime, followed to the end. Apps already on the target base are left as they are.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kiln_builder::BuildError;
use kiln_builder::registry::Registry;
use kiln_layers::BlobStore;
use kiln_layers::oci::Platform;

use crate::follow;
use crate::nats::{NatsError, Queue};
use crate::rebase::{apps_on_runtime, job_for, publish_all};
use crate::schema::{Event, EventKind, Revision};

/// What to rebase and how long to wait for it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The runtime whose apps are rebased.
    pub runtime: &'a str,
    /// The new runtime base (a registry reference).
    pub to: &'a str,
    /// How long to wait for every job to finish.
    pub timeout: Duration,
}

/// How a runtime-wide rebase went: what it found, rebased and failed.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The latest revisions already on the target base.
    pub already: Vec<Revision>,
    /// The new revisions, in the order they were recorded.
    pub rebased: Vec<Revision>,
    /// The revisions whose job failed, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Why a runtime-wide rebase stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebaseAllError {
    /// The target base could not be resolved.
    #[error(transparent)]
    Target(#[from] BuildError),
    /// NATS trouble.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The events could not be followed.
    #[error("subscribing to events")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// No app's latest revision runs on the runtime.
    #[error("no app's latest revision runs on runtime {0:?}")]
    NoApps(String),
    /// Jobs still running when the timeout passed.
    #[error("{unfinished} of {total} rebase jobs unfinished after {seconds} s")]
    Unfinished {
        /// Jobs without a revision or final failure.
        unfinished: usize,
        /// Jobs queued.
        total: usize,
        /// The timeout.
        seconds: u64,
    },
}

/// What a runtime-wide rebase reports as it goes; its `Display` is the CLI's line.
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// Apps left as they are: their latest revision is on the target already.
    AlreadyOn {
        /// The target base.
        to: &'a str,
        /// Their latest revisions.
        revisions: &'a [Revision],
    },
    /// The jobs are on the queue.
    Queued {
        /// How many.
        jobs: usize,
        /// The target base.
        to: &'a str,
    },
    /// A job recorded its revision.
    Rebased {
        /// Jobs finished so far, this one included.
        finished: usize,
        /// Jobs queued.
        total: usize,
        /// The revision rebased.
        from: &'a str,
        /// The new revision.
        revision: &'a Revision,
    },
    /// A job failed for good.
    Failed {
        /// Jobs finished so far, this one included.
        finished: usize,
        /// Jobs queued.
        total: usize,
        /// The revision it was rebasing.
        from: &'a str,
        /// Why.
        reason: &'a str,
    },
    /// Every job finished.
    Finished {
        /// Jobs that recorded a revision.
        rebased: usize,
        /// Jobs queued.
        total: usize,
        /// The runtime.
        runtime: &'a str,
        /// Time since the rebase started.
        took: Duration,
        /// Jobs that failed.
        failed: usize,
    },
}

impl fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::AlreadyOn { to, revisions } => {
                let names: Vec<&str> = revisions.iter().map(|r| r.name.as_str()).collect();
                write!(
                    f,
                    "{} apps already on {to}: {}",
                    revisions.len(),
                    names.join(", ")
                )
            }
            Progress::Queued { jobs, to } => write!(f, "queued {jobs} rebase jobs onto {to}"),
            Progress::Rebased {
                finished,
                total,
                from,
                revision,
            } => write!(f, "[{finished}/{total}] {from} -> {}", revision.name),
            Progress::Failed {
                finished,
                total,
                from,
                reason,
            } => write!(f, "[{finished}/{total}] {from} failed: {reason}"),
            Progress::Finished {
                rebased,
                total,
                runtime,
                took,
                failed,
            } => write!(
                f,
                "rebased {rebased} of {total} apps on {runtime} in {:.2} s; {failed} failed",
                took.as_secs_f64()
            ),
        }
    }
}

/// Rebases every app whose latest revision runs on `request.runtime` onto `request.to`: one
/// rebase job each on the queue (a worker does it), followed until each has a revision or a
/// final failure. The target is resolved first (`platform` picks from an index), so apps
/// already on its manifest are skipped.
pub async fn run(
    queue: &Queue,
    registry: &Registry,
    store: &BlobStore,
    platform: &Platform,
    request: &Request<'_>,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Outcome, RebaseAllError> {
    let Request {
        runtime,
        to,
        timeout,
    } = *request;
    let (_, target, _) = kiln_builder::pull::pull_metadata(registry, to, platform, store).await?;
    let target = target.digest.to_string();
    let started = Instant::now();
    let (already, apps): (Vec<_>, Vec<_>) = apps_on_runtime(queue, runtime)
        .await?
        .into_iter()
        .partition(|r| r.base_digest == target);
    if !already.is_empty() {
        progress(Progress::AlreadyOn {
            to,
            revisions: &already,
        });
    }
    let mut outcome = Outcome {
        already,
        ..Outcome::default()
    };
    if apps.is_empty() {
        if outcome.already.is_empty() {
            return Err(RebaseAllError::NoApps(runtime.to_owned()));
        }
        return Ok(outcome);
    }
    let mut events = queue
        .client
        .subscribe("kiln.events.>")
        .await
        .map_err(RebaseAllError::Subscribe)?;
    // Events published while the client reconnects (a NATS node lost) are not seen live:
    // after a silence, each pending job's final event is read back from KILN_EVENTS.
    let mark = follow::events_mark(queue).await?;
    let jobs: Vec<_> = apps.iter().map(|revision| job_for(revision, to)).collect();
    // Job id -> the revision it rebases.
    let mut pending: BTreeMap<String, String> = jobs
        .iter()
        .map(|job| (job.job_id.clone(), job.revision.clone().unwrap_or_default()))
        .collect();
    publish_all(queue, &jobs).await?;
    let total = pending.len();
    progress(Progress::Queued { jobs: total, to });
    let deadline = tokio::time::Instant::now() + timeout;
    let unfinished = |unfinished: usize| RebaseAllError::Unfinished {
        unfinished,
        total,
        seconds: timeout.as_secs(),
    };
    while !pending.is_empty() {
        let wake = deadline.min(tokio::time::Instant::now() + follow::RECHECK);
        let arrived: Vec<Event> = match tokio::time::timeout_at(wake, events.next()).await {
            Ok(Some(message)) => serde_json::from_slice(&message.payload)
                .into_iter()
                .collect(),
            // The client closed, or the time is up.
            Ok(None) => return Err(unfinished(pending.len())),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(unfinished(pending.len()));
            }
            Err(_) => {
                let mut found = Vec::new();
                for job_id in pending.keys() {
                    let subject = crate::nats::events_subject(job_id);
                    found.extend(follow::final_after(queue, &subject, mark).await);
                }
                found
            }
        };
        for event in arrived {
            let Some(from) = pending.get(&event.job_id).cloned() else {
                continue;
            };
            let finished = outcome.rebased.len() + outcome.failed.len() + 1;
            match event.kind {
                EventKind::Revision { revision } => {
                    pending.remove(&event.job_id);
                    progress(Progress::Rebased {
                        finished,
                        total,
                        from: &from,
                        revision: &revision,
                    });
                    outcome.rebased.push(*revision);
                }
                EventKind::Failed {
                    reason,
                    retryable: false,
                } => {
                    pending.remove(&event.job_id);
                    progress(Progress::Failed {
                        finished,
                        total,
                        from: &from,
                        reason: &reason,
                    });
                    outcome.failed.push((from, reason));
                }
                _ => {}
            }
        }
    }
    progress(Progress::Finished {
        rebased: outcome.rebased.len(),
        total,
        runtime,
        took: started.elapsed(),
        failed: outcome.failed.len(),
    });
    Ok(outcome)
}
