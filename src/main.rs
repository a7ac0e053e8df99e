//! `kiln`: builds reproducible OCI images for Node.js apps without a Docker daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kiln_builder::project::ProjectConfig;
use kiln_builder::pull::{host_platform, parse_platform};
use kiln_builder::registry::{Registry, RegistryOptions, RetryPolicy};
use kiln_builder::{
    BaseRef, BaseSource, BuildRequest, BuildScript, Built, Destination, Published, Step,
};

use display::Display;

mod dev;
mod display;
mod light;

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
    /// Run an app locally on its production runtime code, restarting it when its files
    /// change; `/kiln/dev` lists what it serves.
    Dev(dev::DevArgs),
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
    /// Publish an sma-light app's pages and handlers onto its running instances: a new
    /// version, live everywhere (or a canary) with no image build and no restart.
    Publish(light::PublishArgs),
    /// sma-light versions: list, rollback, promote or abort a canary, running instances.
    #[command(subcommand)]
    Light(light::LightCommand),
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
    #[command(flatten)]
    nats: NatsArgs,
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
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(clap::Args)]
struct WorkerArgs {
    #[command(flatten)]
    nats: NatsArgs,
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
    #[command(flatten)]
    nats: NatsArgs,
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
    #[command(flatten)]
    nats: NatsArgs,
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
    /// Build this package of the monorepo at DIR (npm, pnpm or yarn workspaces); building
    /// DIR/packages/NAME directly finds the root by walking up to the lockfile.
    #[arg(long, value_name = "NAME")]
    workspace: Option<String>,
    /// Print progress and the result as JSON lines on stdout (`{"event":…}` per step, then
    /// `{"built":…}` with the digest and every layer's kind, cache key, hit and time).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    common: Common,
}

/// Where the queue is and how to log in to it: one flag group for every command that talks
/// to NATS. Secrets are best given by environment (a flag shows in `ps`); help never shows
/// their values.
#[derive(clap::Args)]
struct NatsArgs {
    /// NATS server URL, or the cluster's servers comma-separated
    /// (`nats://a:4222,nats://b:4222`); `nats://USER:PASSWORD@HOST` or `nats://TOKEN@HOST`
    /// to log in, `tls://HOST` for TLS.
    #[arg(
        long,
        env = "KILN_NATS",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    nats: String,
    /// Seconds a command waits for NATS before it gives up (a worker keeps retrying).
    #[arg(
        long,
        env = "KILN_NATS_TIMEOUT",
        value_name = "SECS",
        default_value_t = 10
    )]
    nats_timeout: u64,
    /// NATS user (with --nats-password).
    #[arg(long, env = "KILN_NATS_USER", requires = "nats_password")]
    nats_user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(
        long,
        env = "KILN_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    nats_password: Option<String>,
    /// NATS token.
    #[arg(long, env = "KILN_NATS_TOKEN", hide_env_values = true, conflicts_with_all = ["nats_user", "nats_nkey", "nats_creds"])]
    nats_token: Option<String>,
    /// File holding an NKey user seed (`SU…`).
    #[arg(long, env = "KILN_NATS_NKEY", value_name = "FILE", conflicts_with_all = ["nats_user", "nats_creds"])]
    nats_nkey: Option<PathBuf>,
    /// NATS credentials file (`.creds`: user JWT and NKey seed).
    #[arg(
        long,
        env = "KILN_NATS_CREDS",
        value_name = "FILE",
        conflicts_with = "nats_user"
    )]
    nats_creds: Option<PathBuf>,
    /// PEM file of the CA that signed the NATS servers' certificates (TLS is then required).
    #[arg(long, env = "KILN_NATS_CA", value_name = "FILE")]
    nats_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (with --nats-key).
    #[arg(
        long,
        env = "KILN_NATS_CERT",
        value_name = "FILE",
        requires = "nats_key"
    )]
    nats_cert: Option<PathBuf>,
    /// PEM key of --nats-cert.
    #[arg(
        long,
        env = "KILN_NATS_KEY",
        value_name = "FILE",
        requires = "nats_cert"
    )]
    nats_key: Option<PathBuf>,
    /// Replicas of every stream, KV bucket and object store kiln creates; ones with fewer
    /// are raised [default: the servers in the cluster, at most 3; 1 on a single server].
    #[arg(long, env = "KILN_NATS_REPLICAS", value_name = "N", value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: Option<u8>,
}

