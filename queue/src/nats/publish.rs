//! Every JetStream publish kiln makes goes through [`Queue::publish`] or
//! [`Queue::publish_with_id`]: it carries a message id (the caller's, or a fresh one), so a
//! try made again after a lost ack is stored once (within the stream's duplicate window:
//! 24 h for jobs, 2 min for the others), and transient failures are tried again for up to
//! [`Queue::publish_budget`] (see [`super::retry`]).

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;

use super::retry::{self, Tries};
use super::{NatsError, Queue};

impl Queue {
    /// Publishes `payload` on `subject` through JetStream and waits for the stream's ack,
    /// trying again while the stream is unavailable.
    pub async fn publish(&self, subject: String, payload: Vec<u8>) -> Result<(), NatsError> {
        self.publish_with_id(subject, payload.into(), &fresh_id())
            .await
            .map(drop)
    }

    /// [`Queue::publish`] with the message id `id`: true when the stream already had a
    /// message with that id, from before this call (a duplicate answered to a try made again
    /// after a lost ack is this call's own, and counts as new).
    pub async fn publish_with_id(
        &self,
        subject: String,
        payload: Bytes,
        id: &str,
    ) -> Result<bool, NatsError> {
        let action = format!("publish to {subject}");
        let (duplicate, tries) = retry::transient(self.publish_budget, &action, || async {
            let message = PublishMessage::build()
                .payload(payload.clone())
                .message_id(id);
            self.js
                .send_publish(subject.clone(), message)
                .await?
                .await
                .map(|ack| ack.duplicate)
        })
        .await?;
        Ok(first_seen(duplicate, tries))
    }
}

/// Whether a duplicate answer means the message was there before this call.
fn first_seen(duplicate: bool, tries: Tries) -> bool {
    duplicate && !tries.maybe_done_before
}

/// A message id no other publish uses: 128 random bits in hex.
pub(crate) fn fresh_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// 64 random bits (the standard library's per-process random hash keys, mixed with the time).
pub(crate) fn random_u64() -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_after_a_lost_ack_is_this_calls_own() {
        let clean = Tries {
            count: 2,
            maybe_done_before: false,
        };
        let lost = Tries {
            count: 2,
            maybe_done_before: true,
        };
        assert!(first_seen(true, clean));
        assert!(!first_seen(true, lost));
        assert!(!first_seen(false, clean));
    }

    #[test]
    fn fresh_ids_differ() {
        let ids: std::collections::BTreeSet<String> = (0..1000).map(|_| fresh_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == 32));
    }
}
