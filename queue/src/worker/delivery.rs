//! One delivery of a job message: parse it, keep it alive with heartbeats while it runs, then
//! ack it (revision recorded), nak it with backoff (transient fault) or terminate it (bad
//! input, or deliveries used up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};

use super::error::JobError;
use super::{Ctx, build_job, events, rebase_job};
use crate::nats::MAX_DELIVER;
use crate::revisions;
use crate::schema::{EventKind, InvalidJob, Job, Revision};

/// Handles one delivery of a job message, from parsing to its ack.
pub(super) async fn handle(ctx: &Ctx, message: jetstream::Message) {
    let started = Instant::now();
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1).max(1) as u64;
    let message = Arc::new(message);
    ctx.metrics.started();
    let job = match Job::parse(&message.subject, &message.payload) {
        Ok(job) => job,
        Err(err) => return reject(ctx, &message, err).await,
    };
    events::report(
        &ctx.queue,
        job.job_id(),
        Some(job.app()),
        EventKind::Building {
            worker: ctx.opts.name.clone(),
            attempt: delivered,
        },
    )
    .await;
    let heartbeat = Heartbeat::start(message.clone(), ctx.opts.ack_wait / 3);
    let result = match &job {
        Job::Build(build) => build_job::process(ctx, build, delivered, started).await,
        Job::Rebase(rebase) => rebase_job::process(ctx, rebase, started).await,
    };
    drop(heartbeat);
    match result {
        Ok(revision) => {
            report_revision(ctx, &job, revision, started).await;
            if let Err(e) = message.double_ack().await {
                tracing::warn!("ack of job {}: {e}", job.job_id());
            }
        }
        Err(error) => fail(ctx, &message, &job, error, delivered, started).await,
    }
}

/// A message that is not a valid job: a final `failed` event (under the message id when it
/// is a valid job id) and out of the queue.
async fn reject(ctx: &Ctx, message: &jetstream::Message, err: InvalidJob) {
    let id = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.to_string())
        .filter(|id| crate::schema::validate_job_id(id).is_ok())
        .unwrap_or_else(|| "unknown".into());
    tracing::warn!("job {id}: {err}");
    events::report(
        &ctx.queue,
        &id,
        None,
        EventKind::Failed {
            reason: err.to_string(),
            retryable: false,
        },
    )
    .await;
    ctx.metrics.failed();
    let _ = message.ack_with(AckKind::Term).await;
}

/// A failed attempt. Bad input ends at once; a transient fault is retried (nak with backoff)
/// until the deliveries run out.
async fn fail(
    ctx: &Ctx,
    message: &jetstream::Message,
    job: &Job,
    error: JobError,
    delivered: u64,
    started: Instant,
) {
    let retry = error.is_transient() && delivered < MAX_DELIVER as u64;
    let reason = if error.is_transient() && !retry {
        format!("gave up after {delivered} attempts: {error}")
    } else {
        error.to_string()
    };
    tracing::warn!("job {} attempt {delivered} failed: {reason}", job.job_id());
    // A final failure: no other attempt may record the job from now on; if one already did,
    // that revision is the answer.
    if !retry {
        match revisions::give_up(&ctx.queue, job.app(), job.job_id()).await {
            Ok(Some(revision)) => {
                report_revision(ctx, job, revision, started).await;
                let _ = message.double_ack().await;
                return;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("mark job {} given up: {e}", job.job_id()),
        }
    }
    if retry {
        ctx.metrics.retried();
    } else {
        ctx.metrics.failed();
    }
    events::report(
        &ctx.queue,
        job.job_id(),
        Some(job.app()),
        EventKind::Failed {
            reason,
            retryable: retry,
        },
    )
    .await;
    let ack = if retry {
        let delay = Duration::from_millis(500 * (1 << (delivered - 1).min(6)));
        AckKind::Nak(Some(delay))
    } else {
        AckKind::Term
    };
    let _ = message.ack_with(ack).await;
}

/// Counts the job done and publishes its `revision` event.
async fn report_revision(ctx: &Ctx, job: &Job, revision: Revision, started: Instant) {
    ctx.metrics.succeeded(started.elapsed());
    events::report(
        &ctx.queue,
        job.job_id(),
        Some(job.app()),
        EventKind::Revision {
            revision: Box::new(revision),
        },
    )
    .await;
}

/// Progress acks that keep a message from being redelivered while its job runs; stopped when
/// dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(message: Arc<jetstream::Message>, every: Duration) -> Heartbeat {
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}
