//! Riding out a leader election: while a stream's leader is lost (a node killed, partitioned)
//! and a new one is elected, a JetStream publish fails with "no responders" (no stream found
//! for the subject), a timeout or a broken pipe for a few seconds. [`transient`] tries such
//! a call again with backoff for a bounded time (`--nats-timeout`); an error no retry fixes
//! (a payload too large, a wrong expected sequence, a bad key) is returned at once.

use std::error::Error;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{kv, object_store, stream};
use tokio::time::Instant;

use super::{BoxError, NatsError};

/// What a failed try says about trying again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing was done (no server took it): try again.
    Retry,
    /// It may have been done (sent, and the answer lost): try again; a "duplicate" answer
    /// may then be this call's own earlier try.
    RetryMaybeDone,
    /// Trying again would fail the same way.
    Final,
}

/// An error that says whether trying again can help.
pub trait Transient: Error + Send + Sync + 'static {
    /// Whether, and how, to try again.
    fn verdict(&self) -> Verdict;
}

/// First pause between tries; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between tries.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// What a call that succeeded went through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tries {
    /// Tries made, the successful one included.
    pub count: u32,
    /// An earlier try may have been done ([`Verdict::RetryMaybeDone`]).
    pub maybe_done_before: bool,
}

/// Runs `attempt` until it succeeds, fails for good, or `budget` has passed since the first
/// try (no try starts after that, except a second one when the first outlasted the budget,
/// a request timed out while the connection was re-established); the error names `action`.
pub async fn transient<T, E, F, Fut>(
    budget: Duration,
    action: &str,
    mut attempt: F,
) -> Result<(T, Tries), NatsError>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + budget;
    let mut pause = FIRST_PAUSE;
    let mut tries = Tries::default();
    loop {
        tries.count += 1;
        let error = match attempt().await {
            Ok(value) => return Ok((value, tries)),
            Err(e) => e,
        };
        let verdict = error.verdict();
        let left = deadline.saturating_duration_since(Instant::now());
        if verdict == Verdict::Final || (left.is_zero() && tries.count > 1) {
            let error: BoxError = Box::new(error);
            return Err(if tries.count == 1 {
                NatsError::new(action, error)
            } else {
                NatsError::new(
                    format!(
                        "{action} (gave up after {} tries in {} s)",
                        tries.count,
                        budget.as_secs()
                    ),
                    error,
                )
            });
        }
        tries.maybe_done_before |= verdict == Verdict::RetryMaybeDone;
        tracing::info!(
            "{action}: {}; trying again in {} ms (try {})",
            error,
            pause.min(left).as_millis(),
            tries.count
        );
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

impl Transient for PublishError {
    fn verdict(&self) -> Verdict {
        match self.kind() {
            // No stream answered: the stream's leader is being elected (or the stream is
            // gone, which the budget bounds).
            PublishErrorKind::StreamNotFound | PublishErrorKind::MaxAckPending => Verdict::Retry,
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => Verdict::RetryMaybeDone,
            PublishErrorKind::Other if unavailable(self) => Verdict::Retry,
            PublishErrorKind::Other
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
            | PublishErrorKind::MaxPayloadExceeded => Verdict::Final,
        }
    }
}

impl Transient for kv::PutError {
    fn verdict(&self) -> Verdict {
        match self.kind() {
            kv::PutErrorKind::InvalidKey => Verdict::Final,
            kv::PutErrorKind::Publish | kv::PutErrorKind::Ack => publish_source(self),
        }
    }
}

impl Transient for object_store::PutError {
    fn verdict(&self) -> Verdict {
        use object_store::PutErrorKind as Kind;
        match self.kind() {
            // The client keeps only the text of a chunk's or the metadata's publish error;
            // putting an object again under the same name replaces it whole.
            Kind::PublishChunks | Kind::PublishMetadata | Kind::TimedOut => Verdict::RetryMaybeDone,
            Kind::InvalidName | Kind::ReadChunks | Kind::PurgeOldChunks | Kind::Other => {
                Verdict::Final
            }
        }
    }
}

impl Transient for stream::LastRawMessageError {
    fn verdict(&self) -> Verdict {
        match self.kind() {
            // A request that timed out or found no responder: a read, tried again.
            stream::LastRawMessageErrorKind::Other => Verdict::Retry,
            stream::LastRawMessageErrorKind::JetStream(e) if e.code() == 503 => Verdict::Retry,
            _ => Verdict::Final,
        }
    }
}

/// The verdict of the [`PublishError`] under a KV put's error.
fn publish_source(error: &kv::PutError) -> Verdict {
    error
        .source()
        .and_then(|e| e.downcast_ref::<PublishError>())
        .map_or(Verdict::RetryMaybeDone, Transient::verdict)
}

/// Whether `error` carries a JetStream API error 503 ("JetStream system temporarily
/// unavailable", no quorum yet).
fn unavailable(error: &(dyn Error + 'static)) -> bool {
    let mut next = error.source();
    while let Some(e) = next {
        if let Some(api) = e.downcast_ref::<async_nats::jetstream::Error>() {
            return api.code() == 503;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let publish = |kind| PublishError::new(kind).verdict();
        assert_eq!(publish(PublishErrorKind::StreamNotFound), Verdict::Retry);
        assert_eq!(publish(PublishErrorKind::TimedOut), Verdict::RetryMaybeDone);
        assert_eq!(
            publish(PublishErrorKind::BrokenPipe),
            Verdict::RetryMaybeDone
        );
        assert_eq!(publish(PublishErrorKind::WrongLastSequence), Verdict::Final);
        assert_eq!(
            publish(PublishErrorKind::MaxPayloadExceeded),
            Verdict::Final
        );
        assert_eq!(publish(PublishErrorKind::Other), Verdict::Final);
        let no_stream = PublishError::new(PublishErrorKind::StreamNotFound);
        let put = kv::PutError::with_source(kv::PutErrorKind::Ack, no_stream);
        assert_eq!(put.verdict(), Verdict::Retry);
        let put = kv::PutError::new(kv::PutErrorKind::InvalidKey);
        assert_eq!(put.verdict(), Verdict::Final);
    }

    /// Fails with the given verdicts in turn, then succeeds.
    async fn run(budget: Duration, verdicts: &[Verdict]) -> (Result<Tries, NatsError>, u32) {
        let mut calls = 0u32;
        let result = transient(budget, "test", || {
            calls += 1;
            let verdict = verdicts.get(calls as usize - 1).copied();
            async move {
                match verdict {
                    Some(v) => Err(Failing(v)),
                    None => Ok(()),
                }
            }
        })
        .await;
        (result.map(|(_, tries)| tries), calls)
    }

    #[derive(Debug, thiserror::Error)]
    #[error("failing ({0:?})")]
    struct Failing(Verdict);

    impl Transient for Failing {
        fn verdict(&self) -> Verdict {
            self.0
        }
    }

    #[tokio::test]
    async fn transient_failures_are_tried_again_final_ones_not() {
        let budget = Duration::from_secs(10);
        let (tries, calls) = run(budget, &[Verdict::Retry, Verdict::RetryMaybeDone]).await;
        let tries = tries.unwrap();
        assert_eq!((tries.count, calls), (3, 3));
        assert!(tries.maybe_done_before);
        let (tries, _) = run(budget, &[Verdict::Retry]).await;
        assert!(!tries.unwrap().maybe_done_before);
        let (result, calls) = run(budget, &[Verdict::Retry, Verdict::Final]).await;
        assert_eq!(calls, 2);
        let error = result.unwrap_err().to_string();
        assert!(error.contains("gave up after 2 tries"), "{error}");
        assert!(error.contains("failing (Final)"), "{error}");
    }

    #[tokio::test]
    async fn a_spent_budget_still_allows_a_second_try_only() {
        let many = [Verdict::Retry; 10];
        let (result, calls) = run(Duration::ZERO, &many).await;
        assert_eq!(calls, 2);
        assert!(result.is_err());
    }
}
