//! A build job: resolve its base, reuse a revision built from the same inputs, or fetch and
//! unpack the source, build it (steps stream out as events), push the image and record it as
//! the job's revision.

use std::path::PathBuf;
use std::time::Instant;

use kiln_builder::push::push_image;
use kiln_builder::{BaseSource, BuildRequest, Built, LayerKind, Step};
use kiln_layers::CacheKey;
use tempfile::TempDir;
use tokio::sync::mpsc;

use super::error::JobError;
use super::{Ctx, events};
use crate::revisions::{self, Recorded};
use crate::schema::{BuildJob, EventKind, LayerRecord, Revision, SCHEMA_VERSION, Timings, now};
use crate::source;

/// One delivery of a build job: returns its revision (new, or recorded earlier for this job
/// id or for the same inputs).
pub(super) async fn process(
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
    let base = resolve_base(ctx, job).await?;
    let inputs = inputs_key(ctx, job, &base);
    if let Some(existing) = built_before(ctx, job, &inputs).await? {
        return Ok(existing);
    }
    let (scratch, app_dir) = unpack_source(ctx, job).await?;
    let built = build(ctx, job, app_dir, base).await?;
    let build_ms = started.elapsed().as_millis() as u64;
    drop(scratch);

    // Push, then record the revision; only then is the job acked.
    let push_started = Instant::now();
    // Tagged by source digest; the revision pins the manifest digest.
    let repository = format!("{}/{}", ctx.opts.repository, job.app);
    let target = format!("{repository}:src-{}", &job.source["sha256-".len()..][..16]);
    let pushed = push_image(&ctx.opts.registry, &built, &target).await?;
    let push_ms = push_started.elapsed().as_millis() as u64;
    let image = format!("{repository}@{}", built.manifest.digest);
    events::report(
        queue,
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
    share_deps_layers(ctx, &built, &repository).await;
    let timings = Timings {
        build: build_ms,
        push: push_ms,
        total: started.elapsed().as_millis() as u64,
    };
    let revision = new_revision(job, &built, image, timings);
    let revision = match revisions::record(queue, revision, Some(&inputs)).await? {
        Recorded::Done(revision) => *revision,
        Recorded::Busy => return Err(JobError::Busy),
        Recorded::GivenUp => return Err(JobError::GivenUp),
    };
    revisions::announce(queue, &revision).await?;
    Ok(revision)
}

/// The job's base (or the worker's default): a registry base is pulled into the cache.
async fn resolve_base(ctx: &Ctx, job: &BuildJob) -> Result<BaseSource, JobError> {
    let Some(reference) = job.base.as_ref().or(ctx.opts.default_base.as_ref()) else {
        return Ok(BaseSource::Host(None));
    };
    let store =
        kiln_layers::BlobStore::open_or_create(&ctx.opts.cache_dir).map_err(JobError::Cache)?;
    let base = kiln_builder::BaseRef::parse(reference).map_err(JobError::InvalidBase)?;
    Ok(base
        .resolve(&ctx.opts.registry, &ctx.opts.platform, &store)
        .await?)
}

/// The key of everything that makes the image: source, base digest, runtime, environment
/// and repository.
fn inputs_key(ctx: &Ctx, job: &BuildJob, base: &BaseSource) -> String {
    let inputs = CacheKey::new("job-inputs")
        .with("source", &job.source)
        .with("base", base.identity())
        .with("runtime", job.runtime.as_deref().unwrap_or("detect"))
        .with("env", job.env.join("\n"))
        .with("repository", &ctx.opts.repository)
        .digest();
    inputs.hex()[..32].to_owned()
}

/// The revision built earlier from the same inputs, now indexed under this job too.
async fn built_before(
    ctx: &Ctx,
    job: &BuildJob,
    inputs: &str,
) -> Result<Option<Revision>, JobError> {
    let Some(existing) = revisions::by_inputs(&ctx.queue, &job.app, inputs).await? else {
        return Ok(None);
    };
    ctx.metrics.deduplicated();
    let mut answer = existing.clone();
    answer.job_id = job.job_id.clone();
    revisions::index(&ctx.queue, &answer, None).await?;
    events::report(
        &ctx.queue,
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
    Ok(Some(existing))
}

/// Fetches the source, checks it and extracts it into a scratch directory (removed when the
/// returned guard drops); returns the guard and the app directory in it.
async fn unpack_source(ctx: &Ctx, job: &BuildJob) -> Result<(TempDir, PathBuf), JobError> {
    let bytes = source::fetch(&ctx.queue, &job.source, ctx.opts.limits.max_total_bytes).await?;
    let scratch_root = ctx.opts.cache_dir.join("jobs");
    std::fs::create_dir_all(&scratch_root)?;
    let scratch = tempfile::tempdir_in(&scratch_root).map_err(JobError::Scratch)?;
    let dest = scratch.path().join("x");
    std::fs::create_dir(&dest)?;
    let limits = ctx.opts.limits.clone();
    let extract_to = dest.clone();
    tokio::task::spawn_blocking(move || {
        kiln_layers::extract_tar_gz(bytes.as_slice(), &extract_to, &limits)
    })
    .await?
    .map_err(JobError::Extract)?;
    let app_dir = dest.join(source::SOURCE_ROOT);
    if !app_dir.is_dir() {
        return Err(JobError::NoSourceRoot {
            object: job.source.clone(),
        });
    }
    Ok((scratch, app_dir))
}

/// Builds `app_dir` on a blocking thread; its steps stream out as events.
async fn build(
    ctx: &Ctx,
    job: &BuildJob,
    app_dir: PathBuf,
    base: BaseSource,
) -> Result<Built, JobError> {
    let request = BuildRequest {
        source: app_dir,
        runtime: job.runtime.clone(),
        base,
        env: job.env.clone(),
        source_date_epoch: 0,
        cache_dir: ctx.opts.cache_dir.clone(),
        start: None,
        build_script: kiln_builder::BuildScript::Auto,
        workspace: None,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Step>();
    let shared =
        crate::layer_cache::KvLayers::new(ctx.queue.clone(), tokio::runtime::Handle::current());
    let build = tokio::task::spawn_blocking(move || {
        let progress = move |step: Step| {
            let _ = tx.send(step);
        };
        kiln_builder::build_with(&request, &progress, &shared)
    });
    while let Some(step) = rx.recv().await {
        if let Step::Layer { cache_hit, .. } = &step {
            ctx.metrics.layer(*cache_hit);
        }
        events::report(
            &ctx.queue,
            &job.job_id,
            Some(&job.app),
            EventKind::Step {
                text: step.to_string(),
            },
        )
        .await;
    }
    Ok(build.await??)
}

/// The revision record of `built` (its name and number are given when it is recorded).
fn new_revision(job: &BuildJob, built: &Built, image: String, timings: Timings) -> Revision {
    let annotation = |key: &str| built.annotation(key).unwrap_or_default().to_owned();
    let layers = built
        .layers
        .iter()
        .map(|l| LayerRecord {
            kind: l.kind.to_string(),
            digest: l.descriptor.digest.to_string(),
            size: l.descriptor.size,
            cache_hit: l.cache_hit,
        })
        .collect();
    Revision {
        schema_version: SCHEMA_VERSION,
        name: String::new(),
        app: job.app.clone(),
        number: 0,
        job_id: job.job_id.clone(),
        image,
        digest: built.manifest.digest.to_string(),
        runtime: built.runtime.clone(),
        base: built.base_name.clone(),
        base_digest: annotation(kiln_builder::build::ANNOTATION_BASE_DIGEST),
        source_digest: annotation(kiln_builder::build::ANNOTATION_SOURCE),
        source_object: job.source.clone(),
        env: job.env.clone(),
        port: exposed_port(built).unwrap_or(8080),
        deploy: job.deploy.clone(),
        layers,
        timings_ms: timings,
        created: now(),
    }
}

/// The TCP port the image's config exposes (the runtime's port).
fn exposed_port(built: &Built) -> Option<u16> {
    let config: kiln_layers::ImageConfig =
        serde_json::from_slice(&built.store.read_blob(&built.image.config.digest).ok()?).ok()?;
    config
        .config
        .exposed_ports?
        .keys()
        .find_map(|p| p.strip_suffix("/tcp")?.parse().ok())
}

/// Records the dependency layers this job made (now pushed to `repository`) in the shared
/// layer cache, so other workers mount them instead of building them.
async fn share_deps_layers(ctx: &Ctx, built: &Built, repository: &str) {
    let made = built.layers_of(LayerKind::Deps).filter(|l| !l.cache_hit);
    for record in made {
        let Some(key) = &record.cache_key else {
            continue;
        };
        let shared = kiln_builder::shared::SharedLayer {
            layer: kiln_layers::Layer {
                descriptor: record.descriptor.clone(),
                diff_id: record.diff_id.clone(),
            },
            repository: repository.to_owned(),
        };
        if let Err(e) = crate::layer_cache::record(&ctx.queue, key, &shared).await {
            tracing::warn!("{e}");
        }
    }
}
