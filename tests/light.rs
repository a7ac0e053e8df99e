//! sma-light end to end: the runtime image built once (`kiln build --runtime sma-light`),
//! unpacked and run as three instances against a real nats-server, and versions published
//! onto them with `kiln publish` while a client keeps calling all three.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::light::{Instance, get, variant};
use common::nats::TestNats;
use common::nats::cluster::TestCluster;
use common::{kiln, npm_cache, root, unpack};

/// Builds the sma-light runtime image of fixtures/light-pages and unpacks it into `tmp`.
fn runtime_image(tmp: &Path) -> PathBuf {
    let npm = npm_cache(tmp);
    let layout = tmp.join("layout");
    let out = kiln(
        &[
            "build",
            root().join("fixtures/light-pages").to_str().unwrap(),
            "--runtime",
            "sma-light",
            "--layout",
            layout.to_str().unwrap(),
            "--tag",
            "light",
        ],
        &npm,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    unpack(&layout, "light", tmp)
}

/// The runtime image, a nats-server with kiln's buckets made, and `n` instances named
/// `<prefix>1`…: what most tests start from.
struct Setup {
    tmp: tempfile::TempDir,
    image: PathBuf,
    nats: TestNats,
    instances: Vec<Instance>,
}

fn setup(n: usize, prefix: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let image = runtime_image(tmp.path());
    let nats = TestNats::start();
    // Any kiln command makes the buckets; instances expect them.
    assert!(
        kiln_at(&nats.url, &["light", "instances", "pages"])
            .status
            .success()
    );
    let instances = (1..=n)
        .map(|i| {
            Instance::start(
                &image,
                &format!("{prefix}{i}"),
                "pages",
                &nats.url,
                tmp.path(),
            )
        })
        .collect();
    Setup {
        tmp,
        image,
        nats,
        instances,
    }
}

/// Publishes `bundle` with the library (no CLI, no check) and waits for the instances.
async fn publish_bundle(
    queue: &kiln_queue::Queue,
    bundle: &kiln_builder::light_bundle::Bundle,
) -> kiln_queue::light::Live {
    let since = tokio::time::Instant::now();
    let published =
        kiln_queue::light::publish(queue, "pages", bundle, serde_json::Value::Null, None)
            .await
            .unwrap();
    kiln_queue::light::wait_live(
        queue,
        "pages",
        &published.moved.pointer,
        published.moved.revision,
        since,
        Duration::from_secs(30),
    )
    .await
    .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `kiln ARGS --nats URL`, asserting success; returns stderr.
fn light(nats: &str, args: &[&str]) -> String {
    let out = kiln_at(nats, args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\n{}",
        stderr(&out)
    );
    stderr(&out)
}

fn kiln_at(nats: &str, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--nats", nats, "--nats-timeout", "30"]);
    kiln(&all, Path::new("/nonexistent-npm-cache"))
}

fn publish(nats: &str, dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["publish", dir.to_str().unwrap(), "--app", "pages", "--wait"];
    args.extend(extra);
    light(nats, &args)
}

/// The version label `/api/version` answers on `instance`.
fn version_on(instance: &Instance, key: Option<&str>) -> String {
    let headers: Vec<(&str, &str)> = key.map(|k| ("x-kiln-key", k)).into_iter().collect();
    let reply = instance.get("/api/version", &headers).unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    body["version"].as_str().unwrap().to_owned()
}

/// Calls every instance in turn until stopped; counts answers by version and failures.
struct Client {
    stop: Arc<AtomicBool>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    calls: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(ports: Vec<u16>) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicU64::new(0));
        let (s, f, c) = (stop.clone(), failures.clone(), calls.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for &port in &ports {
                    for path in ["/api/version", "/hello?name=x", "/"] {
                        c.fetch_add(1, Ordering::Relaxed);
                        match get(port, path, &[]) {
                            Ok(r) if r.status == 200 => {}
                            Ok(r) => f.lock().unwrap().push(format!("{port}{path}: {r:?}")),
                            Err(e) => f.lock().unwrap().push(format!("{port}{path}: {e}")),
                        }
                    }
                }
            }
        });
        Client {
            stop,
            failures,
            calls,
            thread: Some(thread),
        }
    }

    /// Stops it; returns (calls, failures).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.calls.load(Ordering::Relaxed), failures)
    }
}