impl NatsArgs {
    /// Connects, making sure every stream and bucket exists: a command gives up after
    /// --nats-timeout, a worker (`forever`) keeps retrying.
    async fn connect(&self, forever: bool) -> Result<kiln_queue::Queue> {
        use kiln_queue::nats::{Credentials, NatsOptions, Patience, Secret, Tls};
        let credentials = match (
            &self.nats_user,
            &self.nats_password,
            &self.nats_token,
            &self.nats_nkey,
            &self.nats_creds,
        ) {
            (Some(user), Some(password), ..) => Credentials::UserPassword {
                user: user.clone(),
                password: Secret::new(password.as_str()),
            },
            (_, _, Some(token), ..) => Credentials::Token(Secret::new(token.as_str())),
            (_, _, _, Some(seed), _) => Credentials::NKeySeedFile(seed.clone()),
            (.., Some(creds)) => Credentials::CredsFile(creds.clone()),
            _ => Credentials::None,
        };
        let options = NatsOptions {
            credentials,
            tls: Tls {
                ca_file: self.nats_ca.clone(),
                client_cert: self.nats_cert.clone().zip(self.nats_key.clone()),
            },
            timeout: std::time::Duration::from_secs(self.nats_timeout),
            patience: if forever {
                Patience::Forever
            } else {
                Patience::GiveUp
            },
            replicas: self.replicas.map(usize::from),
            ..NatsOptions::new(self.nats.as_str())
        };
        Ok(kiln_queue::Queue::connect_with(&options).await?)
    }
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

/// `KILN_LOG` [default: warn]; async-nats never at trace level, where it logs the CONNECT
/// message with the NATS credentials in it.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    match filter.max_level_hint() {
        Some(level) if level < tracing::level_filters::LevelFilter::TRACE => filter,
        _ => filter.add_directive("async_nats=debug".parse().expect("a directive")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_env_filter(log_filter())
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
        Command::Dev(args) => dev::run(args),
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
            let built = Built::unrecorded(store, desc, base.manifest);
            publish_base(&built, layout.as_deref(), &tag, to.as_deref(), &registry)
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
        Command::Publish(args) => light::publish(args),
        Command::Light(command) => light::run(command),
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
            publish_base(&built, layout.as_deref(), &tag, to.as_deref(), &registry)
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
        let queue = args.nats.connect(true).await?;
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
            opts.name, queue.servers, opts.jobs
        );
        kiln_queue::worker::run(queue, opts, metrics, shutdown).await?;
        Ok(())
    })
}

fn submit(args: SubmitArgs) -> Result<()> {
    let scratch = cache_dir(args.common.cache_dir)?.join("submit");
    // The project's base travels in the job: the worker resolves it like --base.
    let base = match args.base {
        Some(base) => Some(base),
        None => ProjectConfig::load(&args.dir)?.base,
    };
    let submission = kiln_queue::submit::Submission {
        dir: args.dir,
        app: args.app,
        runtime: args.runtime,
        base,
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
        let queue = args.nats.connect(false).await?;
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
        let timeout = std::time::Duration::from_secs(args.timeout_secs);
        let revision = kiln_queue::submit::wait(&queue, events, &job, timeout, |event| {
            eprintln!("{}", event.kind)
        })
        .await?;
        print_revision(&revision, args.json)
    })
}

fn rebase(args: RebaseArgs) -> Result<()> {
    let platform = args.registry_args.platform()?;
    let cache_dir = cache_dir(args.common.cache_dir.clone())?;
    let registry = args.registry_args.registry();
    runtime()?.block_on(async move {
        let queue = args.nats.connect(false).await?;
        let store = kiln_layers::BlobStore::open_or_create(&cache_dir)?;
        if let (Some(runtime), Some(to)) = (&args.runtime, &args.to) {
            let request = kiln_queue::rebase_all::Request {
                runtime,
                to,
                timeout: std::time::Duration::from_secs(args.timeout_secs),
            };
            let outcome =
                kiln_queue::rebase_all::run(&queue, &registry, &store, &platform, &request, |p| {
                    eprintln!("{p}")
                })
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&outcome.rebased)?);
            }
            if !outcome.failed.is_empty() {
                bail!("{} rebase jobs failed", outcome.failed.len());
            }
            return Ok(());
        }
        let app = args.app.as_deref().expect("clap requires APP");
        let base = args
            .runtime_base
            .as_deref()
            .context("give --runtime-base REF")?;
        let revision = args.revision.as_deref();
        let kiln_queue::rebase::Rebased { old, new } = kiln_queue::rebase::rebase_app(
            &queue, &registry, &store, &platform, app, revision, base,
        )
        .await?;
        eprintln!(
            "{} -> {}: {} on {}",
            old.name, new.name, new.image, new.base
        );
        print_revision(&new, args.json)
    })
}

/// Prints a new revision: its name, or with `json` the whole record.
fn print_revision(revision: &kiln_queue::Revision, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(revision)?);
    } else {
        println!("{}", revision.name);
    }
    Ok(())
}

