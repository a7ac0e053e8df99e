//! `kiln dev DIR`: runs an app on this machine with the same runtime JavaScript its image
//! runs (the catalog embedded in this binary), restarts it when its files change, and points
//! at the page listing what it serves. One dev loop for every runtime (faas, sma, sma-light,
//! app).
//!
//! - **Runtime.** Chosen as `kiln build` chooses it ([`kiln_builder::build::runtime_for`]):
//!   `--runtime`, else the project config's, else detected. Its files are written to a
//!   temporary directory laid out as in the image (`kiln/runtime/<name>/…`, so
//!   `../common/http.js` resolves), and the machine's `node` runs its entrypoint with the
//!   working directory DIR and the environment of `kiln dev` plus the project config's `env`,
//!   then `--env`, then `PORT` and `KILN_DEV=1`. For `app`, `--start` or `kiln.start` is
//!   passed as `KILN_START`, as the image gets it; otherwise the launcher reads
//!   `scripts.start` itself (devDependencies are installed in dev, so the build's
//!   `start:prod` fallback does not apply). The config is read again at every start.
//! - **Reload.** Every 300 ms the tree is listed with the build's rules (`node_modules`,
//!   `.git`, `.env*`, `.npmrc` and the `.kilnignore` / `.dockerignore` rules left out, so a log
//!   file the app writes into an ignored path restarts nothing) and compared by size, mtime,
//!   ctime and inode. A change restarts node: SIGTERM to its process group (node runs in a
//!   group of its own, so whatever it started stops too), SIGKILL after 5 s. A crash prints
//!   the exit status and waits for the next change.
//! - **Output.** The app's stdout and stderr pass through; kiln dev's own lines go to stderr:
//!   the runtime and why, then, once the port accepts connections, `serving <runtime> app DIR
//!   at http://127.0.0.1:<port>/` and `what is served: <url>/kiln/dev`; after a restart only
//!   `serving again at http://127.0.0.1:<port>/`.
//! - **What is served.** Under `KILN_DEV=1` the faas, sma and sma-light runtimes answer
//!   `GET /kiln/dev` (HTML) and `/kiln/dev.json` on the app's port. The `app` runtime hands
//!   `$PORT` to the user's own server, where nothing can be added without a proxy in between;
//!   so its launcher serves the listing (the start command it chose and the app's URL) on a
//!   second loopback port that kiln dev picks and passes as `KILN_DEV_PORT`, and that is the
//!   URL printed. The listing comes from the code that chose the command, and the app's port
//!   stays the app's alone.
//! - **Stopping.** SIGINT (Ctrl-C) or SIGTERM stops node and its group, and kiln dev exits
//!   with success.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kiln_builder::image_config::parse_env;
use kiln_builder::project::ProjectConfig;
use kiln_layers::SourceTree;
use kiln_layers::source::ScanOptions;
use kiln_runtimes::{RUNTIME_ROOT, Runtime};
use rustix::process::{Pid, Signal, kill_process_group};

/// How often the tree is listed for changes.
const POLL: Duration = Duration::from_millis(300);
/// How long node has to stop after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
/// After this long without an answer on the port, say so once.
const SLOW_START: Duration = Duration::from_secs(10);

/// `kiln dev` options.
#[derive(clap::Args)]
pub struct DevArgs {
    /// The app's source directory.
    dir: PathBuf,
    /// Runtime: faas, sma, sma-light or app [default: the project config's, else detected, as
    /// `kiln build` does].
    #[arg(long)]
    runtime: Option<String>,
    /// Port the app listens on ($PORT) [default: the runtime's, 8080].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Extra environment for the app, `KEY=value` (repeatable), over the project config's.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Start command of an `app` [default: `kiln.start`, else `scripts.start`, else `main` /
    /// index.js / server.js / app.js].
    #[arg(long)]
    start: Option<String>,
}

/// What one start of the app runs: decided again at every start.
struct Plan {
    runtime: Runtime,
    reason: String,
    env: Vec<(String, String)>,
}