#[test]
fn six_versions_go_live_on_three_instances_with_no_failed_request_and_bounded_memory() {
    let Setup {
        tmp,
        image,
        nats,
        instances,
    } = setup(3, "i");
    for instance in &instances {
        assert_eq!(version_on(instance, None), "image", "{}", instance.log());
    }
    let client = Client::start(instances.iter().map(|i| i.port).collect());
    for n in 1..=6 {
        let dir = variant(tmp.path(), &n.to_string());
        let said = publish(&nats.url, &dir, &[]);
        assert!(said.contains("live on 3 instance(s) in"), "{said}");
        // --wait returned: every instance already answers with the new version.
        for instance in &instances {
            assert_eq!(
                version_on(instance, None),
                n.to_string(),
                "{}",
                instance.log()
            );
        }
    }
    let (calls, failures) = client.finish();
    // A published version finds the image's dependencies, and ES modules load too.
    for instance in &instances {
        let ago = instance.get("/api/ago?ms=120000", &[]).unwrap();
        assert!(
            ago.body.contains("2 minutes"),
            "{ago:?}\n{}",
            instance.log()
        );
        let esm = instance.get("/api/esm", &[]).unwrap();
        assert!(esm.body.contains("\"esm\":true"), "{esm:?}");
    }
    assert!(calls > 100, "the client made only {calls} calls");
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );

    // An instance that starts now serves the current version from its first answer.
    let late = Instance::start(&image, "late", "pages", &nats.url, tmp.path());
    assert_eq!(version_on(&late, None), "6", "{}", late.log());
    // Stopped, it takes its record with it at once.
    late.stop();
    let listed = kiln_at(&nats.url, &["light", "instances", "pages", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");

    // 200 more publishes: every old version's worker thread is released, so memory stays
    // within a bound (under 32 MiB of growth per instance; measured: about 7 MiB).
    let before: Vec<u64> = instances.iter().map(Instance::rss_kib).collect();
    let rt = common::tokio_rt();
    rt.block_on(async {
        let queue = kiln_queue::Queue::connect(&nats.url).await.unwrap();
        let dir = variant(tmp.path(), "many");
        for n in 0..200 {
            std::fs::write(
                dir.join("api/version.js"),
                format!("module.exports = async () => ({{ version: 'many-{n}' }});\n"),
            )
            .unwrap();
            let bundle = kiln_builder::light_bundle::pack(&dir).unwrap();
            let live = publish_bundle(&queue, &bundle).await;
            assert_eq!(live.instances.len(), 3, "{live:?}");
            assert!(live.failed.is_empty(), "{live:?}");
        }
    });
    for (instance, before) in instances.iter().zip(before) {
        assert_eq!(version_on(instance, None), "many-199");
        let after = instance.rss_kib();
        eprintln!(
            "{}: RSS {} MiB after 6 publishes, {} MiB after 206",
            instance.name,
            before / 1024,
            after / 1024
        );
        assert!(
            after < before + 32 * 1024,
            "{} grew from {before} KiB to {after} KiB over 200 publishes",
            instance.name
        );
    }
}

#[test]
fn canary_is_sticky_near_its_percent_and_rollback_needs_no_fetch() {
    let Setup {
        tmp,
        image: _,
        nats,
        instances,
    } = setup(2, "c");
    publish(&nats.url, &variant(tmp.path(), "a"), &[]);
    publish(&nats.url, &variant(tmp.path(), "b"), &["--canary", "10"]);

    // 2,000 sticky keys, each asked on both instances.
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for k in 0..2000 {
        let key = format!("user-{k}");
        let first = version_on(&instances[k % 2], Some(&key));
        let again = version_on(&instances[(k + 1) % 2], Some(&key));
        assert_eq!(first, again, "key {key} moved between versions");
        *by_version.entry(first).or_default() += 1;
    }
    let canary = by_version.get("b").copied().unwrap_or(0);
    // 10% of 2,000 is 200; a binomial's standard deviation here is about 13.
    assert!(
        (150..=250).contains(&canary),
        "canary got {canary} of 2000 keys: {by_version:?}"
    );
    assert_eq!(by_version.get("a").copied().unwrap_or(0) + canary, 2000);
    // A request without a key gets one, as a cookie, and keeps its version with it.
    let reply = instances[0].get("/api/version", &[]).unwrap();
    let cookie = reply.header("set-cookie").expect("a sticky key cookie");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let chosen = reply.header("x-kiln-version").unwrap().to_owned();
    for instance in &instances {
        let again = instance
            .get("/api/version", &[("cookie", &cookie)])
            .unwrap();
        assert_eq!(again.header("x-kiln-version"), Some(chosen.as_str()));
    }

    // Promote: the canary serves everyone.
    light(&nats.url, &["light", "promote", "pages", "--wait"]);
    for instance in &instances {
        assert_eq!(version_on(instance, Some("user-1")), "b");
    }
    // Roll back to version 1 with its bundle gone from the store: the instances take it
    // from their own caches.
    let rt = common::tokio_rt();
    rt.block_on(async {
        let queue = kiln_queue::Queue::connect(&nats.url).await.unwrap();
        let (_, records) = kiln_queue::light::versions(&queue, "pages").await.unwrap();
        let first = &records[0];
        let name = format!("sha256-{}", first.digest.trim_start_matches("sha256:"));
        queue.bundles.delete(&name).await.unwrap();
    });
    let said = light(&nats.url, &["light", "rollback", "pages", "--wait"]);
    assert!(said.contains("live on 2 instance(s)"), "{said}");
    for instance in &instances {
        assert_eq!(
            version_on(instance, Some("user-1")),
            "a",
            "{}",
            instance.log()
        );
    }
    let listed = kiln_at(&nats.url, &["light", "instances", "pages", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for p in &listed {
        assert_eq!(p["live"]["version"], 1, "{p}");
        assert_eq!(p["switched"]["fetched"], false, "{p}");
    }
    let versions = kiln_at(&nats.url, &["light", "versions", "pages"]);
    let text = String::from_utf8_lossy(&versions.stdout);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.ends_with("live")),
        "{text}"
    );
}

#[test]
fn a_version_that_cannot_load_is_refused_at_publish_or_left_unserved() {
    let Setup {
        tmp,
        image: _,
        nats,
        mut instances,
    } = setup(1, "b");
    let instance = instances.remove(0);
    publish(&nats.url, &variant(tmp.path(), "good"), &[]);

    let broken = [
        ("syntax", "module.exports = async () => {", "SyntaxError"),
        ("throws", "throw new Error('no config');", "no config"),
        (
            "not-a-function",
            "module.exports = 42;",
            "must export a function",
        ),
    ];
    for (label, source, reason) in broken {
        let dir = variant(tmp.path(), label);
        std::fs::write(dir.join("api/broken.js"), source).unwrap();
        // Refused at publish: no version recorded, the pointer unchanged.
        let args = ["publish", dir.to_str().unwrap(), "--app", "pages", "--wait"];
        let out = kiln_at(&nats.url, &args);
        assert!(!out.status.success(), "{label} was published");
        let err = stderr(&out);
        assert!(
            err.contains("api/broken.js") && err.contains(reason),
            "{label}: {err}"
        );
        assert_eq!(version_on(&instance, None), "good");
    }

    // Published unchecked: the instance cannot load it, keeps serving, and says so.
    let dir = variant(tmp.path(), "unchecked");
    std::fs::write(dir.join("api/broken.js"), "throw new Error('no config');").unwrap();
    let client = Client::start(vec![instance.port]);
    let mut args = vec!["publish", dir.to_str().unwrap(), "--app", "pages"];
    args.extend(["--wait", "--no-check", "--nats", &nats.url]);
    let out = kiln(&args, Path::new("/nonexistent-npm-cache"));
    let (_, failures) = client.finish();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("did not load on 1 of 1 instances") && err.contains("no config"),
        "{err}"
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(version_on(&instance, None), "good");
    let listed = kiln_at(&nats.url, &["light", "instances", "pages", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["failed"]["version"], 2, "{listed:?}");
    // Fixed and published again: served.
    std::fs::remove_file(dir.join("api/broken.js")).unwrap();
    publish(&nats.url, &dir, &[]);
    assert_eq!(version_on(&instance, None), "unchecked");

    // A pointer the KV refuses (a compare-and-set that lost) still reaches subscribers of
    // its subject: the instance must not take it.
    let rt = common::tokio_rt();
    rt.block_on(async {
        let client = async_nats::connect(&nats.url).await.unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", "1");
        let bogus = serde_json::json!({
            "app": "pages",
            "live": { "version": 99, "digest": format!("sha256:{}", "0".repeat(64)) },
        });
        let ack = client
            .request_with_headers("$KV.kiln-light.pages", headers, bogus.to_string().into())
            .await
            .unwrap();
        let ack = String::from_utf8_lossy(&ack.payload).into_owned();
        assert!(ack.contains("wrong last sequence"), "{ack}");
    });
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        let state = instance.get("/kiln/light", &[]).unwrap();
        let state: serde_json::Value = serde_json::from_str(&state.body).unwrap();
        assert_eq!(state["live"]["version"], 3, "{state}");
        assert!(state["failed"].is_null(), "{state}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_request_in_flight_finishes_on_the_version_it_started_on() {
    let Setup {
        tmp,
        image,
        nats,
        mut instances,
    } = setup(1, "s");
    let instance = instances.remove(0);
    // The handler says it has started, then waits for the test's go (files in the
    // instance's /tmp).
    let slow = |label: &str| {
        let dir = variant(tmp.path(), label);
        std::fs::write(
            dir.join("api/slow.js"),
            format!(
                "const fs = require('fs');\n\
                 module.exports = async () => {{\n\
                   fs.writeFileSync('/tmp/slow-entered', '');\n\
                   for (let i = 0; i < 1500 && !fs.existsSync('/tmp/slow-go'); i++) await new Promise((r) => setTimeout(r, 20));\n\
                   return {{ version: {label:?} }};\n\
                 }};\n"
            ),
        )
        .unwrap();
        dir
    };
    let tmp_in_image = image.join("rootfs/tmp");
    let old = slow("old");
    // Handlers' process.env leaves out the instance's NATS settings.
    std::fs::write(
        old.join("api/env.js"),
        "module.exports = async () => ({ nats: Object.keys(process.env).filter((k) => k.startsWith('KILN_NATS')), app: process.env.KILN_APP });\n",
    )
    .unwrap();
    publish(&nats.url, &old, &[]);
    let env = instance.get("/api/env", &[]).unwrap();
    assert_eq!(env.body, r#"{"nats":[],"app":"pages"}"#, "{env:?}");
    let port = instance.port;
    let in_flight = std::thread::spawn(move || get(port, "/api/slow", &[]).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !tmp_in_image.join("slow-entered").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    publish(&nats.url, &slow("new"), &[]);
    assert_eq!(version_on(&instance, None), "new");
    assert!(
        !in_flight.is_finished(),
        "the request finished before the switch"
    );
    std::fs::write(tmp_in_image.join("slow-go"), "").unwrap();
    let reply = in_flight.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("\"old\""), "{reply:?}");
    assert_eq!(reply.header("x-kiln-version"), Some("1"));
}

#[test]
fn the_publish_check_runs_the_folders_code_in_the_sandbox() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = TestNats::start();
    // A module that writes into its own folder at load: the folder is read-only there.
    let dir = variant(tmp.path(), "writes");
    std::fs::write(
        dir.join("api/evil.js"),
        "require('fs').writeFileSync(__dirname + '/../pwned.txt', 'x');\nmodule.exports = async () => 1;\n",
    )
    .unwrap();
    let out = kiln_at(
        &nats.url,
        &["publish", dir.to_str().unwrap(), "--app", "pages"],
    );
    assert!(!out.status.success(), "a write at load was allowed");
    assert!(stderr(&out).contains("api/evil.js"), "{}", stderr(&out));
    assert!(!dir.join("pwned.txt").exists());

    // One that looks for kiln's secrets and the network: it sees neither, so it loads.
    let dir = variant(tmp.path(), "snoops");
    std::fs::write(
        dir.join("api/evil.js"),
        "if (Object.keys(process.env).some((k) => k.startsWith('KILN_')) || process.env.HOME !== '/tmp') throw new Error('saw the environment');\n\
         if (Object.keys(require('os').networkInterfaces()).some((n) => n !== 'lo')) throw new Error('saw the network');\n\
         module.exports = async () => 1;\n",
    )
    .unwrap();
    let mut cmd = common::kiln_cmd(&tmp.path().join("cache"), Path::new("/nonexistent"));
    let out = cmd
        .args([
            "publish",
            dir.to_str().unwrap(),
            "--app",
            "pages",
            "--nats",
            &nats.url,
        ])
        .env("KILN_SECRET_FOR_THE_TEST", "x")
        .env("HOME", "/root")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A bundle made by hand (not by `kiln publish`), as someone with write access to the
/// object store could.
fn crafted(files: &[(&str, &str)]) -> kiln_builder::light_bundle::Bundle {
    use base64::Engine;
    use sha2::Digest;
    let files: serde_json::Map<String, serde_json::Value> = files
        .iter()
        .map(|(path, text)| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(text);
            (path.to_string(), serde_json::Value::String(b64))
        })
        .collect();
    let doc = serde_json::json!({ "format": "kiln-light-bundle/1", "files": files });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, doc.to_string().as_bytes()).unwrap();
    let bytes = gz.finish().unwrap();
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&bytes));
    kiln_builder::light_bundle::Bundle {
        bytes,
        digest,
        files: files_len(&doc),
    }
}

