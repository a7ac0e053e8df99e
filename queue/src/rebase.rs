//! Rebasing revisions: one app's revision onto a new (runtime) base, recorded as a new
//! revision; the rebase jobs that do it on the queue. `rebase_all` rebases every app on a
//! runtime with them.

use std::time::Instant;

use futures_util::StreamExt;
use kiln_builder::push::push_image;
use kiln_builder::registry::Registry;
use kiln_builder::{BuildError, LayerKind};
use kiln_layers::BlobStore;
use kiln_layers::oci::Platform;

use crate::nats::{NatsError, Queue, nats_err};
use crate::revisions::{self, Recorded};
use crate::schema::{LayerRecord, RebaseJob, Revision, Timings, now};

/// Why a rebase failed.
#[derive(Debug, thiserror::Error)]
pub enum RebaseError {
    /// The app or revision does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Pulling, checking, rewriting or pushing failed (the image was not built on the base
    /// it claims, the new base is for another runtime, the registry failed, …).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// NATS trouble.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// Another attempt of the same job is recording its revision.
    #[error("another attempt of this job is recording its revision")]
    Busy,
    /// The job was given up after its deliveries ran out.
    #[error(
        "gave up after {} deliveries: no worker finished the job",
        crate::nats::MAX_DELIVER
    )]
    GivenUp,
}

/// Rebases the job's revision (or the app's latest) onto `job.base`, pushes the new manifest
/// (no layer bytes: app layers are in the app's repository, base layers are mounted) and
/// records it as a new revision of the app.
pub async fn rebase_revision(
    queue: &Queue,
    registry: &Registry,
    store: &BlobStore,
    platform: &Platform,
    job: &RebaseJob,
    started: Instant,
) -> Result<Revision, RebaseError> {
    if let Some(done) = revisions::by_job(queue, &job.app, &job.job_id, true).await? {
        return Ok(done);
    }
    let old = match &job.revision {
        Some(name) => revisions::by_name(queue, name).await?,
        None => {
            let latest = revisions::latest_number(queue, &job.app).await?;
            revisions::get(queue, &job.app, latest).await?
        }
    }
    .ok_or_else(|| {
        RebaseError::NotFound(format!(
            "app {:?} has no revision {}",
            job.app,
            job.revision.as_deref().unwrap_or("at all")
        ))
    })?;
    let built =
        kiln_builder::rebase::rebase(registry, &old.image, &job.base, platform, store).await?;
    let build_ms = started.elapsed().as_millis() as u64;
    let repository = old
        .image
        .split_once('@')
        .map(|(r, _)| r)
        .unwrap_or(&old.image);
    let digest = built.manifest.digest.to_string();
    let push_started = Instant::now();
    push_image(
        registry,
        &built,
        &format!("{repository}:rebase-{}", &digest["sha256:".len()..][..16]),
    )
    .await?;
    let push_ms = push_started.elapsed().as_millis() as u64;
    let manifest: kiln_layers::ImageManifest = serde_json::from_slice(
        &store
            .read_blob(&built.manifest.digest)
            .map_err(BuildError::from)?,
    )
    .map_err(|e| BuildError::from(kiln_layers::Error::json("rebased manifest")(e)))?;
    let base = LayerKind::Base.as_str();
    let kept: Vec<&LayerRecord> = old.layers.iter().filter(|l| l.kind != base).collect();
    let layers = manifest
        .layers
        .iter()
        .map(|d| {
            let digest = d.digest.to_string();
            let kind = kept
                .iter()
                .find(|l| l.digest == digest)
                .map(|l| l.kind.clone())
                .unwrap_or_else(|| base.into());
            LayerRecord {
                kind,
                digest,
                size: d.size,
                cache_hit: true,
            }
        })
        .collect();
    let annotation = |key: &str| manifest.annotations.get(key).cloned().unwrap_or_default();
    let revision = Revision {
        name: String::new(),
        number: 0,
        job_id: job.job_id.clone(),
        image: format!("{repository}@{digest}"),
        digest,
        base: annotation(kiln_builder::build::ANNOTATION_BASE_NAME),
        base_digest: annotation(kiln_builder::build::ANNOTATION_BASE_DIGEST),
        layers,
        timings_ms: Timings {
            build: build_ms,
            push: push_ms,
            total: started.elapsed().as_millis() as u64,
        },
        created: now(),
        ..old
    };
    let revision = match revisions::record(queue, revision, None).await? {
        Recorded::Done(r) => *r,
        Recorded::Busy => return Err(RebaseError::Busy),
        Recorded::GivenUp => return Err(RebaseError::GivenUp),
    };
    revisions::announce(queue, &revision).await?;
    Ok(revision)
}

