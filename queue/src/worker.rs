//! The build worker: pulls jobs from `kiln-workers`, builds and pushes each, records exactly
//! one revision per job id, and acks only after the revision is recorded.
//!
//! Bad input (malformed job, unknown runtime, missing source, invalid package.json, hostile
//! tarball) is terminated at once with a `failed` event; transient faults (registry or NATS
//! trouble) are nak'ed with backoff and reported retryable, and a job that has used up its
//! deliveries gets a final `failed` event and leaves the queue.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use kiln_builder::pull::pull_image;
use kiln_builder::push::push_image;
use kiln_builder::registry::Registry;
use kiln_builder::{BaseSource, BuildError, BuildRequest, Step};
use kiln_layers::oci::Platform;
use kiln_layers::{CacheKey, ExtractLimits};
use tokio::sync::{Semaphore, mpsc};

use crate::metrics::Metrics;
use crate::nats::{self, MAX_DELIVER, NatsError, Queue};
use crate::schema::{
    BuildJob, Event, EventKind, Job, LayerRecord, RebaseJob, Revision, SCHEMA_VERSION, Timings, now,
};
use crate::{revisions, source};

/// How a worker runs.
#[derive(Clone)]
pub struct WorkerOptions {
    /// Name in events and logs.
    pub name: String,
    /// Jobs built at once.
    pub jobs: usize,
    /// Local cache directory (layers, bases, scratch).
    pub cache_dir: PathBuf,
    /// Where images go: `host[:port]/prefix`; an app's image is `<this>/<app>`.
    pub repository: String,
    /// Base when a job names none; `None` means the host's node.
    pub default_base: Option<String>,
    /// Platform picked from base indexes.
    pub platform: Platform,
    /// The registry client (one pool for every job).
    pub registry: Registry,
    /// Ack wait of the consumer; heartbeats go out at a third of it.
    pub ack_wait: Duration,
    /// How long a shutdown waits for jobs in hand.
    pub grace: Duration,
    /// Limits for extracting source tarballs.
    pub limits: ExtractLimits,
}

/// Why a job did not produce a revision.
enum JobError {
    /// The job itself is wrong: never retried.
    Permanent(String),
    /// Something around it failed: retried with backoff.
    Transient(String),
}

impl From<NatsError> for JobError {
    fn from(e: NatsError) -> Self {
        JobError::Transient(e.to_string())
    }
}

impl From<BuildError> for JobError {
    fn from(e: BuildError) -> Self {
        match &e {
            BuildError::Registry(r) if r.is_retryable() => JobError::Transient(e.to_string()),
            BuildError::Layers(kiln_layers::Error::Io { .. }) => JobError::Transient(e.to_string()),
            _ => JobError::Permanent(e.to_string()),
        }
    }
}

struct Ctx {
    queue: Queue,
    opts: WorkerOptions,
    metrics: Arc<Metrics>,
}

/// Runs a worker until `shutdown` resolves, then finishes the jobs in hand (up to the grace
/// period) and returns.
pub async fn run(
    queue: Queue,
    opts: WorkerOptions,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NatsError> {
    let consumer = queue.workers_consumer(opts.ack_wait).await?;
    let slots = Arc::new(Semaphore::new(opts.jobs.max(1)));
    let ctx = Arc::new(Ctx {
        queue: queue.clone(),
        opts: opts.clone(),
        metrics,
    });
    tokio::spawn(watch_max_deliveries(ctx.clone()));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore open"),
        };
        let batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages();
        let mut batch = tokio::select! {
            _ = &mut shutdown => break,
            batch = batch => match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("fetching jobs: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let message = tokio::select! {
            _ = &mut shutdown => break,
            m = batch.next() => m,
        };
        match message {
            Some(Ok(message)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    handle(&ctx, message).await;
                    drop(permit);
                });
            }
            Some(Err(e)) => tracing::warn!("receiving a job: {e}"),
            None => {}
        }
    }
    tracing::info!("shutting down: waiting for jobs in hand");
    let all = u32::try_from(opts.jobs.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(opts.grace, slots.acquire_many(all)).await;
    Ok(())
}