fn files_len(doc: &serde_json::Value) -> usize {
    doc["files"].as_object().unwrap().len()
}

#[test]
fn a_hostile_bundle_is_not_unpacked_and_the_instance_keeps_serving() {
    let Setup {
        tmp,
        image,
        nats,
        mut instances,
    } = setup(1, "h");
    let instance = instances.remove(0);
    publish(&nats.url, &variant(tmp.path(), "good"), &[]);
    let ok = "module.exports = async () => ({ version: 'hostile' });";
    let hostile = [
        (
            "climbs out",
            vec![("api/version.js", ok), ("../../escape.js", "x")],
        ),
        (
            "absolute",
            vec![("api/version.js", ok), ("/tmp/escape.js", "x")],
        ),
        ("no routes", vec![("lib/x.js", "module.exports = 1;")]),
    ];
    let rt = common::tokio_rt();
    for (what, files) in hostile {
        let bundle = crafted(&files);
        let reason = rt.block_on(async {
            let queue = kiln_queue::Queue::connect(&nats.url).await.unwrap();
            let live = publish_bundle(&queue, &bundle).await;
            assert_eq!(live.failed.len(), 1, "{what}: {live:?}");
            live.failed[0].1.error.clone()
        });
        assert!(
            reason.contains("not a plain relative path") || reason.contains("nothing to serve"),
            "{what}: {reason}"
        );
        assert_eq!(version_on(&instance, None), "good", "{what}");
    }
    // A large bundle (unpacked off the instance's main thread) is served like any other.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: String = (0..3 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdef"[(x & 15) as usize])
        })
        .collect();
    let big = crafted(&[
        (
            "api/version.js",
            "module.exports = async () => ({ version: 'big' });",
        ),
        ("public/noise.txt", &noise),
    ]);
    assert!(big.bytes.len() > 1024 * 1024, "{}", big.bytes.len());
    let live = rt.block_on(async {
        let queue = kiln_queue::Queue::connect(&nats.url).await.unwrap();
        publish_bundle(&queue, &big).await
    });
    assert!(live.failed.is_empty(), "{live:?}");
    assert_eq!(version_on(&instance, None), "big", "{}", instance.log());
    let noise_back = instance.get("/noise.txt", &[]).unwrap();
    assert_eq!(noise_back.body.len(), noise.len());
    assert!(noise_back.body == noise);

    // No file of theirs was written anywhere.
    let found = std::process::Command::new("find")
        .arg(image.join("rootfs"))
        .args(["-name", "escape.js"])
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&found.stdout)
    );
}

