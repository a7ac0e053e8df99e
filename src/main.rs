//! `kiln`: builds reproducible OCI images for Node.js apps without a Docker daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kiln_builder::pull::{host_platform, parse_platform, pull_image};
use kiln_builder::push::{Pushed, push_image};
use kiln_builder::registry::{Registry, RegistryOptions, RetryPolicy};
use kiln_builder::{BaseSource, BuildRequest, BuildScript, Built, Step, output};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Reproducible OCI images for Node.js apps, no daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an app directory into a registry, an OCI layout and/or an OCI archive; prints
    /// the image digest.
    Build(BuildArgs),
    /// Base images.
    #[command(subcommand)]
    Base(BaseCommand),
    /// Runtime bases: a base image plus a kiln runtime layer.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// Run a build worker: jobs from NATS JetStream to images and revisions.
    Worker(WorkerArgs),
    /// Upload an app's source and queue a build job; with --wait, follow it to its revision.
    Submit(SubmitArgs),
    /// List an app's revisions with their traffic.
    Revisions(RevisionsArgs),
    /// Send an app's traffic to a revision (or split it for a canary) and render the Knative
    /// Service; no rebuild.
    Deploy(DeployArgs),
    /// Send all traffic back to the revision deployed before the current one; no rebuild.
    Rollback(RollbackArgs),
    /// Move an app (or every app on a runtime) onto a new runtime base: manifest and config
    /// rewritten, app layers untouched, a new revision each.
    Rebase(RebaseArgs),
}