fn traffic(app: &str, op: kiln_queue::traffic::Operation, out: &ServiceOut) -> Result<()> {
    runtime()?.block_on(async move {
        let queue = out.nats.connect(false).await?;
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
    use kiln_queue::display::{revisions_json, revisions_table};
    runtime()?.block_on(async move {
        let queue = args.nats.connect(false).await?;
        let all = kiln_queue::revisions::list(&queue, &args.app).await?;
        let traffic = kiln_queue::traffic::current(&queue, &args.app).await?;
        if args.json {
            let json = revisions_json(&all, &traffic);
            println!("{}", serde_json::to_string_pretty(&json)?);
            return Ok(());
        }
        if all.is_empty() {
            bail!("app {:?} has no revisions", args.app);
        }
        print!("{}", revisions_table(&all, &traffic));
        Ok(())
    })
}

/// Publishes `built` to `destinations`, saying what each one got.
fn publish(
    built: &Built,
    destinations: &[Destination],
    registry: &RegistryArgs,
    display: &Display,
) -> Result<Vec<Published>> {
    for destination in destinations {
        if let Destination::Registry(reference) = destination {
            display.begin(&format!("push: {reference}"));
        }
    }
    // The async runtime and the registry client only when something is pushed.
    let pushes = destinations
        .iter()
        .any(|d| matches!(d, Destination::Registry(_)));
    let rt = if pushes { Some(runtime()?) } else { None };
    let published = kiln_builder::publish(built, destinations, |reference| {
        let rt = rt.expect("a runtime for pushes");
        kiln_builder::destination::push_with(built, &registry.registry(), rt.handle())(reference)
    });
    display.finish();
    let published = published?;
    for done in &published {
        match &done.pushed {
            None => display.line(&format!("wrote {}", done.destination)),
            Some(p) => display.line(&format!(
                "pushed {}: {} blobs present, {} mounted, {} uploaded ({} bytes)",
                p.reference, p.present, p.mounted, p.uploaded, p.uploaded_bytes
            )),
        }
    }
    Ok(published)
}

/// Writes a base or runtime base to a layout and/or pushes it, then prints its digest.
fn publish_base(
    built: &Built,
    layout: Option<&std::path::Path>,
    tag: &str,
    to: Option<&str>,
    registry: &RegistryArgs,
) -> Result<()> {
    let mut destinations: Vec<Destination> = layout
        .map(|dir| Destination::Layout {
            dir: dir.to_owned(),
            tag: tag.to_owned(),
        })
        .into_iter()
        .collect();
    destinations.extend(to.map(|r| Destination::Registry(r.to_owned())));
    publish(built, &destinations, registry, &Display::Plain)?;
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

/// The base named on the command line (or in the project config); a registry base is pulled
/// into the cache first.
fn base_source(
    base: Option<&str>,
    args: &RegistryArgs,
    cache_dir: &std::path::Path,
) -> Result<BaseSource> {
    let Some(reference) = base else {
        return Ok(BaseSource::Host(None));
    };
    let base = BaseRef::parse(reference)?;
    let store = kiln_layers::BlobStore::open_or_create(cache_dir)?;
    let (registry, platform) = (args.registry(), args.platform()?);
    Ok(runtime()?.block_on(base.resolve(&registry, &platform, &store))?)
}

fn build(args: BuildArgs) -> Result<()> {
    if args.layout.is_none() && args.tarball.is_none() && args.image.is_none() {
        bail!("nothing to write: give --image REF, --layout DIR and/or --tarball FILE");
    }
    if let Some(image) = &args.image {
        kiln_builder::registry::parse_reference(image)?;
    }
    let cache_dir = cache_dir(args.common.cache_dir)?;
    let config = ProjectConfig::load(&args.dir)?;
    let base = base_source(
        args.base
            .as_ref()
            .or(config.base.as_ref())
            .map(String::as_str),
        &args.registry,
        &cache_dir,
    )?;
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
        workspace: args.workspace,
        build_script: match (args.no_build, args.build_script) {
            (true, _) => BuildScript::Off,
            (false, Some(name)) => BuildScript::Named(name),
            (false, None) => BuildScript::Auto,
        },
    };
    let display = Display::new(args.json);
    let built = kiln_builder::build(&request, &display);
    display.finish();
    let built: Built = built?;
    let mut destinations = Vec::new();
    if let Some(path) = args.tarball.clone() {
        let tag = tag.clone();
        destinations.push(Destination::Archive { path, tag });
    }
    if let Some(dir) = args.layout.clone() {
        let tag = tag.clone();
        destinations.push(Destination::Layout { dir, tag });
    }
    destinations.extend(args.image.clone().map(Destination::Registry));
    let published = publish(&built, &destinations, &args.registry, &display)?;
    if args.json {
        let result = serde_json::json!({ "built": {
            "digest": built.manifest.digest,
            "runtime": built.runtime,
            "base": built.base_name,
            "layers": built.layers,
            "published": published,
        }});
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!("{}", built.manifest.digest);
    }
    Ok(())
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
