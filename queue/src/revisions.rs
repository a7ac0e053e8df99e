//! Revision records in the `kiln-revisions` KV bucket.
//!
//! Keys: `rev.<app>.<NNNNN>` holds a [`Revision`]; `job.<job_id>` names the revision a job
//! produced; `built.<app>.<key>` names the revision built from given inputs; `latest.<app>` is
//! a hint of the highest number. A number is taken by an atomic `create` of its `rev.` key, so
//! numbers are contiguous per app and a revision and its job id are recorded in one write.

use async_nats::jetstream::kv::CreateErrorKind;
use bytes::Bytes;
use std::time::Duration;
use tokio::time::Instant;

use crate::nats::{NatsError, Queue, nats_err};
use crate::schema::{Revision, revision_name};

/// How far back a redelivered job looks for a revision it may have recorded before a crash.
const RECOVERY_SCAN: u64 = 500;

fn rev_key(app: &str, number: u64) -> String {
    format!("rev.{app}.{number:05}")
}

async fn get_json<T: serde::de::DeserializeOwned>(
    queue: &Queue,
    key: &str,
) -> Result<Option<T>, NatsError> {
    let Some(bytes) = queue
        .revisions
        .get(key)
        .await
        .map_err(nats_err(format!("get {key}")))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(nats_err(format!("decode {key}")))
}

/// The revision `number` of `app`.
pub async fn get(queue: &Queue, app: &str, number: u64) -> Result<Option<Revision>, NatsError> {
    get_json(queue, &rev_key(app, number)).await
}

/// The revision named `<app>-<NNNNN>`.
pub async fn by_name(queue: &Queue, name: &str) -> Result<Option<Revision>, NatsError> {
    let Some((app, number)) = name.rsplit_once('-') else {
        return Ok(None);
    };
    match number.parse() {
        Ok(n) => get(queue, app, n).await,
        Err(_) => Ok(None),
    }
}

/// The highest revision number of `app` (0 when none).
pub async fn latest_number(queue: &Queue, app: &str) -> Result<u64, NatsError> {
    let mut n: u64 = get_json(queue, &format!("latest.{app}"))
        .await?
        .unwrap_or(0);
    // The hint can lag behind a crash; step over numbers taken since.
    while queue
        .revisions
        .get(rev_key(app, n + 1))
        .await
        .map_err(nats_err("probe revision"))?
        .is_some()
    {
        n += 1;
    }
    Ok(n)
}

/// Every revision of `app`, oldest first.
pub async fn list(queue: &Queue, app: &str) -> Result<Vec<Revision>, NatsError> {
    let latest = latest_number(queue, app).await?;
    let mut all = Vec::new();
    for n in 1..=latest {
        if let Some(r) = get(queue, app, n).await? {
            all.push(r);
        }
    }
    Ok(all)
}