/// A revision and the revision rebasing it made.
#[derive(Clone, Debug)]
pub struct Rebased {
    /// The revision that was rebased.
    pub old: Revision,
    /// The new revision.
    pub new: Revision,
}

/// Rebases `app`'s revision `revision` (or its latest) onto `base` here, without the queue:
/// the job is the one [`job_for`] names, so a worker doing the same job finds it done.
pub async fn rebase_app(
    queue: &Queue,
    registry: &Registry,
    store: &BlobStore,
    platform: &Platform,
    app: &str,
    revision: Option<&str>,
    base: &str,
) -> Result<Rebased, RebaseError> {
    let old = match revision {
        Some(r) => revisions::by_name(queue, r).await?,
        None => {
            let n = revisions::latest_number(queue, app).await?;
            revisions::get(queue, app, n).await?
        }
    }
    .ok_or_else(|| RebaseError::NotFound(format!("app {app:?} has no such revision")))?;
    let job = job_for(&old, base);
    let new = rebase_revision(queue, registry, store, platform, &job, Instant::now()).await?;
    Ok(Rebased { old, new })
}

/// Every app whose latest revision runs on `runtime`, with that revision.
pub async fn apps_on_runtime(queue: &Queue, runtime: &str) -> Result<Vec<Revision>, NatsError> {
    let mut keys = queue
        .revisions
        .keys()
        .await
        .map_err(nats_err("list revision keys"))?;
    let mut apps = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(nats_err("list revision keys"))?;
        if let Some(app) = key.strip_prefix("latest.") {
            apps.push(app.to_owned());
        }
    }
    apps.sort();
    // The latest revision of each app, 16 lookups in flight.
    let latest: Vec<Option<Revision>> = futures_util::stream::iter(apps)
        .map(|app| async move {
            let n = revisions::latest_number(queue, &app).await?;
            revisions::get(queue, &app, n).await
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(latest
        .into_iter()
        .flatten()
        .filter(|r| r.runtime == runtime)
        .collect())
}

/// The rebase job for `revision` onto `base`; its id is derived from both, so asking twice
/// queues it once.
pub fn job_for(revision: &Revision, base: &str) -> RebaseJob {
    let key = kiln_layers::CacheKey::new("rebase")
        .with("revision", &revision.name)
        .with("base", base)
        .digest();
    RebaseJob {
        schema_version: crate::schema::SCHEMA_VERSION,
        job_id: format!("rebase-{}", &key.hex()[..24]),
        app: revision.app.clone(),
        revision: Some(revision.name.clone()),
        base: base.to_owned(),
    }
}

/// Publishes every job (acks awaited together); returns how many the queue had already.
pub async fn publish_all(queue: &Queue, jobs: &[RebaseJob]) -> Result<usize, NatsError> {
    let duplicates: Vec<bool> = futures_util::stream::iter(jobs)
        .map(|job| publish(queue, job))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(duplicates.into_iter().filter(|d| *d).count())
}

/// Publishes `job` on `kiln.jobs.rebase.<app>` with its id as message id; true when the
/// queue had it already.
pub async fn publish(queue: &Queue, job: &RebaseJob) -> Result<bool, NatsError> {
    queue
        .publish_with_id(
            format!("kiln.jobs.rebase.{}", job.app),
            serde_json::to_vec(job).expect("job").into(),
            &job.job_id,
        )
        .await
}