/// Runs the app in `args.dir` until SIGINT or SIGTERM, restarting it on every change.
pub fn run(args: DevArgs) -> Result<()> {
    let dir = match std::fs::metadata(&args.dir) {
        Ok(m) if m.is_dir() => args
            .dir
            .canonicalize()
            .with_context(|| format!("app directory {}", args.dir.display()))?,
        Ok(_) => bail!("{} is not a directory", args.dir.display()),
        Err(e) => bail!("app directory {} does not exist ({e})", args.dir.display()),
    };
    parse_env(&args.env)?;
    let node = find_node()?;
    let first = plan(&dir, &args)?;
    let port = args.port.unwrap_or(first.runtime.port);
    if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_err() {
        bail!("port {port} is in use: stop what listens there or give --port N");
    }
    let dev_port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .context("finding a free port for the dev listing")?
        .port();
    let scratch = tempfile::Builder::new()
        .prefix("kiln-dev-")
        .tempdir()
        .context("creating a directory for the runtime files")?;
    let stop = on_signals()?;
    let mut dev = Dev {
        shown_dir: args.dir.display().to_string(),
        dir,
        args,
        node,
        scratch: scratch.path().to_owned(),
        port,
        dev_port,
        running: None,
        runtime: None,
        announced: false,
    };
    let mut watch = Watch::default();
    watch.scan(&dev.dir, &dev.shown_dir);
    dev.start();
    let mut last_scan = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if last_scan.elapsed() >= POLL {
            last_scan = Instant::now();
            if let Some(what) = watch.scan(&dev.dir, &dev.shown_dir) {
                eprintln!("changed: {what}, restarting");
                dev.stop();
                dev.start();
            }
        }
        dev.check();
        std::thread::sleep(Duration::from_millis(50));
    }
    dev.stop();
    eprintln!("kiln dev: stopped");
    Ok(())
}

/// The dev loop's state.
struct Dev {
    /// The app directory, absolute.
    dir: PathBuf,
    /// The directory as given, for messages.
    shown_dir: String,
    args: DevArgs,
    node: PathBuf,
    /// Where the runtime files are written.
    scratch: PathBuf,
    port: u16,
    /// The `app` runtime's listing port (`KILN_DEV_PORT`).
    dev_port: u16,
    running: Option<Running>,
    /// The runtime of the last start, to say when it changes.
    runtime: Option<String>,
    /// Whether the full "serving" lines were printed.
    announced: bool,
}

/// A started node process.
struct Running {
    child: Child,
    runtime: String,
    started: Instant,
    /// Whether the port answered since the start.
    up: bool,
    warned: bool,
}

impl Dev {
    /// Starts node; a problem (a broken package.json, say) is printed and waits for a change.
    fn start(&mut self) {
        match self.spawn() {
            Ok(running) => self.running = Some(running),
            Err(err) => eprintln!("kiln dev: cannot start the app: {err:#}; waiting for a change"),
        }
    }

    fn spawn(&mut self) -> Result<Running> {
        let plan = plan(&self.dir, &self.args)?;
        let name = plan.runtime.name.clone();
        if self.runtime.as_ref() != Some(&name) {
            eprintln!("runtime: {name} ({})", plan.reason);
            self.runtime = Some(name.clone());
        }
        plan.runtime.write_files(&self.scratch)?;
        // The image's entrypoint, with the runtime files where they were written and this
        // machine's node.
        let mut words = plan
            .runtime
            .entrypoint
            .iter()
            .map(|word| match word.strip_prefix('/') {
                Some(rel) if rel.starts_with(RUNTIME_ROOT) => self.scratch.join(rel),
                _ => PathBuf::from(word),
            });
        let program = match words.next() {
            Some(p) if p == Path::new("node") => self.node.clone(),
            Some(p) => p,
            None => bail!("runtime {name} has an empty entrypoint"),
        };
        let mut cmd = Command::new(&program);
        cmd.args(words)
            .current_dir(&self.dir)
            .envs(plan.env)
            .env("PORT", self.port.to_string())
            .env("KILN_DEV", "1")
            .stdin(Stdio::null())
            .process_group(0);
        if name == "app" {
            cmd.env("KILN_DEV_PORT", self.dev_port.to_string());
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("running {}", program.display()))?;
        Ok(Running {
            child,
            runtime: name,
            started: Instant::now(),
            up: false,
            warned: false,
        })
    }

    /// Notices an exit, or the port answering after a start.
    fn check(&mut self) {
        let Some(running) = &mut self.running else {
            return;
        };
        match running.child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                eprintln!("kiln dev: the app exited ({status}); waiting for a change to restart");
                kill_group(&running.child, Signal::KILL);
                self.running = None;
                return;
            }
            Err(err) => {
                eprintln!("kiln dev: cannot wait for the app: {err}");
                return;
            }
        }
        if running.up {
            return;
        }
        let url = format!("http://127.0.0.1:{}/", self.port);
        if answers(self.port) {
            running.up = true;
            if self.announced {
                eprintln!("serving again at {url}");
            } else {
                self.announced = true;
                let listing = match running.runtime.as_str() {
                    "app" => format!("http://127.0.0.1:{}/kiln/dev", self.dev_port),
                    _ => format!("{url}kiln/dev"),
                };
                eprintln!(
                    "serving {} app {} at {url}",
                    running.runtime, self.shown_dir
                );
                eprintln!("what is served: {listing}");
            }
        } else if !running.warned && running.started.elapsed() > SLOW_START {
            running.warned = true;
            eprintln!(
                "kiln dev: nothing answers on port {} yet (does the app listen on $PORT?)",
                self.port
            );
        }
    }

    /// Stops node and its process group: SIGTERM, then SIGKILL after the grace period.
    fn stop(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        kill_group(&running.child, Signal::TERM);
        let deadline = Instant::now() + GRACE;
        loop {
            match running.child.try_wait() {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(Some(_)) => break,
                _ => {
                    kill_group(&running.child, Signal::KILL);
                    let _ = running.child.wait();
                    break;
                }
            }
        }
        // Whatever node started and left behind.
        kill_group(&running.child, Signal::KILL);
    }
}