#[test]
fn a_version_whose_worker_dies_is_started_again() {
    let Setup {
        tmp,
        image: _,
        nats,
        mut instances,
    } = setup(1, "d");
    let instance = instances.remove(0);
    let dir = variant(tmp.path(), "fragile");
    std::fs::write(
        dir.join("api/crash.js"),
        "module.exports = async () => { setTimeout(() => { throw new Error('crash'); }, 10); return 'bye'; };\n",
    )
    .unwrap();
    publish(&nats.url, &dir, &[]);
    assert_eq!(instance.get("/api/crash", &[]).unwrap().status, 200);
    // The worker dies after answering; the instance starts the same version again, and
    // requests meanwhile wait for it rather than fail.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !instance.log().contains("starting it again") {
        assert!(
            std::time::Instant::now() < deadline,
            "not started again:\n{}",
            instance.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(version_on(&instance, None), "fragile", "{}", instance.log());
    let reply = instance.get("/api/version", &[]).unwrap();
    assert_eq!(reply.header("x-kiln-version"), Some("1"));
}

#[test]
fn instances_on_a_cluster_take_new_versions_after_a_node_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let image = runtime_image(tmp.path());
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(Duration::from_secs(30));
    let url = cluster.url.clone();
    assert!(
        kiln_at(&url, &["light", "instances", "pages"])
            .status
            .success()
    );
    // The instances connect to the node leading the pointers' stream (first in their list):
    // losing it costs them their connection and the stream its leader at once.
    let leader = cluster.wait_leader_of("KV_kiln-light", Duration::from_secs(30));
    let mut ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    ports.swap(0, leader);
    let servers: Vec<String> = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let servers = servers.join(",");
    let instances: Vec<Instance> = (1..=2)
        .map(|i| Instance::start(&image, &format!("n{i}"), "pages", &servers, tmp.path()))
        .collect();
    publish(&url, &variant(tmp.path(), "before"), &[]);
    let client = Client::start(instances.iter().map(|i| i.port).collect());
    cluster.kill(leader);
    let said = publish(&url, &variant(tmp.path(), "after"), &[]);
    assert!(said.contains("live on 2 instance(s)"), "{said}");
    for instance in &instances {
        assert_eq!(version_on(instance, None), "after", "{}", instance.log());
        assert!(
            instance.log().contains("NATS reconnected"),
            "{}",
            instance.log()
        );
    }
    let (_, failures) = client.finish();
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn prune_keeps_the_newest_and_what_the_pointer_names_and_shared_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = TestNats::start();
    let rt = common::tokio_rt();
    rt.block_on(async {
        let queue = kiln_queue::Queue::connect(&nats.url).await.unwrap();
        let bundle =
            |label: &str| kiln_builder::light_bundle::pack(&variant(tmp.path(), label)).unwrap();
        let none = serde_json::Value::Null;
        let (b1, b2, b3, b4, b5) = (
            bundle("1"),
            bundle("2"),
            bundle("3"),
            bundle("4"),
            bundle("5"),
        );
        // Another app published b1's bytes too: that bundle must stay.
        kiln_queue::light::publish(&queue, "other", &b1, none.clone(), None)
            .await
            .unwrap();
        for b in [&b1, &b2, &b3, &b4] {
            kiln_queue::light::publish(&queue, "pages", b, none.clone(), None)
                .await
                .unwrap();
        }
        kiln_queue::light::publish(&queue, "pages", &b5, none.clone(), Some(10.0))
            .await
            .unwrap();
        // Live 4, previous 3, canary 5; keeping the newest 1 (5) drops 1 and 2.
        let pruned = kiln_queue::light::prune(&queue, "pages", 1).await.unwrap();
        assert_eq!(pruned.versions, vec![1, 2]);
        assert_eq!(pruned.bundles, vec![b2.digest.clone()]);
        let (_, left) = kiln_queue::light::versions(&queue, "pages").await.unwrap();
        let left: Vec<u64> = left.iter().map(|r| r.version).collect();
        assert_eq!(left, vec![3, 4, 5]);
        let stored = |b: &kiln_builder::light_bundle::Bundle| {
            let name = format!("sha256-{}", b.digest.trim_start_matches("sha256:"));
            let queue = queue.clone();
            async move { matches!(queue.bundles.info(&name).await, Ok(i) if !i.deleted) }
        };
        assert!(stored(&b1).await, "a bundle another app names went");
        assert!(!stored(&b2).await, "a pruned bundle stayed");
        for b in [&b3, &b4, &b5] {
            assert!(stored(b).await);
        }
        // The next version gets a new number; a pruned bundle published again is stored again.
        let next = kiln_queue::light::publish(&queue, "pages", &b2, none, None)
            .await
            .unwrap();
        assert_eq!(next.record.version, 6);
        assert!(next.uploaded && stored(&b2).await);
        assert!(kiln_queue::light::prune(&queue, "pages", 0).await.is_err());
    });
}

/// The worker lifecycle of one version, driven directly (tests/light/version-check.js): a
/// call made while a crashed worker restarts waits and is answered; a version retired
/// during a restart is released with no worker left; a call waiting on restarts that keep
/// failing ends at its deadline (1.5 s there) with 503.
#[test]
fn a_version_restarts_its_worker_and_calls_wait_within_their_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("node")
        .arg(root().join("tests/light/version-check.js"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap();
    let out: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(out["first"], "ok", "{out}");
    assert_eq!(out["duringRestart"], "ok", "{out}");
    assert_eq!(out["retired"]["released"], true, "{out}");
    assert_eq!(out["retired"]["worker"], false, "{out}");
    assert_eq!(out["waiting"]["status"], 503, "{out}");
    let ms = out["waiting"]["ms"].as_u64().unwrap();
    assert!((1400..10_000).contains(&ms), "{out}");
    for kind in ["light.restarted", "light.restart-failed"] {
        assert!(
            out["events"].as_array().unwrap().iter().any(|e| e == kind),
            "{out}"
        );
    }
}
