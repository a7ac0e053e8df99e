//! `kiln publish` and `kiln light …`: sma-light versions published onto running instances,
//! and the moves of an app's pointer (rollback, promote, abort), each optionally waiting
//! until every running instance serves the result.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kiln_builder::light_bundle;
use kiln_queue::Queue;
use kiln_queue::light::{self, Pointer};
use tokio::time::Instant;

use crate::NatsArgs;

/// `kiln publish`.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// The app folder: public/, pages/*.js, api/*.js, middleware.js and what they require.
    dir: PathBuf,
    /// The sma-light app to publish onto.
    #[arg(long)]
    app: String,
    /// Send only this percent of sticky keys to the new version (promote or abort later).
    #[arg(long, value_name = "PERCENT")]
    canary: Option<f64>,
    #[command(flatten)]
    wait: WaitArgs,
    /// Skip loading the folder with the runtime (on `node`) before publishing.
    #[arg(long)]
    no_check: bool,
    /// Print the version record (and how the wait went) as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

/// Waiting for the instances.
#[derive(clap::Args)]
pub struct WaitArgs {
    /// Return once every running instance serves the change (or one cannot load it).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    wait_timeout: u64,
}

/// `kiln light …`.
#[derive(clap::Subcommand)]
pub enum LightCommand {
    /// List an app's published versions, which is live and the canary.
    Versions(AppArgs),
    /// List an app's running instances and what each serves.
    Instances(AppArgs),
    /// End a canary in flight; without one, make the version live before the current one
    /// (or --to N) live again. Instances keep recent bundles: no fetch.
    Rollback {
        #[command(flatten)]
        app: AppArgs,
        /// The version to go back to.
        #[arg(long, value_name = "N")]
        to: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete the app's old versions (records, and bundles no kept version of any app
    /// names), keeping the newest N and those live, in canary or previous.
    Prune {
        #[command(flatten)]
        app: AppArgs,
        /// Versions to keep.
        #[arg(long, value_name = "N", default_value_t = 20)]
        keep: usize,
    },
    /// Make the canary live for all traffic.
    Promote {
        #[command(flatten)]
        app: AppArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// End the canary; the live version keeps all traffic.
    Abort {
        #[command(flatten)]
        app: AppArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// An app and the NATS to find it on.
#[derive(clap::Args)]
pub struct AppArgs {
    /// App name.
    app: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

/// Packs, checks, stores and points the app at a new version.
pub fn publish(args: PublishArgs) -> Result<()> {
    let dir = &args.dir;
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let bundle = light_bundle::pack(dir)?;
    eprintln!(
        "packed {} files into {} bytes ({})",
        bundle.files,
        bundle.bytes.len(),
        bundle.digest
    );
    let routes = if args.no_check {
        serde_json::Value::Null
    } else {
        let routes = light_bundle::check(dir, &bundle)?;
        eprintln!("loads: {routes}");
        routes
    };
    crate::runtime()?.block_on(async {
        let queue = args.nats.connect(false).await?;
        let since = Instant::now();
        let published = light::publish(&queue, &args.app, &bundle, routes, args.canary).await?;
        let record = &published.record;
        eprintln!(
            "{} version {}{}: {}",
            args.app,
            record.version,
            if published.uploaded {
                ""
            } else {
                " (bundle already stored)"
            },
            describe(&published.moved.pointer)
        );
        let live = wait(&queue, &args.app, &published.moved, since, &args.wait).await?;
        if args.json {
            let mut out =
                serde_json::json!({ "version": record, "pointer": published.moved.pointer });
            if let Some(live) = &live {
                out["live"] = serde_json::json!({
                    "instances": live.instances,
                    "millis": live.elapsed.as_millis(),
                });
            }
            println!("{out}");
        } else {
            println!("{} {} {}", args.app, record.version, record.digest);
        }
        Ok(())
    })
}

/// Runs a `kiln light` command.
pub fn run(command: LightCommand) -> Result<()> {
    crate::runtime()?.block_on(async {
        match command {
            LightCommand::Versions(a) => {
                let queue = a.nats.connect(false).await?;
                let (pointer, records) = light::versions(&queue, &a.app).await?;
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({ "pointer": pointer, "versions": records })
                    );
                    return Ok(());
                }
                if records.is_empty() {
                    bail!("{} has no published version", a.app);
                }
                for r in records {
                    let mark = match &pointer {
                        Some(p) if p.live.version == r.version => "live".to_owned(),
                        Some(Pointer {
                            canary: Some(c), ..
                        }) if c.version == r.version => format!("canary {}%", c.percent),
                        _ => String::new(),
                    };
                    println!(
                        "{:>4}  {}  {}  {:>5} files  {}",
                        r.version, r.published_at, r.digest, r.files, mark
                    );
                }
                Ok(())
            }
            LightCommand::Instances(a) => {
                let queue = a.nats.connect(false).await?;
                let found = light::instances(&queue, &a.app).await?;
                if a.json {
                    println!("{}", serde_json::to_string(&found)?);
                    return Ok(());
                }
                for p in found {
                    let live = p.live.as_ref().map_or(0, |t| t.version);
                    let canary = p
                        .canary
                        .map(|c| format!(", canary {} at {}%", c.version, c.percent))
                        .unwrap_or_default();
                    let failed = p
                        .failed
                        .map(|f| format!(" (version {} failed: {})", f.version, f.error))
                        .unwrap_or_default();
                    println!("{}  version {live}{canary}{failed}", p.instance);
                }
                Ok(())
            }
            LightCommand::Rollback { app, to, wait: w } => {
                moved(&app, &w, |q, name| async move {
                    light::rollback(&q, &name, to).await
                })
                .await
            }
            LightCommand::Prune { app, keep } => {
                let queue = app.nats.connect(false).await?;
                let pruned = light::prune(&queue, &app.app, keep).await?;
                if app.json {
                    println!(
                        "{}",
                        serde_json::json!({ "versions": pruned.versions, "bundles": pruned.bundles })
                    );
                } else {
                    println!(
                        "{}: deleted {} version record(s) and {} bundle(s)",
                        app.app,
                        pruned.versions.len(),
                        pruned.bundles.len()
                    );
                }
                Ok(())
            }
            LightCommand::Promote { app, wait: w } => {
                moved(&app, &w, |q, name| async move {
                    light::promote(&q, &name).await
                })
                .await
            }
            LightCommand::Abort { app, wait: w } => {
                moved(
                    &app,
                    &w,
                    |q, name| async move { light::abort(&q, &name).await },
                )
                .await
            }
        }
    })
}

/// Moves the pointer with `change`, prints it, and waits as asked.
async fn moved<F, Fut>(app: &AppArgs, w: &WaitArgs, change: F) -> Result<()>
where
    F: FnOnce(Queue, String) -> Fut,
    Fut: std::future::Future<Output = Result<light::Moved, light::publish::LightError>>,
{
    let queue = app.nats.connect(false).await?;
    let since = Instant::now();
    let moved = change(queue.clone(), app.app.clone()).await?;
    wait(&queue, &app.app, &moved, since, w).await?;
    if app.json {
        println!("{}", serde_json::to_string(&moved.pointer)?);
    } else {
        println!("{} {}", app.app, describe(&moved.pointer));
    }
    Ok(())
}

/// What `pointer` holds, in words: `live 3` or `live 3, canary 4 at 10%`.
fn describe(pointer: &Pointer) -> String {
    let canary = pointer
        .canary
        .as_ref()
        .map(|c| format!(", canary {} at {}%", c.version, c.percent))
        .unwrap_or_default();
    format!("live {}{canary}", pointer.live.version)
}

/// With --wait, waits for every running instance to serve `pointer` and says how long
/// that took; an instance that cannot load it is an error (it keeps serving what it did).
async fn wait(
    queue: &Queue,
    app: &str,
    moved: &light::Moved,
    since: Instant,
    w: &WaitArgs,
) -> Result<Option<light::Live>> {
    if !w.wait {
        return Ok(None);
    }
    let live = light::wait_live(
        queue,
        app,
        &moved.pointer,
        moved.revision,
        since,
        Duration::from_secs(w.wait_timeout),
    )
    .await
    .context("waiting for the instances")?;
    if let Some((instance, failed)) = live.failed.first() {
        bail!(
            "version {} did not load on {} of {} instances (first: {instance}: {}); they keep \
             serving the version they served",
            failed.version,
            live.failed.len(),
            live.instances.len(),
            failed.error
        );
    }
    if live.instances.is_empty() {
        eprintln!("no instance of {app} is running; instances load it when they start");
    } else {
        eprintln!(
            "live on {} instance(s) in {} ms",
            live.instances.len(),
            live.elapsed.as_millis()
        );
    }
    Ok(Some(live))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_queue::light::{Canary, Target};

    #[test]
    fn describe_says_what_the_pointer_holds() {
        let live = Target {
            version: 3,
            digest: "sha256:3".into(),
        };
        let mut pointer = Pointer {
            app: "pages".into(),
            live,
            canary: None,
            previous: None,
        };
        assert_eq!(describe(&pointer), "live 3");
        pointer.canary = Some(Canary {
            version: 4,
            digest: "sha256:4".into(),
            percent: 12.5,
        });
        assert_eq!(describe(&pointer), "live 3, canary 4 at 12.5%");
    }
}