/// Signals the process group led by `child` (errors such as an empty group are ignored).
fn kill_group(child: &Child, signal: Signal) {
    let _ = kill_process_group(Pid::from_child(child), signal);
}

/// True when something accepts connections on 127.0.0.1:`port`.
fn answers(port: u16) -> bool {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The runtime, its reason and the app's environment, from the project as it is now.
fn plan(dir: &Path, args: &DevArgs) -> Result<Plan> {
    let config = ProjectConfig::read(dir, &read_package(dir)?)?;
    let (runtime, reason) =
        kiln_builder::build::runtime_for(dir, args.runtime.as_deref(), &config)?;
    let configured: Vec<String> = config.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut env = parse_env(&configured)?;
    env.extend(parse_env(&args.env)?);
    if runtime.name == "app"
        && let Some(start) = args.start.as_ref().or(config.start.as_ref())
    {
        env.push((kiln_builder::start::ENV_START.to_owned(), start.clone()));
    }
    Ok(Plan {
        runtime,
        reason,
        env,
    })
}

/// package.json of `dir` (null when there is none).
fn read_package(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("package.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("invalid JSON in {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::Value::Null),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The machine's `node`: the first executable `node` on PATH.
fn find_node() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("node"))
        .find(|file| std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
        .context(
            "node is not on PATH: kiln dev runs the app with this machine's node (install Node.js)",
        )
}

/// A flag set on the first SIGINT or SIGTERM.
fn on_signals() -> Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = Arc::new(AtomicBool::new(false));
    let rt = crate::runtime()?;
    // Registered before returning, so a signal from now on sets the flag.
    let _enter = rt.enter();
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let flag = stop.clone();
    rt.spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        flag.store(true, Ordering::SeqCst);
    });
    Ok(stop)
}

/// The files of an app tree (as the build lists them) with their size and times.
#[derive(PartialEq, Eq)]
struct Snapshot(BTreeMap<String, [i64; 6]>);

impl Snapshot {
    fn take(dir: &Path) -> Result<Snapshot> {
        let tree = SourceTree::scan(dir, &ScanOptions::app())?;
        let files = tree
            .entries()
            .iter()
            .filter(|e| !matches!(e.kind, kiln_layers::source::SourceKind::Dir))
            .map(|e| {
                let stamp = std::fs::symlink_metadata(&e.path).map_or([0; 6], |m| {
                    [
                        m.size() as i64,
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ctime(),
                        m.ctime_nsec(),
                        m.ino() as i64,
                    ]
                });
                (e.rel.clone(), stamp)
            })
            .collect();
        Ok(Snapshot(files))
    }

    /// The first file that changed, was added or removed (and how many more), if any.
    fn changes(&self, now: &Snapshot) -> Option<String> {
        let mut changed = self
            .0
            .iter()
            .filter(|(rel, stamp)| now.0.get(*rel) != Some(stamp))
            .map(|(rel, _)| rel)
            .chain(now.0.keys().filter(|rel| !self.0.contains_key(*rel)));
        let first = changed.next()?;
        Some(match changed.count() {
            0 => first.clone(),
            more => format!("{first} (and {more} more)"),
        })
    }
}

/// The last listing of the app tree, and the last error listing it (said once).
#[derive(Default)]
struct Watch {
    last: Option<Snapshot>,
    error: Option<String>,
}

impl Watch {
    /// Lists the tree; returns what changed since the last listing.
    fn scan(&mut self, dir: &Path, shown_dir: &str) -> Option<String> {
        match Snapshot::take(dir) {
            Ok(now) => {
                self.error = None;
                let what = self.last.as_ref().and_then(|before| before.changes(&now));
                self.last = Some(match what {
                    Some(_) => settle(dir, now),
                    None => now,
                });
                what
            }
            Err(err) => {
                let err = format!("{err:#}");
                if self.error.as_ref() != Some(&err) {
                    eprintln!("kiln dev: cannot list {shown_dir} for changes: {err}");
                    self.error = Some(err);
                }
                None
            }
        }
    }
}

/// Lists the tree again until two listings agree (an editor writing a file in steps), for
/// up to half a second; returns the last listing.
fn settle(dir: &Path, mut last: Snapshot) -> Snapshot {
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(50));
        match Snapshot::take(dir) {
            Ok(now) if now == last => break,
            Ok(now) => last = now,
            Err(_) => break,
        }
    }
    last
}