#[derive(clap::Args)]
struct RebaseArgs {
    /// The app to rebase (its latest revision, or --revision).
    #[arg(required_unless_present = "runtime", conflicts_with = "runtime")]
    app: Option<String>,
    /// The new runtime base (or base) image for APP.
    #[arg(long, requires = "app")]
    runtime_base: Option<String>,
    /// The revision of APP to rebase [default: its latest].
    #[arg(long, requires = "app")]
    revision: Option<String>,
    /// Rebase every app whose latest revision runs on this runtime, as jobs on the queue.
    #[arg(long, requires = "to")]
    runtime: Option<String>,
    /// With --runtime: the new runtime base.
    #[arg(long)]
    to: Option<String>,
    /// With --runtime: give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Print the new revision(s) as JSON.
    #[arg(long)]
    json: bool,
    /// NATS server URL.
    #[arg(long, env = "KILN_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[command(flatten)]
    registry_args: RegistryArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct DeployArgs {
    /// App name.
    app: String,
    /// All traffic to this revision (`<app>-<NNNNN>`).
    #[arg(long, conflicts_with_all = ["canary", "promote"])]
    revision: Option<String>,
    /// Canary: `<revision>=<percent>` to the candidate, the rest to the current revision.
    #[arg(long, value_name = "REVISION=PERCENT", conflicts_with = "promote")]
    canary: Option<String>,
    /// All traffic to the canary candidate.
    #[arg(long)]
    promote: bool,
    #[command(flatten)]
    out: ServiceOut,
}

#[derive(clap::Args)]
struct RollbackArgs {
    /// App name.
    app: String,
    #[command(flatten)]
    out: ServiceOut,
}

#[derive(clap::Args)]
struct ServiceOut {
    /// Write the Knative Service YAML here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// NATS server URL.
    #[arg(long, env = "KILN_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// NATS server URL.
    #[arg(long, env = "KILN_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Registry (`host[:port]`) the images go to.
    #[arg(long, env = "KILN_REGISTRY")]
    registry: String,
    /// Repository prefix in that registry: an app's image is `<registry>/<prefix>/<app>`.
    #[arg(long, default_value = "apps")]
    repository_prefix: String,
    /// Base image for jobs that name none [default: made from the host's node].
    #[arg(long)]
    base: Option<String>,
    /// Jobs built at once.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Worker name in events [default: hostname-pid].
    #[arg(long)]
    name: Option<String>,
    /// Consumer ack wait in seconds (heartbeats go out at a third of it).
    #[arg(long, default_value_t = 30)]
    ack_wait_secs: u64,
    /// Seconds a shutdown (SIGTERM) waits for the jobs in hand.
    #[arg(long, default_value_t = 60)]
    grace_secs: u64,
    /// Serve /healthz and /metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics: Option<String>,
    #[command(flatten)]
    registry_args: RegistryArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct SubmitArgs {
    /// The app's source directory.
    dir: PathBuf,
    /// App name (DNS-1123 label).
    #[arg(long)]
    app: String,
    /// NATS server URL.
    #[arg(long, env = "KILN_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Runtime: faas, sma or app (detected by the worker when absent).
    #[arg(long)]
    runtime: Option<String>,
    /// Base image reference [default: the worker's].
    #[arg(long)]
    base: Option<String>,
    /// Extra environment for the image, `KEY=value` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Job id [default: random]; resubmitting an id never makes a second revision.
    #[arg(long)]
    job_id: Option<String>,
    /// Follow the job's progress until its revision (or failure).
    #[arg(long)]
    wait: bool,
    /// With --wait: print the revision as JSON.
    #[arg(long)]
    json: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Knative containerConcurrency of the app's revisions.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Knative autoscaling min-scale.
    #[arg(long)]
    min_scale: Option<u32>,
    /// Knative autoscaling max-scale.
    #[arg(long)]
    max_scale: Option<u32>,
    /// CPU request and limit (`250m`).
    #[arg(long)]
    cpu: Option<String>,
    /// Memory request and limit (`256Mi`).
    #[arg(long)]
    memory: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct RevisionsArgs {
    /// App name.
    app: String,
    /// NATS server URL.
    #[arg(long, env = "KILN_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The app's source directory.
    dir: PathBuf,
    /// Runtime: faas, sma or app (detected when absent).
    #[arg(long)]
    runtime: Option<String>,
    /// Base image: a registry reference (`host[:port]/repo:tag`, OCI or Docker v2s2, image
    /// or index) or `oci:DIR:TAG` (a local OCI layout); default: made from the host's node.
    #[arg(long)]
    base: Option<String>,
    /// Push the image to this registry reference (`host[:port]/repo:tag`).
    #[arg(long)]
    image: Option<String>,
    /// Write the image into this OCI layout directory.
    #[arg(long)]
    layout: Option<PathBuf>,
    /// Write the image as an OCI archive (tar) at this path.
    #[arg(long)]
    tarball: Option<PathBuf>,
    /// Reference name of the image in the layout or archive [default: <dir name>:latest].
    #[arg(long)]
    tag: Option<String>,
    /// Extra environment for the image, `KEY=value` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Start command of an `app` image [default: package.json `kiln.start`, else
    /// `scripts.start`, else `start:prod` when `start` needs a devDependency].
    #[arg(long)]
    start: Option<String>,
    /// Script to run as the build step [default: `kiln.buildScript`, else `build` if present].
    #[arg(long, value_name = "NAME", conflicts_with = "no_build")]
    build_script: Option<String>,
    /// Run no build step.
    #[arg(long)]
    no_build: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct RegistryArgs {
    /// Registry (`host:port`) to speak plain HTTP to (repeatable, or comma-separated).
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        env = "KILN_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure: Vec<String>,
    /// Platform to pick from a base image index, `os/arch[/variant]` [default: this machine's].
    #[arg(long)]
    platform: Option<String>,
    /// Attempts per registry request on transient failures (5xx, 429, dropped connections).
    #[arg(long, env = "KILN_REGISTRY_RETRIES", default_value_t = 6)]
    registry_retries: u32,
    /// First retry delay in milliseconds; doubled each retry, with jitter.
    #[arg(long, env = "KILN_REGISTRY_BACKOFF_MS", default_value_t = 200)]
    registry_backoff_ms: u64,
    /// The client made from these options, shared by pull and push (one connection pool).
    #[arg(skip)]
    client: std::sync::OnceLock<Registry>,
}

impl RegistryArgs {
    fn registry(&self) -> Registry {
        self.client.get_or_init(|| self.new_registry()).clone()
    }

    /// `--platform`, or this machine's.
    fn platform(&self) -> Result<kiln_layers::oci::Platform> {
        Ok(match &self.platform {
            Some(p) => parse_platform(p)?,
            None => host_platform(),
        })
    }

    fn new_registry(&self) -> Registry {
        Registry::new(RegistryOptions {
            insecure: self.insecure.clone(),
            retry: RetryPolicy {
                attempts: self.registry_retries.max(1),
                base_delay: std::time::Duration::from_millis(self.registry_backoff_ms),
                ..RetryPolicy::default()
            },
        })
    }
}

#[derive(clap::Args)]
struct Common {
    /// Cache directory [default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln].
    #[arg(long, env = "KILN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// mtime of every app and deps file and the image's creation time.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
}

#[derive(Subcommand)]
enum BaseCommand {
    /// Make a minimal Node base image from this machine's node and its libraries.
    FromHost {
        /// The node binary [default: node on PATH].
        #[arg(long)]
        node: Option<PathBuf>,
        /// Write the base into this OCI layout directory.
        #[arg(long)]
        layout: Option<PathBuf>,
        /// Reference name in the layout.
        #[arg(long, default_value = "node")]
        tag: String,
        /// Push the base to this registry reference.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum RuntimeCommand {
    /// Make a runtime base (base + the runtime's layer, entrypoint and port) and push it.
    Publish {
        /// Runtime: faas, sma or app.
        runtime: String,
        /// The base image (as for `kiln build --base`) [default: made from the host's node].
        #[arg(long)]
        base: Option<String>,
        /// Push the runtime base to this registry reference.
        #[arg(long)]
        to: Option<String>,
        /// Write the runtime base into this OCI layout directory.
        #[arg(long)]
        layout: Option<PathBuf>,
        /// Reference name in the layout.
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        common: Common,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kiln: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(args) => build(args),
        Command::Base(BaseCommand::FromHost {
            node,
            layout,
            tag,
            to,
            registry,
            common,
        }) => {
            if layout.is_none() && to.is_none() {
                bail!("nothing to write: give --layout DIR and/or --to REF");
            }
            let cache_dir = cache_dir(common.cache_dir)?;
            let store = kiln_layers::BlobStore::open_or_create(&cache_dir)?;
            let (name, desc, _) = kiln_builder::host_base::host_base(&store, node.as_deref())?;
            let base = kiln_builder::image::Base::load(&store, &name, desc.clone())?;
            let built = Built::new(store, desc, &base.manifest);
            publish(&built, layout.as_deref(), &tag, to.as_deref(), &registry)
        }
        Command::Worker(args) => worker(args),
        Command::Submit(args) => submit(args),
        Command::Revisions(args) => list_revisions(args),
        Command::Deploy(args) => {
            use kiln_queue::traffic::Operation;
            let op = match (args.revision, args.canary, args.promote) {
                (Some(r), None, false) => Operation::Deploy(r),
                (None, Some(c), false) => {
                    let (rev, pct) = c
                        .split_once('=')
                        .context("--canary expects REVISION=PERCENT")?;
                    let pct: u8 = pct
                        .parse()
                        .with_context(|| format!("--canary {c:?}: percent must be 1-99"))?;
                    Operation::Canary(rev.to_owned(), pct)
                }
                (None, None, true) => Operation::Promote,
                _ => bail!("give one of --revision R, --canary R=PERCENT or --promote"),
            };
            traffic(&args.app, op, &args.out)
        }
        Command::Rebase(args) => rebase(args),
        Command::Rollback(args) => traffic(
            &args.app,
            kiln_queue::traffic::Operation::Rollback,
            &args.out,
        ),
        Command::Runtime(RuntimeCommand::Publish {
            runtime,
            base,
            to,
            layout,
            tag,
            registry,
            common,
        }) => {
            if layout.is_none() && to.is_none() {
                bail!("nothing to write: give --to REF and/or --layout DIR");
            }
            let cache_dir = cache_dir(common.cache_dir)?;
            let base = base_source(base.as_deref(), &registry, &cache_dir)?;
            let built = kiln_builder::build_runtime_base(
                &runtime,
                &base,
                &cache_dir,
                common.source_date_epoch,
                &|step: Step| eprintln!("{step}"),
            )?;
            let tag = tag.unwrap_or_else(|| format!("runtime-{runtime}"));
            publish(&built, layout.as_deref(), &tag, to.as_deref(), &registry)
        }
    }
}

fn worker(args: WorkerArgs) -> Result<()> {
    let cache_dir = cache_dir(args.common.cache_dir)?;
    let platform = args.registry_args.platform()?;
    let name = args.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let opts = kiln_queue::worker::WorkerOptions {
        name,
        jobs: args.jobs,
        cache_dir,
        repository: format!("{}/{}", args.registry, args.repository_prefix),
        default_base: args.base,
        platform,
        registry: args.registry_args.registry(),
        ack_wait: std::time::Duration::from_secs(args.ack_wait_secs.max(1)),
        grace: std::time::Duration::from_secs(args.grace_secs),
        limits: kiln_layers::ExtractLimits::default(),
    };
    runtime()?.block_on(async move {
        let queue = kiln_queue::Queue::connect(&args.nats).await?;
        let metrics = std::sync::Arc::new(kiln_queue::metrics::Metrics::default());
        if let Some(addr) = &args.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics {addr}"))?;
            tokio::spawn(kiln_queue::metrics::serve(listener, metrics.clone()));
        }
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        eprintln!(
            "worker {} on {} (jobs: {})",
            opts.name, args.nats, opts.jobs
        );
        kiln_queue::worker::run(queue, opts, metrics, shutdown).await?;
        Ok(())
    })
}

fn submit(args: SubmitArgs) -> Result<()> {
    use kiln_queue::EventKind;
    let scratch = cache_dir(args.common.cache_dir)?.join("submit");
    let submission = kiln_queue::submit::Submission {
        dir: args.dir,
        app: args.app,
        runtime: args.runtime,
        base: args.base,
        env: args.env,
        job_id: args
            .job_id
            .or_else(|| Some(kiln_queue::submit::new_job_id())),
        deploy: kiln_queue::schema::DeploySettings {
            container_concurrency: args.concurrency,
            min_scale: args.min_scale,
            max_scale: args.max_scale,
            target: None,
            cpu: args.cpu,
            memory: args.memory,
        },
    };
    let job_id = submission.job_id.clone().expect("set");
    runtime()?.block_on(async move {
        let queue = kiln_queue::Queue::connect(&args.nats).await?;
        let events = kiln_queue::submit::subscribe(&queue, &job_id).await?;
        let (job, duplicate) = kiln_queue::submit::submit(&queue, &submission, &scratch).await?;
        eprintln!(
            "job {}{} for app {} (source {})",
            job.job_id,
            if duplicate { " (already queued)" } else { "" },
            job.app,
            job.source
        );
        if !args.wait {
            println!("{}", job.job_id);
            return Ok(());
        }
        let last = kiln_queue::submit::follow(
            &queue,
            events,
            &job,
            std::time::Duration::from_secs(args.timeout_secs),
            |event| match &event.kind {
                EventKind::Accepted => eprintln!("accepted"),
                EventKind::Building { worker, attempt } => {
                    eprintln!("building on {worker} (attempt {attempt})")
                }
                EventKind::Step { text } => eprintln!("{text}"),
                EventKind::Pushed { image } => eprintln!("pushed {image}"),
                EventKind::Revision { revision } => eprintln!("revision {}", revision.name),
                EventKind::Failed { reason, retryable } => eprintln!(
                    "failed{}: {reason}",
                    if *retryable { " (will retry)" } else { "" }
                ),
            },
        )
        .await?;
        match last.kind {
            EventKind::Revision { revision } => {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&revision)?);
                } else {
                    println!("{}", revision.name);
                }
                Ok(())
            }
            EventKind::Failed { reason, .. } => bail!("job {} failed: {reason}", job.job_id),
            _ => unreachable!("follow returns a revision or a failure"),
        }
    })
}

fn rebase(args: RebaseArgs) -> Result<()> {
    let platform = args.registry_args.platform()?;
    let cache_dir = cache_dir(args.common.cache_dir.clone())?;
    let registry = args.registry_args.registry();
    runtime()?.block_on(async move {
        let queue = kiln_queue::Queue::connect(&args.nats).await?;
        if let (Some(runtime), Some(to)) = (&args.runtime, &args.to) {
            // Apps already on the target (same manifest digest) are left as they are.
            let store = kiln_layers::BlobStore::open_or_create(&cache_dir)?;
            let (_, target, _) =
                kiln_builder::pull::pull_metadata(&registry, to, &platform, &store).await?;
            let target = target.digest.to_string();
            return rebase_runtime(&queue, runtime, to, &target, args.timeout_secs, args.json)
                .await;
        }
        let app = args.app.as_deref().expect("clap requires APP");
        let base = args
            .runtime_base
            .as_deref()
            .context("give --runtime-base REF")?;
        let old = match &args.revision {
            Some(r) => kiln_queue::revisions::by_name(&queue, r).await?,
            None => {
                let n = kiln_queue::revisions::latest_number(&queue, app).await?;
                kiln_queue::revisions::get(&queue, app, n).await?
            }
        }
        .with_context(|| format!("app {app:?} has no such revision"))?;
        let job = kiln_queue::rebase::job_for(&old, base);
        let store = kiln_layers::BlobStore::open_or_create(&cache_dir)?;
        let revision = kiln_queue::rebase::rebase_revision(
            &queue,
            &registry,
            &store,
            &platform,
            &job,
            std::time::Instant::now(),
        )
        .await?;
        eprintln!(
            "{} -> {}: {} on {}",
            old.name, revision.name, revision.image, revision.base
        );
        if args.json {
            println!("{}", serde_json::to_string_pretty(&revision)?);
        } else {
            println!("{}", revision.name);
        }
        Ok(())
    })
}

/// Queues a rebase job for every app on `runtime` and follows them to the end.
async fn rebase_runtime(
    queue: &kiln_queue::Queue,
    runtime: &str,
    to: &str,
    to_digest: &str,
    timeout_secs: u64,
    json: bool,
) -> Result<()> {
    use futures_util::StreamExt;
    use kiln_queue::EventKind;
    let started = std::time::Instant::now();
    let (already, apps): (Vec<_>, Vec<_>) = kiln_queue::rebase::apps_on_runtime(queue, runtime)
        .await?
        .into_iter()
        .partition(|r| r.base_digest == to_digest);
    if !already.is_empty() {
        eprintln!(
            "{} apps already on {to}: {}",
            already.len(),
            already
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if apps.is_empty() {
        if already.is_empty() {
            bail!("no app's latest revision runs on runtime {runtime:?}");
        }
        if json {
            println!("[]");
        }
        return Ok(());
    }
    let mut events = queue
        .client
        .subscribe("kiln.events.>")
        .await
        .context("subscribing to events")?;
    let jobs: Vec<_> = apps
        .iter()
        .map(|revision| kiln_queue::rebase::job_for(revision, to))
        .collect();
    let mut pending: std::collections::BTreeMap<String, String> = jobs
        .iter()
        .map(|job| (job.job_id.clone(), job.revision.clone().unwrap_or_default()))
        .collect();
    kiln_queue::rebase::publish_all(queue, &jobs).await?;
    eprintln!("queued {} rebase jobs onto {to}", pending.len());
    let total = pending.len();
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
    while !pending.is_empty() {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, events.next()).await else {
            bail!(
                "{} of {total} rebase jobs unfinished after {timeout_secs} s",
                pending.len()
            );
        };
        let Ok(event) = serde_json::from_slice::<kiln_queue::Event>(&message.payload) else {
            continue;
        };
        let Some(from) = pending.get(&event.job_id).cloned() else {
            continue;
        };
        match event.kind {
            EventKind::Revision { revision } => {
                pending.remove(&event.job_id);
                eprintln!(
                    "[{}/{total}] {from} -> {}",
                    done.len() + failed.len() + 1,
                    revision.name
                );
                done.push(*revision);
            }
            EventKind::Failed {
                reason,
                retryable: false,
            } => {
                pending.remove(&event.job_id);
                eprintln!(
                    "[{}/{total}] {from} failed: {reason}",
                    done.len() + failed.len() + 1
                );
                failed.push((from, reason));
            }
            _ => {}
        }
    }
    eprintln!(
        "rebased {} of {total} apps on {runtime} in {:.2} s; {} failed",
        done.len(),
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    }
    if !failed.is_empty() {
        bail!("{} rebase jobs failed", failed.len());
    }
    Ok(())
}

fn traffic(app: &str, op: kiln_queue::traffic::Operation, out: &ServiceOut) -> Result<()> {
    runtime()?.block_on(async move {
        let queue = kiln_queue::Queue::connect(&out.nats).await?;
        let event = kiln_queue::traffic::apply(&queue, app, &op).await?;
        let yaml = kiln_queue::knative::to_yaml(&event.service);
        for t in &event.traffic.targets {
            eprintln!(
                "{} {}% {}",
                t.revision,
                t.percent,
                t.tag.as_deref().unwrap_or("")
            );
        }
        match &out.out {
            Some(path) => {
                std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?
            }
            None => print!("{yaml}"),
        }
        Ok(())
    })
}

fn list_revisions(args: RevisionsArgs) -> Result<()> {
    runtime()?.block_on(async move {
        let queue = kiln_queue::Queue::connect(&args.nats).await?;
        let all = kiln_queue::revisions::list(&queue, &args.app).await?;
        let traffic = kiln_queue::traffic::current(&queue, &args.app).await?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"revisions": all, "traffic": traffic})
                )?
            );
            return Ok(());
        }
        if all.is_empty() {
            bail!("app {:?} has no revisions", args.app);
        }
        println!(
            "{:<20} {:<19} {:<8} {:<19} {:<20} TRAFFIC",
            "REVISION", "IMAGE DIGEST", "RUNTIME", "BASE", "CREATED"
        );
        let short = |d: &str| d.get(..19).unwrap_or(d).to_owned();
        for r in all {
            let share = traffic
                .targets
                .iter()
                .find(|t| t.revision == r.name)
                .map(|t| match &t.tag {
                    Some(tag) => format!("{}% ({tag})", t.percent),
                    None => format!("{}%", t.percent),
                })
                .unwrap_or_default();
            println!(
                "{:<20} {:<19} {:<8} {:<19} {:<20} {share}",
                r.name,
                short(&r.digest),
                r.runtime,
                short(&r.base_digest),
                r.created
            );
        }
        Ok(())
    })
}

