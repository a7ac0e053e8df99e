//! Following a job's events. They come live on a core NATS subscription, which misses what is
//! published while the client reconnects (a node lost); so after [`RECHECK`] without an event
//! the job's last event is read from `KILN_EVENTS`, which keeps them, and a final one found
//! there ends the wait as if it had come live. (An ordered JetStream consumer was tried
//! first: on a 3-node cluster losing a node it sometimes kept answering with heartbeats and
//! delivered nothing more, nats-server 2.15.1.)

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::stream::{LastRawMessageError, LastRawMessageErrorKind};
use futures_util::StreamExt;

use crate::nats::{self, NatsError, Queue, nats_err, retry};
use crate::schema::{Event, EventKind};

/// How long without an event before the stream is asked for the job's last one.
pub const RECHECK: Duration = Duration::from_secs(2);

/// The events of one job published after [`Events::subscribe`].
pub struct Events {
    live: async_nats::Subscriber,
    subject: String,
    /// The sequence of the job's last event in `KILN_EVENTS` when subscribing (0: none):
    /// events up to it belong to an earlier submission of the same job id.
    after: u64,
}

impl Events {
    /// Starts following `job_id`'s events (do this before publishing the job).
    pub async fn subscribe(queue: &Queue, job_id: &str) -> Result<Events, NatsError> {
        let subject = nats::events_subject(job_id);
        let live = queue
            .client
            .subscribe(subject.clone())
            .await
            .map_err(nats_err("subscribe to events"))?;
        let action = format!("read the events of job {job_id}");
        let (found, _) =
            retry::transient(queue.publish_budget, &action, || last(queue, &subject)).await?;
        let after = found.map_or(0, |(sequence, _)| sequence);
        Ok(Events {
            live,
            subject,
            after,
        })
    }

    /// The next event, waiting as long as it takes; `None` if the client closed. After
    /// [`RECHECK`] of silence, the job's last event in the stream when it is final and new.
    pub async fn next(&mut self, queue: &Queue) -> Option<Event> {
        loop {
            match tokio::time::timeout(RECHECK, self.live.next()).await {
                Ok(Some(message)) => {
                    if let Ok(event) = serde_json::from_slice(&message.payload) {
                        return Some(event);
                    }
                }
                Ok(None) => return None,
                Err(_) => {
                    if let Some(event) = final_after(queue, &self.subject, self.after).await {
                        tracing::debug!("{}: the final event came from the stream", self.subject);
                        return Some(event);
                    }
                }
            }
        }
    }
}

/// The last sequence of `KILN_EVENTS` (0 when empty): what is published later is newer.
pub async fn events_mark(queue: &Queue) -> Result<u64, NatsError> {
    let mut stream = queue
        .js
        .get_stream(nats::EVENTS_STREAM)
        .await
        .map_err(nats_err("read KILN_EVENTS"))?;
    let info = stream.info().await.map_err(nats_err("read KILN_EVENTS"))?;
    Ok(info.state.last_sequence)
}

/// The final event on a job's events `subject` in `KILN_EVENTS` if it came after `mark`
/// (for a client that may have missed it live while reconnecting); `None` also when the
/// stream cannot answer now (a leader election: ask again after the next silence).
pub async fn final_after(queue: &Queue, subject: &str, mark: u64) -> Option<Event> {
    match last(queue, subject).await {
        Ok(Some((sequence, event))) if sequence > mark && is_final(&event) => Some(event),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("{subject}: {e}");
            None
        }
    }
}

/// Whether `event` ends a job: its revision, or a failure not retried.
fn is_final(event: &Event) -> bool {
    matches!(
        event.kind,
        EventKind::Revision { .. }
            | EventKind::Failed {
                retryable: false,
                ..
            }
    )
}

/// The last event on `subject` in `KILN_EVENTS` with its sequence, if any.
async fn last(queue: &Queue, subject: &str) -> Result<Option<(u64, Event)>, LastRawMessageError> {
    let stream = queue
        .js
        .get_stream_no_info(nats::EVENTS_STREAM)
        .await
        .expect("KILN_EVENTS is a valid stream name");
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(serde_json::from_slice(&message.payload)
            .ok()
            .map(|event| (message.sequence, event))),
        Err(e) if no_message(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `error` says the subject has no message.
fn no_message(error: &LastRawMessageError) -> bool {
    match error.kind() {
        LastRawMessageErrorKind::NoMessageFound => true,
        LastRawMessageErrorKind::JetStream(e) => e.error_code() == ErrorCode::NO_MESSAGE_FOUND,
        _ => false,
    }
}
