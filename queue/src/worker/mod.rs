//! The build worker: pulls jobs from `kiln-workers`, builds and pushes each, records exactly
//! one revision per job id, and acks only after the revision is recorded.
//!
//! Bad input (malformed job, unknown runtime, missing source, invalid package.json, hostile
//! tarball) is terminated at once with a `failed` event; transient faults (registry or NATS
//! trouble) are nak'ed with backoff and reported retryable, and a job that has used up its
//! deliveries gets a final `failed` event and leaves the queue.
//!
//! [`run`] is the polling loop; `delivery` handles one message (heartbeats, ack, nak or
//! term), `build_job` and `rebase_job` turn a job into a revision, `events` publishes a
//! job's events and `advisories` gives up the jobs whose worker died on every delivery.

mod advisories;
mod build_job;
mod delivery;
mod error;
mod events;
mod rebase_job;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kiln_builder::registry::Registry;
use kiln_layers::ExtractLimits;
use kiln_layers::oci::Platform;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::nats::{NatsError, Queue};

/// How a worker runs.
#[derive(Clone)]
pub struct WorkerOptions {
    /// Name in events and logs.
    pub name: String,
    /// Jobs built at once.
    pub jobs: usize,
    /// Local cache directory (layers, bases, scratch).
    pub cache_dir: PathBuf,
    /// Where images go: `host[:port]/prefix`; an app's image is `<this>/<app>`.
    pub repository: String,
    /// Base when a job names none; `None` means the host's node.
    pub default_base: Option<String>,
    /// Platform picked from base indexes.
    pub platform: Platform,
    /// The registry client (one pool for every job).
    pub registry: Registry,
    /// Ack wait of the consumer; heartbeats go out at a third of it.
    pub ack_wait: Duration,
    /// How long a shutdown waits for jobs in hand.
    pub grace: Duration,
    /// Limits for extracting source tarballs.
    pub limits: ExtractLimits,
}

/// What every job of a worker shares.
struct Ctx {
    queue: Queue,
    opts: WorkerOptions,
    metrics: Arc<Metrics>,
}

/// Runs a worker until `shutdown` resolves, then finishes the jobs in hand (up to the grace
/// period) and returns.
pub async fn run(
    queue: Queue,
    opts: WorkerOptions,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NatsError> {
    let consumer = queue.workers_consumer(opts.ack_wait).await?;
    let slots = Arc::new(Semaphore::new(opts.jobs.max(1)));
    let ctx = Arc::new(Ctx {
        queue: queue.clone(),
        opts: opts.clone(),
        metrics,
    });
    tokio::spawn(advisories::watch_max_deliveries(ctx.clone()));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore open"),
        };
        let batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages();
        let mut batch = tokio::select! {
            _ = &mut shutdown => break,
            batch = batch => match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("fetching jobs: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let message = tokio::select! {
            _ = &mut shutdown => break,
            m = batch.next() => m,
        };
        match message {
            Some(Ok(message)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    delivery::handle(&ctx, message).await;
                    drop(permit);
                });
            }
            Some(Err(e)) => tracing::warn!("receiving a job: {e}"),
            None => {}
        }
    }
    tracing::info!("shutting down: waiting for jobs in hand");
    let all = u32::try_from(opts.jobs.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(opts.grace, slots.acquire_many(all)).await;
    Ok(())
}