/// Publishes an event; a failure to publish is logged, never fatal.
async fn event(ctx: &Ctx, job_id: &str, app: Option<&str>, kind: EventKind) {
    if let Err(err) = publish_event(ctx, job_id, app, kind).await {
        tracing::warn!("event for {job_id}: {err}");
    }
}

/// Publishes an event and waits for the stream's ack. A job's final `failed` event carries
/// the message id `failed-<job_id>`, so the paths that may each report it (the attempt
/// itself, the max-deliveries advisory, a retried advisory) publish it once.
async fn publish_event(
    ctx: &Ctx,
    job_id: &str,
    app: Option<&str>,
    kind: EventKind,
) -> Result<(), String> {
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
    let mut headers = async_nats::HeaderMap::new();
    if last {
        headers.insert("Nats-Msg-Id", format!("failed-{job_id}").as_str());
    }
    ctx.queue
        .js
        .publish_with_headers(
            nats::events_subject(job_id),
            headers,
            serde_json::to_vec(&e).expect("event").into(),
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn handle(ctx: &Ctx, message: jetstream::Message) {
    let started = Instant::now();
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1).max(1) as u64;
    let message = Arc::new(message);
    ctx.metrics.started();
    let job = match Job::parse(&message.subject, &message.payload) {
        Ok(job) => job,
        Err(err) => {
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.to_string())
                .filter(|id| crate::schema::validate_job_id(id).is_ok())
                .unwrap_or_else(|| "unknown".into());
            tracing::warn!("job {id}: {err}");
            event(
                ctx,
                &id,
                None,
                EventKind::Failed {
                    reason: err.to_string(),
                    retryable: false,
                },
            )
            .await;
            ctx.metrics.failed();
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    event(
        ctx,
        job.job_id(),
        Some(job.app()),
        EventKind::Building {
            worker: ctx.opts.name.clone(),
            attempt: delivered,
        },
    )
    .await;
    let heartbeat = {
        let message = message.clone();
        let every = ctx.opts.ack_wait / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let _ = message.ack_with(AckKind::Progress).await;
            }
        })
    };
    let result = match &job {
        Job::Build(build) => process(ctx, build, delivered, started).await,
        Job::Rebase(rebase) => process_rebase(ctx, rebase, started).await,
    };
    heartbeat.abort();
    match result {
        Ok(revision) => {
            ctx.metrics.succeeded(started.elapsed());
            let app = job.app().to_owned();
            event(
                ctx,
                job.job_id(),
                Some(&app),
                EventKind::Revision {
                    revision: Box::new(revision),
                },
            )
            .await;
            if let Err(e) = message.double_ack().await {
                tracing::warn!("ack of job {}: {e}", job.job_id());
            }
        }
        Err(error) => {
            // Bad input ends at once; a transient fault is retried until deliveries run out.
            let (reason, retry) = match error {
                JobError::Permanent(reason) => (reason, false),
                JobError::Transient(reason) if delivered >= MAX_DELIVER as u64 => (
                    format!("gave up after {delivered} attempts: {reason}"),
                    false,
                ),
                JobError::Transient(reason) => (reason, true),
            };
            tracing::warn!("job {} attempt {delivered} failed: {reason}", job.job_id());
            // A final failure: no other attempt may record the job from now on; if one
            // already did, that revision is the answer.
            if !retry {
                match revisions::give_up(&ctx.queue, job.app(), job.job_id()).await {
                    Ok(Some(revision)) => {
                        ctx.metrics.succeeded(started.elapsed());
                        event(
                            ctx,
                            job.job_id(),
                            Some(job.app()),
                            EventKind::Revision {
                                revision: Box::new(revision),
                            },
                        )
                        .await;
                        let _ = message.double_ack().await;
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("mark job {} given up: {e}", job.job_id()),
                }
            }
            if retry {
                ctx.metrics.retried();
            } else {
                ctx.metrics.failed();
            }
            event(
                ctx,
                job.job_id(),
                Some(job.app()),
                EventKind::Failed {
                    reason,
                    retryable: retry,
                },
            )
            .await;
            let ack = if retry {
                let delay = Duration::from_millis(500 * (1 << (delivered - 1).min(6)));
                AckKind::Nak(Some(delay))
            } else {
                AckKind::Term
            };
            let _ = message.ack_with(ack).await;
        }
    }
}