/// Writes `built` to a layout and/or pushes it, then prints its digest.
fn publish(
    built: &Built,
    layout: Option<&std::path::Path>,
    tag: &str,
    to: Option<&str>,
    registry: &RegistryArgs,
) -> Result<()> {
    if let Some(layout) = layout {
        output::write_layout(built, layout, tag)
            .with_context(|| format!("writing OCI layout {}", layout.display()))?;
        eprintln!("wrote {}:{tag}", layout.display());
    }
    if let Some(target) = to {
        push(built, target, registry)?;
    }
    println!("{}", built.manifest.digest);
    Ok(())
}

/// The process's async runtime, started on first use.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(RUNTIME.get_or_init(|| rt))
}

fn push(built: &Built, target: &str, args: &RegistryArgs) -> Result<()> {
    let registry = args.registry();
    let pushed: Pushed = runtime()?.block_on(push_image(&registry, built, target))?;
    eprintln!(
        "pushed {}: {} blobs present, {} mounted, {} uploaded ({} bytes)",
        pushed.reference, pushed.present, pushed.mounted, pushed.uploaded, pushed.uploaded_bytes
    );
    Ok(())
}

/// The base named on the command line; a registry base is pulled into the cache first.
fn base_source(
    base: Option<&str>,
    args: &RegistryArgs,
    cache_dir: &std::path::Path,
) -> Result<BaseSource> {
    let Some(reference) = base else {
        return Ok(BaseSource::Host(None));
    };
    if let Some(rest) = reference.strip_prefix("oci:") {
        let (path, tag) = rest
            .split_once(':')
            .with_context(|| format!("base {reference:?}: expected oci:DIR:TAG"))?;
        return Ok(BaseSource::Layout {
            path: path.into(),
            tag: tag.into(),
        });
    }
    let platform = args.platform()?;
    let store = kiln_layers::BlobStore::open_or_create(cache_dir)?;
    let registry = args.registry();
    let (name, manifest, cache_hit) =
        runtime()?.block_on(pull_image(&registry, reference, &platform, &store))?;
    Ok(BaseSource::Stored {
        name,
        manifest,
        cache_hit,
    })
}

