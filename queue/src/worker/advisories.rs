//! Jobs whose worker died on every delivery: the server's max-deliveries advisories (kept in
//! `KILN_ADVISORIES` until a worker runs) make them final failures and remove them from the
//! work queue.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{DeleteMessageErrorKind, LastRawMessageErrorKind};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;

use super::error::JobError;
use super::{Ctx, events};
use crate::nats::{self, NatsError, nats_err};
use crate::revisions;
use crate::schema::{EventKind, Job};

/// Removes jobs that ran out of deliveries (a worker died on each) from the work queue and
/// reports them failed. The advisories wait in `KILN_ADVISORIES` until a worker runs; one
/// worker handles each.
pub(super) async fn watch_max_deliveries(ctx: Arc<Ctx>) {
    loop {
        let messages = match ctx.queue.advisories_consumer().await {
            Ok(consumer) => consumer
                .messages()
                .await
                .map_err(nats_err("consume max-deliveries advisories")),
            Err(e) => Err(e),
        };
        match messages {
            Ok(mut messages) => {
                while let Some(Ok(advisory)) = messages.next().await {
                    let ack = match handle_max_deliveries(&ctx, &advisory.payload).await {
                        Ok(()) => AckKind::Ack,
                        Err(e) => {
                            tracing::warn!("max-deliveries advisory: {e}");
                            AckKind::Nak(Some(Duration::from_secs(2)))
                        }
                    };
                    let _ = advisory.ack_with(ack).await;
                }
            }
            Err(e) => tracing::warn!("watching max-deliveries advisories: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Handles one max-deliveries advisory: marks the job given up (no attempt records it after
/// that), publishes the final `failed` event unless a revision was recorded first, then
/// removes the job from the work queue. Any NATS trouble leaves the advisory to be retried;
/// the event carries a message id, so a retry (within the events stream's duplicate window)
/// does not publish it twice.
async fn handle_max_deliveries(ctx: &Ctx, advisory: &[u8]) -> Result<(), NatsError> {
    let Some(seq) = serde_json::from_slice::<serde_json::Value>(advisory)
        .ok()
        .and_then(|doc| doc["stream_seq"].as_u64())
    else {
        return Ok(());
    };
    let stream = ctx
        .queue
        .js
        .get_stream(nats::JOBS_STREAM)
        .await
        .map_err(nats_err(format!("get stream {}", nats::JOBS_STREAM)))?;
    let message = match stream.get_raw_message(seq).await {
        Ok(message) => message,
        Err(e) => {
            let gone = match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => true,
                LastRawMessageErrorKind::JetStream(js) => {
                    js.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
                }
                _ => false,
            };
            // Gone: acked at last, or handled before.
            return if gone {
                Ok(())
            } else {
                Err(NatsError::new(format!("get job message {seq}"), e))
            };
        }
    };
    if let Ok(job) = Job::parse(&message.subject, &message.payload) {
        let recorded = revisions::give_up(&ctx.queue, job.app(), job.job_id()).await?;
        if recorded.is_none() {
            events::publish(
                &ctx.queue,
                job.job_id(),
                Some(job.app()),
                EventKind::Failed {
                    reason: JobError::GivenUp.to_string(),
                    retryable: false,
                },
            )
            .await?;
            ctx.metrics.failed();
        }
    }
    match stream.delete_message(seq).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            DeleteMessageErrorKind::JetStream(js)
                if js.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND =>
            {
                Ok(())
            }
            _ => Err(NatsError::new(format!("delete job message {seq}"), e)),
        },
    }
}
