//! `kiln`: builds reproducible OCI images for Node.js apps without a Docker daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kiln_builder::pull::{host_platform, parse_platform, pull_image};
use kiln_builder::push::{Pushed, push_image};
use kiln_builder::registry::{Registry, RegistryOptions, RetryPolicy};
use kiln_builder::{BaseSource, BuildRequest, Built, Step, output};

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
}

impl RegistryArgs {
    fn registry(&self) -> Registry {
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
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
    let platform = match &args.platform {
        Some(p) => parse_platform(p)?,
        None => host_platform(),
    };
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
