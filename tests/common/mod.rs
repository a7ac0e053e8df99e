//! Helpers shared by the end-to-end tests: running kiln, unpacking and running images, and
//! the real servers (docker-registry) and a fault-injecting proxy on loopback.
#![allow(dead_code)]

pub mod image;
pub mod light;
pub mod nats;
pub mod proxy;
pub mod registry;
pub mod secrets;
pub mod token;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use kiln_layers::{BlobStore, validate::validate_layout};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A cache shared by the tests (the host base is built once), npm offline on the fixture cache.
pub fn kiln(args: &[&str], npm_cache: &Path) -> Output {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-cache");
    kiln_cmd(&cache, npm_cache)
        .args(args)
        .output()
        .expect("run kiln")
}

/// `kiln` with its own cache directory and npm offline on `npm_cache`.
pub fn kiln_cmd(cache: &Path, npm_cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.env("KILN_CACHE_DIR", cache)
        .env("npm_config_cache", npm_cache)
        .env("npm_config_offline", "true")
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// The generated apps and their npm cache: `$KILN_REAL_APPS`, else `target/real-apps`
/// (`.ci/run` makes them; by hand: `fixtures/real-apps/make.sh target/real-apps`).
pub fn real_apps() -> PathBuf {
    let dir = std::env::var_os("KILN_REAL_APPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/real-apps"));
    assert!(
        dir.join("npm-cache").is_dir(),
        "no generated apps in {}: run fixtures/real-apps/make.sh {} first (it needs the npm registry)",
        dir.display(),
        dir.display()
    );
    dir
}

/// The lockfile fixtures and their caches: `$KILN_LOCKFILES`, else `target/lockfiles`
/// (`.ci/run` makes them; by hand: `fixtures/lockfiles/make.sh target/lockfiles`).
pub fn lockfiles() -> PathBuf {
    let dir = std::env::var_os("KILN_LOCKFILES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/lockfiles"));
    assert!(
        dir.join("npm-cache").is_dir(),
        "no lockfile fixtures in {}: run fixtures/lockfiles/make.sh {} first (it needs the npm registry)",
        dir.display(),
        dir.display()
    );
    dir
}

/// A private copy of the vendored npm cache (npm writes into its cache).
pub fn npm_cache(tmp: &Path) -> PathBuf {
    let dest = tmp.join("npm-cache");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(root().join("fixtures/npm-cache"))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(ok.success());
    dest
}

pub fn build(fixture: &Path, layout: &Path, tag: &str, npm: &Path) -> String {
    let out = kiln(
        &[
            "build",
            fixture.to_str().unwrap(),
            "--layout",
            layout.to_str().unwrap(),
            "--tag",
            tag,
        ],
        npm,
    );
    assert!(
        out.status.success(),
        "kiln build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "stdout {digest:?}"
    );
    validate_layout(&BlobStore::open(layout).unwrap()).expect("image validates");
    digest
}

/// skopeo reads it, umoci unpacks it; returns the bundle directory.
pub fn unpack(layout: &Path, tag: &str, tmp: &Path) -> PathBuf {
    let inspect = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:{tag}", layout.display()))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let bundle = tmp.join("bundle");
    let unpack = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        unpack.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    bundle
}

