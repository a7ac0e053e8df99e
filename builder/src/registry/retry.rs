//! Retries with exponential backoff and jitter for transient registry failures.

use std::future::Future;
use std::time::Duration;

use super::RegistryError;

/// How often and how patiently to retry a transient failure.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubled each time, with jitter.
    pub base_delay: Duration,
    /// Upper bound on one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0-based): `base * 2^retry`, capped, then a
    /// random point in its upper half so that many clients do not retry in step.
    pub fn delay(&self, retry: u32) -> Duration {
        let full = self
            .base_delay
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max_delay);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or attempts run out.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut retry = 0;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(err) if err.is_retryable() && retry + 1 < self.attempts => {
                    let delay = self.delay(retry);
                    tracing::warn!("retrying in {} ms: {err}", delay.as_millis());
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                Err(mut err) => {
                    if retry > 0 {
                        err.answer.text = format!("{} (after {} attempts)", err.answer, retry + 1);
                    }
                    return Err(err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::error::Answer;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> RegistryError {
        RegistryError {
            reference: "r/x".into(),
            action: "test".into(),
            answer: Answer {
                text: "HTTP 503".into(),
                status: Some(503),
                retryable: true,
                codes: Vec::new(),
            },
        }
    }

    #[test]
    fn delays_grow_and_stay_bounded() {
        let p = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for retry in 0..10 {
            let d = p.delay(retry);
            let full = Duration::from_millis(100 * (1 << retry)).min(Duration::from_millis(1000));
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
    }

    #[tokio::test]
    async fn retries_transient_errors_until_success_and_stops_on_permanent_ones() {
        let p = RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let calls = AtomicU32::new(0);
        let ok = p
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(transient())
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(ok.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        calls.store(0, Ordering::SeqCst);
        let err = p
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(transient())
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(err.to_string().contains("after 4 attempts"), "{err}");

        calls.store(0, Ordering::SeqCst);
        let mut permanent = transient();
        permanent.answer.retryable = false;
        let _ = p
            .run(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                let e = RegistryError {
                    answer: permanent.answer.clone(),
                    reference: permanent.reference.clone(),
                    action: permanent.action.clone(),
                };
                async move { Err::<(), _>(e) }
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
