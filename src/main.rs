//! `kiln`: builds reproducible OCI images for Node.js apps without a Docker daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
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
    /// Build an app directory into an OCI layout and/or an OCI archive; prints the digest.
    Build(BuildArgs),
    /// Base images.
    #[command(subcommand)]
    Base(BaseCommand),
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The app's source directory.
    dir: PathBuf,
    /// Runtime: faas, sma or app (detected when absent).
    #[arg(long)]
    runtime: Option<String>,
    /// Base image as `oci:DIR:TAG` (a local OCI layout); default: made from the host's node.
    #[arg(long)]
    base: Option<String>,
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
    common: Common,
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
        layout: PathBuf,
        /// Reference name in the layout.
        #[arg(long, default_value = "node")]
        tag: String,
        #[command(flatten)]
        common: Common,
    },
}

fn main() -> ExitCode {
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
            common,
        }) => {
            let cache_dir = cache_dir(common.cache_dir)?;
            let store = kiln_layers::BlobStore::open_or_create(&cache_dir)?;
            let (name, desc, _) = kiln_builder::host_base::host_base(&store, node.as_deref())?;
            let base = kiln_builder::image::Base::load(&store, &name, desc.clone())?;
            output::write_layout(&Built::new(store, desc, &base.manifest), &layout, &tag)?;
            println!("{}", base.descriptor.digest);
            Ok(())
        }
    }
}

fn build(args: BuildArgs) -> Result<()> {
    if args.layout.is_none() && args.tarball.is_none() {
        bail!("nothing to write: give --layout DIR and/or --tarball FILE");
    }
    let base = match args.base.as_deref() {
        None => BaseSource::Host(None),
        Some(reference) => {
            let rest = reference.strip_prefix("oci:").with_context(|| {
                format!("base {reference:?}: only oci:DIR:TAG (a local OCI layout) is supported")
            })?;
            let (path, tag) = rest
                .split_once(':')
                .with_context(|| format!("base {reference:?}: expected oci:DIR:TAG"))?;
            BaseSource::Layout {
                path: path.into(),
                tag: tag.into(),
            }
        }
    };
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
        cache_dir: cache_dir(args.common.cache_dir)?,
    };
    let progress = |step: Step| eprintln!("{step}");
    let built: Built = kiln_builder::build(&request, &progress)?;
    if let Some(layout) = &args.layout {
        output::write_layout(&built, layout, &tag)
            .with_context(|| format!("writing OCI layout {}", layout.display()))?;
        eprintln!("wrote {}:{tag}", layout.display());
    }
    if let Some(tarball) = &args.tarball {
        output::write_archive(&built, tarball, &tag)
            .with_context(|| format!("writing OCI archive {}", tarball.display()))?;
        eprintln!("wrote {}", tarball.display());
    }
    println!("{}", built.manifest.digest);
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