fn build(args: BuildArgs) -> Result<()> {
    if args.layout.is_none() && args.tarball.is_none() && args.image.is_none() {
        bail!("nothing to write: give --image REF, --layout DIR and/or --tarball FILE");
    }
    if let Some(image) = &args.image {
        kiln_builder::registry::parse_reference(image)?;
    }
    let cache_dir = cache_dir(args.common.cache_dir)?;
    let base = base_source(args.base.as_deref(), &args.registry, &cache_dir)?;
    let tag = match args.tag {
        Some(tag) => tag,
        None => {
            let name = std::fs::canonicalize(&args.dir)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            format!("{}:latest", name.unwrap_or_else(|| "app".into()))
        }
    };
    let request = BuildRequest {
        source: args.dir,
        runtime: args.runtime,
        base,
        env: args.env,
        source_date_epoch: args.common.source_date_epoch,
        cache_dir,
        start: args.start,
        build_script: match (args.no_build, args.build_script) {
            (true, _) => BuildScript::Off,
            (false, Some(name)) => BuildScript::Named(name),
            (false, None) => BuildScript::Auto,
        },
    };
    let progress = |step: Step| eprintln!("{step}");
    let built: Built = kiln_builder::build(&request, &progress)?;
    if let Some(tarball) = &args.tarball {
        output::write_archive(&built, tarball, &tag)
            .with_context(|| format!("writing OCI archive {}", tarball.display()))?;
        eprintln!("wrote {}", tarball.display());
    }
    publish(
        &built,
        args.layout.as_deref(),
        &tag,
        args.image.as_deref(),
        &args.registry,
    )
}

fn cache_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("kiln"));
    }
    let home = std::env::var_os("HOME").context("no --cache-dir, XDG_CACHE_HOME or HOME")?;
    Ok(PathBuf::from(home).join(".cache/kiln"))
}
