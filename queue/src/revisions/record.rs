//! The exactly-once protocol that records a job's revision: claim the job, reserve a number,
//! create the revision, index it; give a job up; announce a recorded revision.

use async_nats::jetstream::kv::CreateErrorKind;
use bytes::Bytes;
use std::time::Duration;
use tokio::time::Instant;

use crate::nats::{BoxError, NatsError, Queue, nats_err, retry};
use crate::schema::{Revision, revision_name};

use super::{by_job, get, latest_number, rev_key};

/// Points `job.<job_id>` (and `built.<app>.<key>`) at `revision`.
pub async fn index(
    queue: &Queue,
    revision: &Revision,
    inputs_key: Option<&str>,
) -> Result<(), NatsError> {
    let name = Bytes::from(serde_json::to_vec(&revision.name).expect("string"));
    let put = |key: String, action: &'static str| {
        let name = name.clone();
        async move {
            retry::transient(queue.publish_budget, action, || {
                queue.revisions.put(&key, name.clone())
            })
            .await
        }
    };
    put(format!("job.{}", revision.job_id), "record job index").await?;
    if let Some(key) = inputs_key {
        put(
            format!("built.{}.{key}", revision.app),
            "record inputs index",
        )
        .await?;
    }
    Ok(())
}

/// How long a claim to record a job's revision is honoured without change: recording takes
/// milliseconds, so a claim seen unchanged for longer belongs to an attempt that died or
/// stalled in between and may be taken over. Measured on the waiter's own clock, so clock
/// skew between machines does not matter.
const CLAIM_STALE: Duration = Duration::from_secs(10);

/// How often [`record`] looks again at a claim held by another attempt.
const CLAIM_POLL: Duration = Duration::from_millis(250);

/// Claim value of a job given up after its deliveries ran out: nobody records it any more.
const GAVE_UP: &[u8] = b"gave-up";

/// The outcome of [`record`].
pub enum Recorded {
    /// The job's revision (new, or recorded earlier by another attempt).
    Done(Box<Revision>),
    /// Other attempts of this job kept taking the claim while [`record`] waited: try again
    /// later.
    Busy,
    /// The job was given up (see [`give_up`]): it gets no revision.
    GivenUp,
}

/// What `claim.<job_id>` holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ClaimState {
    /// Claimed; no number reserved yet.
    Claimed,
    /// Number reserved: whoever holds the claim records the job under it (or finds it there).
    Reserved(u64),
    /// Given up.
    GaveUp,
}

impl ClaimState {
    fn parse(value: &[u8]) -> ClaimState {
        if value == GAVE_UP {
            return ClaimState::GaveUp;
        }
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.strip_prefix("n="))
            .and_then(|n| n.parse().ok())
            .map_or(ClaimState::Claimed, ClaimState::Reserved)
    }
}

/// Records `revision` as the one revision of its job, exactly once however many attempts of
/// the job run. An attempt claims the job (`claim.<job_id>`, an atomic create), reserves a
/// number in the claim by compare-and-set, and only then creates `rev.<app>.<n>`; finding
/// that number taken by its own job means another attempt recorded it. While another attempt
/// holds the claim this waits (the caller keeps its message alive); a claim seen unchanged
/// for `CLAIM_STALE` is taken over by compare-and-set together with its reservation, so a
/// stalled holder that wakes up can at most create the same number, and one of the two
/// creates fails.
pub async fn record(
    queue: &Queue,
    revision: Revision,
    inputs_key: Option<&str>,
) -> Result<Recorded, NatsError> {
    let key = claim_key(&revision.job_id);
    let deadline = Instant::now() + CLAIM_STALE * 3;
    // The other attempt's claim as first seen (KV revision, state) and when.
    let mut seen: Option<(u64, ClaimState, Instant)> = None;
    loop {
        let held = match seen {
            Some((at, state, since)) if since.elapsed() >= CLAIM_STALE => {
                // Unchanged for a claim lifetime: take it over, reservation and all.
                match queue.revisions.update(&key, claim_value(state), at).await {
                    Ok(ours) => Some((ours, state, true)),
                    Err(_) => None,
                }
            }
            _ => match queue
                .revisions
                .create(&key, claim_value(ClaimState::Claimed))
                .await
            {
                Ok(ours) => Some((ours, ClaimState::Claimed, false)),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => None,
                Err(e) => return Err(nats_err("claim job")(e)),
            },
        };
        if let Some((ours, state, took_over)) = held {
            // The holder may have recorded without indexing (a first claim has no holder).
            if took_over
                && let Some(done) = by_job(queue, &revision.app, &revision.job_id, true).await?
            {
                return Ok(Recorded::Done(Box::new(done)));
            }
            let committed = match commit(queue, revision.clone(), &key, ours, state).await {
                Ok(committed) => committed,
                Err(e) => {
                    // Failed before reserving a number: release the claim (only if it is
                    // still exactly as made), so the retry need not wait it out. Once a
                    // number is reserved the claim must stay.
                    if state == ClaimState::Claimed {
                        let _ = queue
                            .revisions
                            .delete_expect_revision(&key, Some(ours))
                            .await;
                    }
                    return Err(e);
                }
            };
            match committed {
                Some(recorded) => {
                    index(queue, &recorded, inputs_key).await?;
                    return Ok(Recorded::Done(Box::new(recorded)));
                }
                // Taken over meanwhile: wait for the new holder like anyone else.
                None => {
                    seen = None;
                    continue;
                }
            }
        }
        // Held by another attempt: done already, given up, or still at work?
        if let Some(done) = by_job(queue, &revision.app, &revision.job_id, false).await? {
            return Ok(Recorded::Done(Box::new(done)));
        }
        let Some(entry) = queue
            .revisions
            .entry(&key)
            .await
            .map_err(nats_err("read claim"))?
        else {
            seen = None;
            continue;
        };
        let state = ClaimState::parse(&entry.value);
        if state == ClaimState::GaveUp {
            return Ok(Recorded::GivenUp);
        }
        if seen.is_none_or(|(at, _, _)| at != entry.revision) {
            seen = Some((entry.revision, state, Instant::now()));
        }
        if Instant::now() >= deadline {
            return Ok(Recorded::Busy);
        }
        tokio::time::sleep(CLAIM_POLL).await;
    }
}

