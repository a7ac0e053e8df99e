//! `kiln submit`: pack the source, upload it by digest, publish the job (message id = job id)
//! and, when asked, follow its events to the revision.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::follow::Events;
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
    format!(
        "{:016x}{:08x}",
        nats::publish::random_u64(),
        std::process::id()
    )
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
        // One `accepted` per job, however often this is tried.
        queue
            .publish_with_id(
                nats::events_subject(&job.job_id),
                serde_json::to_vec(&accepted).expect("event").into(),
                &format!("accepted-{}", job.job_id),
            )
            .await?;
    }
    Ok((job, duplicate))
}

/// Publishes `job` with its id as message id; true when the stream had it already.
pub async fn publish_job(queue: &Queue, job: &BuildJob) -> Result<bool, NatsError> {
    queue
        .publish_with_id(
            format!("{}.{}", nats::JOBS_BUILD_SUBJECT, job.app),
            serde_json::to_vec(job).expect("job").into(),
            &job.job_id,
        )
        .await
}

/// Follows the events of `job_id`, calling `on_event` for each, until its revision or a
/// final failure (or `timeout`). Subscribe with [`subscribe`] before submitting.
pub async fn follow(
    queue: &Queue,
    mut events: Events,
    job: &BuildJob,
    timeout: Duration,
    mut on_event: impl FnMut(&Event),
) -> Result<Event, SubmitError> {
    // A resubmitted job may be finished already.
    if let Some(event) = recorded(queue, job).await? {
        on_event(&event);
        return Ok(event);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, events.next(queue)).await;
        let Ok(Some(event)) = next else {
            return Err(SubmitError::Timeout {
                job_id: job.job_id.clone(),
                seconds: timeout.as_secs(),
            });
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

/// The `revision` event of `job` when its revision is recorded already.
async fn recorded(queue: &Queue, job: &BuildJob) -> Result<Option<Event>, NatsError> {
    let revision = revisions::by_job(queue, &job.app, &job.job_id, false).await?;
    Ok(revision.map(|revision| Event {
        schema_version: SCHEMA_VERSION,
        job_id: job.job_id.clone(),
        app: Some(job.app.clone()),
        kind: EventKind::Revision {
            revision: Box::new(revision),
        },
        at: now(),
    }))
}

/// Follows the job like [`follow`] to its revision; a final failure is
/// [`SubmitError::Failed`].
pub async fn wait(
    queue: &Queue,
    events: Events,
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

/// Starts following the events of `job_id` (do this before publishing the job); a final
/// event published while the connection is re-established is read back from `KILN_EVENTS`.
pub async fn subscribe(queue: &Queue, job_id: &str) -> Result<Events, NatsError> {
    Events::subscribe(queue, job_id).await
}
