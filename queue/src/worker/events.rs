//! Publishing a job's events on `kiln.events.<job_id>`.

use crate::nats::{self, NatsError, Queue};
use crate::schema::{Event, EventKind, SCHEMA_VERSION, now};

/// Publishes an event; a failure to publish is logged, never fatal.
pub(super) async fn report(queue: &Queue, job_id: &str, app: Option<&str>, kind: EventKind) {
    if let Err(err) = publish(queue, job_id, app, kind).await {
        tracing::warn!("event for {job_id}: {err}");
    }
}

/// Publishes an event and waits for the stream's ack. A job's final `failed` event carries
/// the message id `failed-<job_id>`, so the paths that may each report it (the attempt
/// itself, the max-deliveries advisory, a retried advisory) publish it once.
pub(super) async fn publish(
    queue: &Queue,
    job_id: &str,
    app: Option<&str>,
    kind: EventKind,
) -> Result<(), NatsError> {
    let last = matches!(
        kind,
        EventKind::Failed {
            retryable: false,
            ..
        }
    );
    let e = Event {
        schema_version: SCHEMA_VERSION,
        job_id: job_id.to_owned(),
        app: app.map(str::to_owned),
        kind,
        at: now(),
    };
    let subject = nats::events_subject(job_id);
    let payload = serde_json::to_vec(&e).expect("event");
    if last {
        queue
            .publish_with_id(subject, payload.into(), &format!("failed-{job_id}"))
            .await?;
    } else {
        queue.publish(subject, payload).await?;
    }
    Ok(())
}