/// The revision job `job_id` produced, if any. With `scan`, also looks through the app's
/// recent revisions (a worker may have died between recording the revision and its index).
pub async fn by_job(
    queue: &Queue,
    app: &str,
    job_id: &str,
    scan: bool,
) -> Result<Option<Revision>, NatsError> {
    if let Some(name) = get_json::<String>(queue, &format!("job.{job_id}")).await? {
        return by_name(queue, &name).await;
    }
    if !scan {
        return Ok(None);
    }
    let latest = latest_number(queue, app).await?;
    for n in (latest.saturating_sub(RECOVERY_SCAN) + 1..=latest).rev() {
        if let Some(r) = get(queue, app, n).await?
            && r.job_id == job_id
        {
            index(queue, &r, None).await?;
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// The revision already built for `app` from inputs `key`, if any.
pub async fn by_inputs(queue: &Queue, app: &str, key: &str) -> Result<Option<Revision>, NatsError> {
    match get_json::<String>(queue, &format!("built.{app}.{key}")).await? {
        Some(name) => by_name(queue, &name).await,
        None => Ok(None),
    }
}

/// Points `job.<job_id>` (and `built.<app>.<key>`) at `revision`.
pub async fn index(
    queue: &Queue,
    revision: &Revision,
    inputs_key: Option<&str>,
) -> Result<(), NatsError> {
    let name = Bytes::from(serde_json::to_vec(&revision.name).expect("string"));
    queue
        .revisions
        .put(format!("job.{}", revision.job_id), name.clone())
        .await
        .map_err(nats_err("record job index"))?;
    if let Some(key) = inputs_key {
        queue
            .revisions
            .put(format!("built.{}.{key}", revision.app), name)
            .await
            .map_err(nats_err("record inputs index"))?;
    }
    Ok(())
}

/// How long a claim to record a job's revision is honoured without change: recording takes
/// milliseconds, so a claim seen unchanged for longer belongs to an attempt that died in
/// between and may be taken over. Measured on the waiter's own clock, so clock skew between
/// machines does not matter.
const CLAIM_STALE: Duration = Duration::from_secs(10);

/// How often [`record`] looks again at a claim held by another attempt.
const CLAIM_POLL: Duration = Duration::from_millis(250);

/// The outcome of [`record`].
pub enum Recorded {
    /// The job's revision (new, or recorded earlier by another attempt).
    Done(Box<Revision>),
    /// Other attempts of this job kept taking the claim while [`record`] waited: try again
    /// later.
    Busy,
}

/// Records `revision` as the one revision of its job: claims the job (`claim.<job_id>`, one
/// atomic create), checks that no earlier attempt recorded it, then takes the next number and
/// writes the indexes. Two attempts of one job (a redelivery while the first still runs) get
/// the same revision. While another attempt holds the claim this waits (the caller keeps its
/// message alive); a claim left unchanged for [`CLAIM_STALE`] is taken over by
/// compare-and-set, so an attempt that died mid-record costs seconds, not the job's deliveries.
pub async fn record(
    queue: &Queue,
    revision: Revision,
    inputs_key: Option<&str>,
) -> Result<Recorded, NatsError> {
    let deadline = Instant::now() + CLAIM_STALE * 3;
    // The claim as first seen (its KV revision) and when.
    let mut seen: Option<(u64, Instant)> = None;
    let mut take_over = None;
    loop {
        match claim(queue, &revision, take_over.take()).await? {
            Claim::Ours => break,
            Claim::Recorded(done) => return Ok(Recorded::Done(done)),
            Claim::Held(_) if Instant::now() >= deadline => return Ok(Recorded::Busy),
            Claim::Held(held) => {
                match (seen, held) {
                    (Some((was, since)), Some(now)) if was == now => {
                        if since.elapsed() >= CLAIM_STALE {
                            take_over = Some(now);
                            continue;
                        }
                    }
                    (_, Some(now)) => seen = Some((now, Instant::now())),
                    (_, None) => seen = None,
                }
                tokio::time::sleep(CLAIM_POLL).await;
            }
        }
    }
    let revision = allocate(queue, revision).await?;
    index(queue, &revision, inputs_key).await?;
    Ok(Recorded::Done(Box::new(revision)))
}

/// Who may record a job's revision.
enum Claim {
    /// This attempt: it holds `claim.<job_id>` and nothing is recorded yet.
    Ours,
    /// Nobody: an earlier attempt recorded this revision.
    Recorded(Box<Revision>),
    /// Another attempt; the claim's KV revision when it could be read.
    Held(Option<u64>),
}

/// One try at claiming `revision`'s job: an atomic create, or with `take_over` a
/// compare-and-set of the claim from that KV revision.
async fn claim(
    queue: &Queue,
    revision: &Revision,
    take_over: Option<u64>,
) -> Result<Claim, NatsError> {
    let key = format!("claim.{}", revision.job_id);
    let value = Bytes::from_static(b"claimed");
    let held = match take_over {
        None => match queue.revisions.create(&key, value).await {
            Ok(_) => return Ok(Claim::Ours),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => true,
            Err(e) => return Err(nats_err("claim job")(e)),
        },
        // Someone else may have taken it first: then it is held again.
        Some(from) => queue.revisions.update(&key, value, from).await.is_err(),
    };
    // The holder may have recorded already (also just before a takeover).
    if let Some(done) = by_job(queue, &revision.app, &revision.job_id, true).await? {
        return Ok(Claim::Recorded(Box::new(done)));
    }
    if !held {
        return Ok(Claim::Ours);
    }
    let entry = queue
        .revisions
        .entry(&key)
        .await
        .map_err(nats_err("read claim"))?;
    Ok(Claim::Held(entry.map(|e| e.revision)))
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

/// Records `revision` under the next free number of its app (setting `number` and `name`).
pub async fn allocate(queue: &Queue, mut revision: Revision) -> Result<Revision, NatsError> {
    let app = revision.app.clone();
    let mut n = latest_number(queue, &app).await? + 1;
    loop {
        revision.number = n;
        revision.name = revision_name(&app, n);
        let body = Bytes::from(serde_json::to_vec(&revision).expect("revision"));
        match queue.revisions.create(rev_key(&app, n), body).await {
            Ok(_) => break,
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(nats_err("record revision")(e)),
        }
    }
    raise_hint(queue, &app, n).await?;
    Ok(revision)
}

/// Raises `latest.<app>` to `n` by compare-and-set (never lowers it).
async fn raise_hint(queue: &Queue, app: &str, n: u64) -> Result<(), NatsError> {
    let key = format!("latest.{app}");
    let value = Bytes::from(n.to_string());
    let mut last_error = String::new();
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
                .map_err(|e| e.to_string()),
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
                    .map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(()) => return Ok(()),
            // Lost a race with another worker (or a transient error): read again.
            Err(e) => last_error = e,
        }
    }
    Err(NatsError {
        action: format!("raise {key} to {n}"),
        message: last_error,
    })
}