fn claim_key(job_id: &str) -> String {
    format!("claim.{job_id}")
}

fn claim_value(state: ClaimState) -> Bytes {
    match state {
        ClaimState::Claimed => Bytes::from_static(b"claimed"),
        ClaimState::Reserved(n) => Bytes::from(format!("n={n}")),
        ClaimState::GaveUp => Bytes::from_static(GAVE_UP),
    }
}

/// With the claim held at KV revision `ours`: reserves a number (unless `state` carries one),
/// then creates the revision under it, stepping over numbers other jobs took. `None` when the
/// claim was taken over; the revision recorded (maybe by another attempt) otherwise.
async fn commit(
    queue: &Queue,
    mut revision: Revision,
    key: &str,
    mut ours: u64,
    state: ClaimState,
) -> Result<Option<Revision>, NatsError> {
    let app = revision.app.clone();
    let (mut n, mut reserved) = match state {
        ClaimState::Reserved(n) => (n, true),
        _ => (latest_number(queue, &app).await? + 1, false),
    };
    loop {
        if !reserved {
            match queue
                .revisions
                .update(key, claim_value(ClaimState::Reserved(n)), ours)
                .await
            {
                Ok(next) => ours = next,
                Err(_) => return Ok(None),
            }
        }
        revision.number = n;
        revision.name = revision_name(&app, n);
        let body = Bytes::from(serde_json::to_vec(&revision).expect("revision"));
        match queue.revisions.create(rev_key(&app, n), body).await {
            Ok(_) => break,
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                if let Some(there) = get(queue, &app, n).await?
                    && there.job_id == revision.job_id
                {
                    return Ok(Some(there));
                }
                n += 1;
                reserved = false;
            }
            Err(e) => return Err(nats_err("record revision")(e)),
        }
    }
    raise_hint(queue, &app, n).await?;
    Ok(Some(revision))
}

/// Marks the job given up, so no attempt records it from now on; returns its revision instead
/// when one was recorded first.
pub async fn give_up(
    queue: &Queue,
    app: &str,
    job_id: &str,
) -> Result<Option<Revision>, NatsError> {
    let key = claim_key(job_id);
    for _ in 0..50 {
        let marked = match queue
            .revisions
            .entry(&key)
            .await
            .map_err(nats_err("read claim"))?
        {
            None => queue
                .revisions
                .create(&key, claim_value(ClaimState::GaveUp))
                .await
                .is_ok(),
            Some(entry) if ClaimState::parse(&entry.value) == ClaimState::GaveUp => true,
            Some(entry) => queue
                .revisions
                .update(&key, claim_value(ClaimState::GaveUp), entry.revision)
                .await
                .is_ok(),
        };
        if marked {
            return by_job(queue, app, job_id, true).await;
        }
    }
    Err(NatsError::new(
        format!("mark job {job_id} given up"),
        "the claim kept changing",
    ))
}

/// Publishes a recorded revision on `kiln.revisions.<app>` for the deployer.
pub async fn announce(queue: &Queue, revision: &Revision) -> Result<(), NatsError> {
    queue
        .publish(
            crate::nats::revisions_subject(&revision.app),
            serde_json::to_vec(revision).expect("revision"),
        )
        .await
}

/// Raises `latest.<app>` to `n` by compare-and-set (never lowers it).
async fn raise_hint(queue: &Queue, app: &str, n: u64) -> Result<(), NatsError> {
    let key = format!("latest.{app}");
    let value = Bytes::from(n.to_string());
    let mut last_error: BoxError = "no attempt made".into();
    for _ in 0..50 {
        let entry = queue
            .revisions
            .entry(&key)
            .await
            .map_err(nats_err("read latest"))?;
        let result = match entry {
            None => queue
                .revisions
                .create(&key, value.clone())
                .await
                .map(drop)
                .map_err(BoxError::from),
            Some(entry) => {
                let current: u64 = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if current >= n {
                    return Ok(());
                }
                queue
                    .revisions
                    .update(&key, value.clone(), entry.revision)
                    .await
                    .map(drop)
                    .map_err(BoxError::from)
            }
        };
        match result {
            Ok(()) => return Ok(()),
            // Lost a race with another worker (or a transient error): read again.
            Err(e) => last_error = e,
        }
    }
    Err(NatsError::new(format!("raise {key} to {n}"), last_error))
}