/// Runs the unpacked image like a runtime would (chroot, workdir, image user, image env).
pub struct Running {
    pub child: Child,
    pub port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `unshare` running the unpacked image in `bundle` as a container runtime would: its
/// rootfs, working directory, non-root user, entrypoint and environment, `PORT=port`;
/// `unshare_options` go before the image's command.
pub fn image_command(bundle: &Path, port: u16, unshare_options: &[&str]) -> Command {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let process = &config["process"];
    let (uid, gid) = (
        process["user"]["uid"].as_u64().unwrap(),
        process["user"]["gid"].as_u64().unwrap(),
    );
    assert_ne!(uid, 0, "image runs as root");
    let mut cmd = Command::new("unshare");
    cmd.args(unshare_options)
        .arg(format!("--root={}", bundle.join("rootfs").display()))
        .arg(format!("--wd={}", process["cwd"].as_str().unwrap()))
        .arg(format!("--setuid={uid}"))
        .arg(format!("--setgid={gid}"))
        .arg("--")
        .args(
            process["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap()),
        )
        .env_clear();
    for kv in process["env"].as_array().unwrap() {
        let (k, v) = kv.as_str().unwrap().split_once('=').unwrap();
        cmd.env(k, v);
    }
    cmd.env("PORT", port.to_string());
    cmd
}

pub fn run(bundle: &Path) -> Running {
    let port = free_port();
    let mut cmd = image_command(bundle, port, &[]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let running = Running {
        child: cmd.spawn().unwrap(),
        port,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return running;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("image did not listen on $PORT");
}

/// `(status, body)` of an HTTP request to the running image.
pub fn http(app: &Running, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-m",
        "5",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ])
    .arg(format!("http://127.0.0.1:{}{path}", app.port));
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data", b]);
    }
    let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

pub fn layer_paths(bundle: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(bundle.join("rootfs/app"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copies `reference` from a plain-HTTP registry into an OCI layout with skopeo (a client
/// nobody here wrote), unpacks it with umoci and returns the bundle directory.
pub fn pull_and_unpack(reference: &str, creds: Option<&str>, tmp: &Path) -> PathBuf {
    std::fs::create_dir_all(tmp).unwrap();
    let layout = tmp.join("pulled");
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--src-tls-verify=false"]);
    if let Some(creds) = creds {
        cmd.arg(format!("--src-creds={creds}"));
    }
    let out = cmd
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:pulled", layout.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    validate_layout(&BlobStore::open(&layout).unwrap()).expect("pulled image validates");
    unpack(&layout, "pulled", tmp)
}

/// `skopeo inspect` of a reference in a plain-HTTP registry, as JSON.
pub fn skopeo_inspect(reference: &str, raw: bool) -> serde_json::Value {
    skopeo_inspect_as(reference, raw, None)
}

/// [`skopeo_inspect`] with `user:password` credentials when given.
pub fn skopeo_inspect_as(reference: &str, raw: bool, creds: Option<&str>) -> serde_json::Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if raw {
        cmd.arg("--raw");
    }
    if let Some(creds) = creds {
        cmd.arg(format!("--creds={creds}"));
    }
    let out = cmd.arg(format!("docker://{reference}")).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The layer cache shared by the tests of one `cargo test` run (the host base is built once).
pub fn shared_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-cache")
}

/// `kiln build DIR --base BASE --image IMAGE` for the plain-HTTP registry `addr`, with `env`.
pub fn push_dir(dir: &Path, base: &str, image: &str, npm: &Path, env: &[(&str, &str)]) -> Output {
    let addr = image.split('/').next().unwrap();
    let mut cmd = kiln_cmd(&shared_cache(), npm);
    cmd.arg("build").arg(dir).args([
        "--base",
        base,
        "--image",
        image,
        "--insecure-registry",
        addr,
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The image digest a successful build printed.
pub fn pushed_digest(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{err}");
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{what}: stdout {digest:?}");
    digest
}

/// Pushes the host base to `<registry>/base/node:20` (with `env` for kiln, e.g. credentials)
/// and returns that reference.
pub fn push_host_base(registry: &str, npm: &Path, env: &[(&str, &str)]) -> String {
    let base = format!("{registry}/base/node:20");
    let mut cmd = kiln_cmd(&shared_cache(), npm);
    cmd.args(["base", "from-host", "--to", &base])
        .args(["--insecure-registry", registry]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "base from-host --to {base}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    base
}

/// A copy of `fixtures/faas-hello` at `tmp/<name>` with one more function,
/// `functions/<function>.js`, answering `{ "<key>": <value> }`.
pub fn faas_variant(tmp: &Path, name: &str, function: &str, key: &str, value: &str) -> PathBuf {
    let dir = tmp.join(name);
    let ok = Command::new("cp")
        .arg("-r")
        .arg(root().join("fixtures/faas-hello"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(
        dir.join(format!("functions/{function}.js")),
        format!("module.exports = async () => ({{ {key}: {value:?} }});\n"),
    )
    .unwrap();
    dir
}

/// A two-thread async runtime for talking to NATS from a test.
pub fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A build job submission of `dir` as `app` with job id `job_id`.
pub fn submission(dir: PathBuf, app: &str, job_id: &str) -> kiln_queue::submit::Submission {
    kiln_queue::submit::Submission {
        dir,
        app: app.into(),
        runtime: None,
        base: None,
        env: vec![],
        job_id: Some(job_id.into()),
        deploy: Default::default(),
    }
}

/// A `kiln worker` process, killed on drop.
pub struct TestWorker {
    /// The process.
    pub child: std::process::Child,
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kiln worker` on `nats` pushing to the plain-HTTP `registry`, with default base
/// `base`, its own `cache`, fast registry retries, `args` (ack wait, jobs, …) and its stderr
/// going to `stderr`.
pub fn start_worker(
    nats: &str,
    registry: &str,
    base: &str,
    cache: &Path,
    npm: &Path,
    args: &[&str],
    stderr: Stdio,
) -> TestWorker {
    let mut cmd = kiln_cmd(cache, npm);
    cmd.args(["worker", "--nats", nats, "--registry", registry])
        .args(["--insecure-registry", registry, "--base", base])
        .args(args)
        .env("KILN_REGISTRY_BACKOFF_MS", "50")
        .stdout(Stdio::null())
        .stderr(stderr);
    TestWorker {
        child: cmd.spawn().unwrap(),
    }
}

/// Base64 of `bytes`: the standard alphabet with padding, or (`url`) the URL-safe one without.
pub fn base64(bytes: &[u8], url: bool) -> String {
    let alphabet: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if !url {
                out.push('=');
            }
        }
    }
    out
}
