//! `kiln submit`: pack the source, upload it by digest, publish the job (message id = job id)
//! and, when asked, follow its events to the revision.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use futures_util::StreamExt;

use crate::nats::{self, NatsError, Queue, nats_err};
use crate::schema::{BuildJob, Event, EventKind, InvalidJob, Revision, SCHEMA_VERSION, now};
use crate::{revisions, source};

/// What to submit.
#[derive(Clone, Debug)]
pub struct Submission {
    /// The app's source directory.
    pub dir: PathBuf,
    /// App name.
    pub app: String,
    /// Runtime, or detected by the worker.
    pub runtime: Option<String>,
    /// Base image reference, or the worker's default.
    pub base: Option<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Job id; random when absent.
    pub job_id: Option<String>,
    /// Knative settings.
    pub deploy: crate::schema::DeploySettings,
}

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The job is not valid.
    #[error(transparent)]
    Invalid(#[from] InvalidJob),
    /// The source could not be packed.
    #[error(transparent)]
    Source(#[from] kiln_layers::Error),
    /// NATS trouble.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The job failed for good.
    #[error("job {job_id} failed: {reason}")]
    Failed {
        /// The job.
        job_id: String,
        /// The reason in its final `failed` event.
        reason: String,
    },
    /// No final event in time.
    #[error("no revision or failure for job {job_id} after {seconds} s")]
    Timeout {
        /// The job.
        job_id: String,
        /// How long we waited.
        seconds: u64,
    },
}

/// A fresh random job id.
pub fn new_job_id() -> String {
    format!("{:016x}{:08x}", fastrand_u64(), std::process::id())
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Packs and uploads the source and publishes the job. Returns the job and whether the
/// queue had already seen its id (a resubmission).
pub async fn submit(
    queue: &Queue,
    submission: &Submission,
    scratch: &Path,
) -> Result<(BuildJob, bool), SubmitError> {
    crate::schema::validate_app(&submission.app)?;
    let store = kiln_layers::BlobStore::open_or_create(scratch)?;
    let dir = submission.dir.clone();
    let (object, path) = tokio::task::spawn_blocking(move || source::pack(&dir, &store))
        .await
        .map_err(nats_err("pack source"))??;
    source::upload(queue, &object, &path).await?;
    let job = BuildJob {
        schema_version: SCHEMA_VERSION,
        job_id: submission.job_id.clone().unwrap_or_else(new_job_id),
        app: submission.app.clone(),
        source: object,
        runtime: submission.runtime.clone(),
        base: submission.base.clone(),
        env: submission.env.clone(),
        deploy: submission.deploy.clone(),
    };
    job.validate()?;
    let duplicate = publish_job(queue, &job).await?;
    if !duplicate {
        let accepted = Event {
            schema_version: SCHEMA_VERSION,
            job_id: job.job_id.clone(),
            app: Some(job.app.clone()),
            kind: EventKind::Accepted,
            at: now(),
        };
        queue
            .publish(
                nats::events_subject(&job.job_id),
                serde_json::to_vec(&accepted).expect("event"),
            )
            .await?;
    }
    Ok((job, duplicate))
}

/// Publishes `job` with its id as message id; true when the stream had it already.
pub async fn publish_job(queue: &Queue, job: &BuildJob) -> Result<bool, NatsError> {
    let subject = format!("{}.{}", nats::JOBS_BUILD_SUBJECT, job.app);
    let ack = queue
        .js
        .send_publish(
            subject,
            PublishMessage::build()
                .payload(serde_json::to_vec(job).expect("job").into())
                .message_id(&job.job_id),
        )
        .await
        .map_err(nats_err("publish job"))?
        .await
        .map_err(nats_err("publish job"))?;
    Ok(ack.duplicate)
}

/// Follows the events of `job_id`, calling `on_event` for each, until its revision or a
/// final failure (or `timeout`). Subscribe with [`subscribe`] before submitting.
pub async fn follow(
    queue: &Queue,
    mut events: async_nats::Subscriber,
    job: &BuildJob,
    timeout: Duration,
    mut on_event: impl FnMut(&Event),
) -> Result<Event, SubmitError> {
    // A resubmitted job may be finished already.
    if let Some(revision) = revisions::by_job(queue, &job.app, &job.job_id, false).await? {
        let event = Event {
            schema_version: SCHEMA_VERSION,
            job_id: job.job_id.clone(),
            app: Some(job.app.clone()),
            kind: EventKind::Revision {
                revision: Box::new(revision),
            },
            at: now(),
        };
        on_event(&event);
        return Ok(event);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, events.next()).await;
        let Ok(Some(message)) = next else {
            return Err(SubmitError::Timeout {
                job_id: job.job_id.clone(),
                seconds: timeout.as_secs(),
            });
        };
        let Ok(event) = serde_json::from_slice::<Event>(&message.payload) else {
            continue;
        };
        on_event(&event);
        match &event.kind {
            EventKind::Revision { .. } => return Ok(event),
            EventKind::Failed {
                retryable: false, ..
            } => return Ok(event),
            _ => {}
        }
    }
}

/// Follows the job like [`follow`] to its revision; a final failure is
/// [`SubmitError::Failed`].
pub async fn wait(
    queue: &Queue,
    events: async_nats::Subscriber,
    job: &BuildJob,
    timeout: Duration,
    on_event: impl FnMut(&Event),
) -> Result<Revision, SubmitError> {
    let last = follow(queue, events, job, timeout, on_event).await?;
    match last.kind {
        EventKind::Revision { revision } => Ok(*revision),
        EventKind::Failed { reason, .. } => Err(SubmitError::Failed {
            job_id: job.job_id.clone(),
            reason,
        }),
        _ => unreachable!("follow returns a revision or a failure"),
    }
}

/// Subscribes to the events of `job_id` (do this before publishing the job).
pub async fn subscribe(queue: &Queue, job_id: &str) -> Result<async_nats::Subscriber, NatsError> {
    queue
        .client
        .subscribe(nats::events_subject(job_id))
        .await
        .map_err(nats_err("subscribe to events"))
}
