//! Revision lookups: by number, by name, by job, by inputs; the latest number; all of an app.

use crate::nats::{NatsError, Queue, nats_err};
use crate::schema::Revision;

use super::{index, rev_key};

/// How far back a redelivered job looks for a revision it may have recorded before a crash.
const RECOVERY_SCAN: u64 = 500;

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