/// One delivery of a job: returns its revision (new, or recorded earlier for this job id or
/// for the same inputs).
async fn process(
    ctx: &Ctx,
    job: &BuildJob,
    delivered: u64,
    started: Instant,
) -> Result<Revision, JobError> {
    let queue = &ctx.queue;
    if let Some(done) = revisions::by_job(queue, &job.app, &job.job_id, delivered > 1).await? {
        return Ok(done);
    }
    // Base: the tag is resolved once, here; its digest is part of the inputs.
    let cache_dir = ctx.opts.cache_dir.clone();
    let base = match job.base.as_ref().or(ctx.opts.default_base.as_ref()) {
        Some(reference) => {
            let store = kiln_layers::BlobStore::open_or_create(&cache_dir)
                .map_err(|e| JobError::Transient(e.to_string()))?;
            let (name, manifest, cache_hit) =
                pull_image(&ctx.opts.registry, reference, &ctx.opts.platform, &store)
                    .await
                    .map_err(JobError::from)?;
            BaseSource::Stored {
                name,
                manifest,
                cache_hit,
            }
        }
        None => BaseSource::Host(None),
    };
    let base_id = match &base {
        BaseSource::Stored { manifest, .. } => manifest.digest.to_string(),
        _ => "host".into(),
    };
    let inputs = CacheKey::new("job-inputs")
        .with("source", &job.source)
        .with("base", &base_id)
        .with("runtime", job.runtime.as_deref().unwrap_or("detect"))
        .with("env", job.env.join("\n"))
        .with("repository", &ctx.opts.repository)
        .digest();
    let inputs_key = &inputs.hex()[..32];
    if let Some(existing) = revisions::by_inputs(queue, &job.app, inputs_key).await? {
        ctx.metrics.deduplicated();
        let mut answer = existing.clone();
        answer.job_id = job.job_id.clone();
        revisions::index(queue, &answer, None).await?;
        event(
            ctx,
            &job.job_id,
            Some(&job.app),
            EventKind::Step {
                text: format!(
                    "same source, lockfile and base as {}: not built again",
                    existing.name
                ),
            },
        )
        .await;
        return Ok(existing);
    }

    // Source: fetch, check, extract into a scratch directory.
    let bytes = source::fetch(queue, &job.source, ctx.opts.limits.max_total_bytes)
        .await
        .map_err(|e| match e {
            source::FetchError::Nats(n) => JobError::Transient(n.to_string()),
            other => JobError::Permanent(other.to_string()),
        })?;
    let scratch_root = cache_dir.join("jobs");
    std::fs::create_dir_all(&scratch_root).map_err(|e| JobError::Transient(e.to_string()))?;
    let scratch = tempfile::tempdir_in(&scratch_root)
        .map_err(|e| JobError::Transient(format!("scratch directory: {e}")))?;
    let dest = scratch.path().join("x");
    std::fs::create_dir(&dest).map_err(|e| JobError::Transient(e.to_string()))?;
    let limits = ctx.opts.limits.clone();
    let extract_to = dest.clone();
    tokio::task::spawn_blocking(move || {
        kiln_layers::extract_tar_gz(bytes.as_slice(), &extract_to, &limits)
    })
    .await
    .map_err(|e| JobError::Transient(e.to_string()))?
    .map_err(|e| JobError::Permanent(e.to_string()))?;
    let app_dir = dest.join(source::SOURCE_ROOT);
    if !app_dir.is_dir() {
        return Err(JobError::Permanent(format!(
            "source {} has no {}/ directory",
            job.source,
            source::SOURCE_ROOT
        )));
    }

    // Build on a blocking thread; steps stream out as events.
    let request = BuildRequest {
        source: app_dir,
        runtime: job.runtime.clone(),
        base,
        env: job.env.clone(),
        source_date_epoch: 0,
        cache_dir: cache_dir.clone(),
        start: None,
        build_script: kiln_builder::BuildScript::Auto,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Step>();
    let shared =
        crate::layer_cache::KvLayers::new(queue.clone(), tokio::runtime::Handle::current());
    let build = tokio::task::spawn_blocking(move || {
        let progress = move |step: Step| {
            let _ = tx.send(step);
        };
        kiln_builder::build_with(&request, &progress, &shared)
    });
    let mut made_deps = Vec::new();
    let mut layers = Vec::new();
    let mut runtime = String::new();
    let mut base_name = String::new();
    while let Some(step) = rx.recv().await {
        match &step {
            Step::Layer {
                kind,
                descriptor,
                cache_hit,
                cache_key,
                ..
            } => {
                ctx.metrics.layer(*cache_hit);
                if *kind == "deps"
                    && !*cache_hit
                    && let Some(key) = cache_key
                {
                    made_deps.push((key.clone(), descriptor.clone()));
                }
                layers.push(LayerRecord {
                    kind: (*kind).to_owned(),
                    digest: descriptor.digest.to_string(),
                    size: descriptor.size,
                    cache_hit: *cache_hit,
                });
            }
            Step::Runtime { name, .. } => runtime = name.clone(),
            Step::Base { name, .. } => base_name = name.clone(),
            Step::Installing | Step::BuildScript { .. } | Step::BuildOutput(_) | Step::Note(_) => {}
        }
        event(
            ctx,
            &job.job_id,
            Some(&job.app),
            EventKind::Step {
                text: step.to_string(),
            },
        )
        .await;
    }
    let built = build
        .await
        .map_err(|e| JobError::Transient(e.to_string()))??;
    let build_ms = started.elapsed().as_millis() as u64;
    drop(scratch);

    // Push, then record the revision; only then is the job acked.
    let push_started = Instant::now();
    // Tagged by source digest; the revision pins the manifest digest.
    let repository = format!("{}/{}", ctx.opts.repository, job.app);
    let target = format!("{repository}:src-{}", &job.source["sha256-".len()..][..16]);
    let pushed = push_image(&ctx.opts.registry, &built, &target)
        .await
        .map_err(JobError::from)?;
    let push_ms = push_started.elapsed().as_millis() as u64;
    let image = format!("{repository}@{}", built.manifest.digest);
    event(
        ctx,
        &job.job_id,
        Some(&job.app),
        EventKind::Pushed {
            image: image.clone(),
        },
    )
    .await;
    tracing::debug!(
        "pushed {}: {} uploaded, {} mounted",
        pushed.reference,
        pushed.uploaded,
        pushed.mounted
    );
    let manifest: kiln_layers::ImageManifest = serde_json::from_slice(
        &built
            .store
            .read_blob(&built.manifest.digest)
            .map_err(|e| JobError::Transient(e.to_string()))?,
    )
    .map_err(|e| JobError::Transient(e.to_string()))?;
    share_deps_layers(ctx, &built, &manifest, &made_deps, &repository).await;
    let port = exposed_port(&built, &manifest).unwrap_or(8080);
    let annotation = |key: &str| manifest.annotations.get(key).cloned().unwrap_or_default();
    let base_layers = manifest.layers.len().saturating_sub(layers.len());
    let mut all_layers: Vec<LayerRecord> = manifest.layers[..base_layers]
        .iter()
        .map(|d| LayerRecord {
            kind: "base".into(),
            digest: d.digest.to_string(),
            size: d.size,
            cache_hit: true,
        })
        .collect();
    all_layers.extend(layers);
    let revision = Revision {
        schema_version: SCHEMA_VERSION,
        name: String::new(),
        app: job.app.clone(),
        number: 0,
        job_id: job.job_id.clone(),
        image,
        digest: built.manifest.digest.to_string(),
        runtime: if runtime.is_empty() {
            annotation(kiln_builder::build::ANNOTATION_RUNTIME)
        } else {
            runtime
        },
        base: base_name,
        base_digest: annotation(kiln_builder::build::ANNOTATION_BASE_DIGEST),
        source_digest: annotation(kiln_builder::build::ANNOTATION_SOURCE),
        source_object: job.source.clone(),
        env: job.env.clone(),
        port,
        deploy: job.deploy.clone(),
        layers: all_layers,
        timings_ms: Timings {
            build: build_ms,
            push: push_ms,
            total: started.elapsed().as_millis() as u64,
        },
        created: now(),
    };
    let revision = match revisions::record(queue, revision, Some(inputs_key)).await? {
        revisions::Recorded::Done(revision) => *revision,
        revisions::Recorded::Busy => {
            return Err(JobError::Transient(
                "another attempt of this job is recording its revision".into(),
            ));
        }
        revisions::Recorded::GivenUp => {
            return Err(JobError::Permanent(format!(
                "gave up after {MAX_DELIVER} deliveries: no worker finished the job"
            )));
        }
    };
    revisions::announce(queue, &revision).await?;
    Ok(revision)
}

/// A rebase job: the revision's image onto the new base, recorded as a new revision.
async fn process_rebase(
    ctx: &Ctx,
    job: &RebaseJob,
    started: Instant,
) -> Result<Revision, JobError> {
    let store = kiln_layers::BlobStore::open_or_create(&ctx.opts.cache_dir)
        .map_err(|e| JobError::Transient(e.to_string()))?;
    crate::rebase::rebase_revision(
        &ctx.queue,
        &ctx.opts.registry,
        &store,
        &ctx.opts.platform,
        job,
        started,
    )
    .await
    .map_err(|e| match e {
        crate::rebase::RebaseError::Build(b) => JobError::from(b),
        crate::rebase::RebaseError::Nats(n) => JobError::Transient(n.to_string()),
        crate::rebase::RebaseError::Busy => {
            JobError::Transient("another attempt of this job is recording its revision".into())
        }
        other => JobError::Permanent(other.to_string()),
    })
}

/// The TCP port the image's config exposes (the runtime's port).
fn exposed_port(built: &kiln_builder::Built, manifest: &kiln_layers::ImageManifest) -> Option<u16> {
    let config: kiln_layers::ImageConfig =
        serde_json::from_slice(&built.store.read_blob(&manifest.config.digest).ok()?).ok()?;
    config
        .config
        .exposed_ports?
        .keys()
        .find_map(|p| p.strip_suffix("/tcp")?.parse().ok())
}

/// Records the dependency layers this job made (now pushed to `repository`) in the shared
/// layer cache, so other workers mount them instead of building them.
async fn share_deps_layers(
    ctx: &Ctx,
    built: &kiln_builder::Built,
    manifest: &kiln_layers::ImageManifest,
    made: &[(kiln_layers::Digest, kiln_layers::Descriptor)],
    repository: &str,
) {
    if made.is_empty() {
        return;
    }
    let Ok(config) = built
        .store
        .read_blob(&manifest.config.digest)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            serde_json::from_slice::<kiln_layers::ImageConfig>(&b).map_err(|e| e.to_string())
        })
    else {
        return;
    };
    for (key, descriptor) in made {
        let Some(index) = manifest.layers.iter().position(|l| l == descriptor) else {
            continue;
        };
        let Some(diff_id) = config.rootfs.diff_ids.get(index) else {
            continue;
        };
        let shared = kiln_builder::shared::SharedLayer {
            layer: kiln_layers::Layer {
                descriptor: descriptor.clone(),
                diff_id: diff_id.clone(),
            },
            repository: repository.to_owned(),
        };
        if let Err(e) = crate::layer_cache::record(&ctx.queue, key, &shared).await {
            tracing::warn!("{e}");
        }
    }
}

/// Removes jobs that ran out of deliveries (a worker died on each) from the work queue and
/// reports them failed. The advisories wait in `KILN_ADVISORIES` until a worker runs; one
/// worker handles each.
async fn watch_max_deliveries(ctx: Arc<Ctx>) {
    loop {
        let messages = match ctx.queue.advisories_consumer().await {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
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
async fn handle_max_deliveries(ctx: &Ctx, advisory: &[u8]) -> Result<(), String> {
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
        .map_err(|e| e.to_string())?;
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
            return if gone { Ok(()) } else { Err(e.to_string()) };
        }
    };
    if let Ok(job) = Job::parse(&message.subject, &message.payload) {
        let recorded = revisions::give_up(&ctx.queue, job.app(), job.job_id())
            .await
            .map_err(|e| e.to_string())?;
        if recorded.is_none() {
            publish_event(
                ctx,
                job.job_id(),
                Some(job.app()),
                EventKind::Failed {
                    reason: format!(
                        "gave up after {MAX_DELIVER} deliveries: no worker finished the job"
                    ),
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
            async_nats::jetstream::stream::DeleteMessageErrorKind::JetStream(js)
                if js.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND =>
            {
                Ok(())
            }
            _ => Err(e.to_string()),
        },
    }
}
