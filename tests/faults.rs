//! The fault suite, against real servers on loopback: 100 jobs while workers are killed with
//! SIGKILL, connections to NATS and the registry are cut, and nats-server restarts. Every job
//! must end in exactly one revision or one final `failed` event; the caches must validate.
//! Also: credentials never reach events, logs or layers; a full cache disk fails cleanly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::nats::TestNats;
use common::proxy::Proxy;
use common::registry::TestRegistry;
use common::*;
use futures_util::StreamExt;
use kiln_layers::BlobStore;
use kiln_layers::validate::validate_blobs;
use kiln_queue::submit::submit;
use kiln_queue::{EventKind, Queue};

/// A worker with a short ack wait (quick redelivery after a kill).
fn fault_worker(nats: &str, registry: &str, base: &str, cache: &Path, npm: &Path) -> TestWorker {
    let args = ["--ack-wait-secs", "2", "--jobs", "3"];
    start_worker(nats, registry, base, cache, npm, &args, Stdio::null())
}

#[test]
fn a_hundred_jobs_through_kills_cut_connections_and_a_nats_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let mut nats = TestNats::start();
    let reg = TestRegistry::start();
    let nats_addr = nats.url.trim_start_matches("nats://").to_owned();
    let nats_proxy = Proxy::start(&nats_addr);
    let reg_proxy = Proxy::start(&reg.addr);
    let nats_via = format!("nats://{}", nats_proxy.addr);
    let base = push_host_base(&reg_proxy.addr, &npm, &[]);
    let caches = [tmp.path().join("w1"), tmp.path().join("w2")];
    let mut workers: Vec<TestWorker> = caches
        .iter()
        .map(|c| fault_worker(&nats_via, &reg_proxy.addr, &base, c, &npm))
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let queue = rt.block_on(Queue::connect(&nats.url)).unwrap();
    let mut events = rt
        .block_on(queue.client.subscribe("kiln.events.>"))
        .unwrap();
    let scratch = tmp.path().join("submit");
    let mut jobs = Vec::new();
    for i in 0..100 {
        let app = format!("f{}", i % 25);
        let id = format!("fault-{i}");
        let dir = faas_variant(tmp.path(), &format!("src{i}"), "job", "job", &i.to_string());
        let submission = submission(dir, &app, &id);
        rt.block_on(submit(&queue, &submission, &scratch)).unwrap();
        jobs.push((app, id));
    }

    // Faults while the queue drains.
    let mut restarted = false;
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut done = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut round = 0;
    while done.len() + failed.len() < jobs.len() {
        assert!(
            Instant::now() < deadline,
            "{} revisions and {} failures of {} jobs",
            done.len(),
            failed.len(),
            jobs.len()
        );
        match round % 6 {
            0 if round < 36 => {
                let _ = workers[0].child.kill();
                let _ = workers[0].child.wait();
                workers[0] = fault_worker(&nats_via, &reg_proxy.addr, &base, &caches[0], &npm);
            }
            1 if round < 36 => nats_proxy.cut_all(),
            2 if round < 36 => {
                reg_proxy.cut_all();
                reg_proxy.drop_next(2);
            }
            3 if !restarted && round > 6 => {
                nats.down();
                std::thread::sleep(Duration::from_millis(300));
                nats.up();
                restarted = true;
            }
            // The next two registry connections end after 3 KiB: requests cut mid-body.
            4 if round < 36 => reg_proxy.truncate_next(2, 3 * 1024),
            // 40 ms on every chunk both ways, to NATS and the registry, for one round.
            5 if round < 36 => {
                for proxy in [&nats_proxy, &reg_proxy] {
                    proxy.set_delay(Duration::from_millis(40));
                }
            }
            _ => {}
        }
        if round % 6 == 0 {
            for proxy in [&nats_proxy, &reg_proxy] {
                proxy.set_delay(Duration::ZERO);
            }
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(250));
        rt.block_on(async {
            while let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(10), events.next()).await
            {
                if let Ok(e) = serde_json::from_slice::<kiln_queue::Event>(&msg.payload)
                    && let EventKind::Failed {
                        reason,
                        retryable: false,
                    } = e.kind
                {
                    failed.insert(e.job_id, reason);
                }
            }
            let queue = match Queue::connect(&nats.url).await {
                Ok(q) => q,
                Err(_) => return,
            };
            for (app, job) in &jobs {
                if done.contains_key(job) {
                    continue;
                }
                if let Ok(Some(r)) = kiln_queue::revisions::by_job(&queue, app, job, false).await {
                    done.insert(job.clone(), r);
                }
            }
        });
    }
    assert!(
        restarted,
        "the queue drained before nats-server could be restarted"
    );
    eprintln!(
        "fault suite: {} jobs, {} revisions, {} gave up, {round} fault rounds, nats restarted: {restarted}, registry connections dropped {} and truncated {}",
        jobs.len(),
        done.len(),
        failed.len(),
        reg_proxy.dropped(),
        reg_proxy.truncated(),
    );
    assert!(
        reg_proxy.truncated() > 0,
        "no registry request was truncated"
    );
    for job in failed.keys() {
        assert!(
            !done.contains_key(job),
            "{job} has a revision and a final failure"
        );
    }
    // Good jobs: a final failure is allowed only when the deliveries ran out, and says so.
    for (job, reason) in &failed {
        assert!(reason.contains("gave up after"), "{job}: {reason}");
    }
    assert!(
        done.len() >= 90,
        "only {} of 100 jobs got a revision ({} gave up)",
        done.len(),
        failed.len()
    );
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let mut per_app: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for (job, r) in &done {
            assert_eq!(&r.job_id, job);
            assert!(
                per_app.entry(&r.app).or_default().insert(r.number),
                "double {}",
                r.name
            );
        }
        for (app, numbers) in per_app {
            let all = kiln_queue::revisions::list(&queue, app).await.unwrap();
            let recorded: BTreeSet<u64> = all.iter().map(|r| r.number).collect();
            assert_eq!(recorded, (1..=all.len() as u64).collect(), "{app}: gap");
            assert_eq!(numbers, recorded, "{app}: a revision without its job");
        }
    });
    drop(workers);
    // The caches the killed workers left behind hold only whole, correct blobs.
    for cache in &caches {
        let store = BlobStore::open(cache).unwrap();
        let blobs = validate_blobs(&store).unwrap();
        assert!(blobs > 0);
    }
}

#[test]
fn registry_password_never_reaches_events_logs_or_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let password = "Pw-d0-not-leak-7731";
    let nats = TestNats::start();
    let reg = TestRegistry::start_with_auth("ci", password);
    let creds = [
        ("KILN_REGISTRY_USER", "ci"),
        ("KILN_REGISTRY_PASSWORD", password),
    ];
    let base = push_host_base(&reg.addr, &npm, &creds);
    let log = tmp.path().join("worker.log");
    let mut worker = kiln_cmd(&tmp.path().join("w"), &npm)
        .args(["worker", "--nats", &nats.url, "--registry", &reg.addr])
        .args(["--insecure-registry", &reg.addr, "--base", &base])
        .envs(creds)
        .env("KILN_LOG", "debug")
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(tmp.path().join("worker.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let queue = rt.block_on(Queue::connect(&nats.url)).unwrap();
    let mut events = rt.block_on(queue.client.subscribe("kiln.>")).unwrap();
    let out = kiln_cmd(&tmp.path().join("submit"), &npm)
        .args([
            "submit",
            root().join("fixtures/faas-deps").to_str().unwrap(),
        ])
        .args(["--app", "secret", "--nats", &nats.url, "--wait", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let _ = worker.kill();
    let _ = worker.wait();

    let mut seen = String::from_utf8_lossy(&out.stdout).into_owned();
    seen.push_str(&String::from_utf8_lossy(&out.stderr));
    rt.block_on(async {
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(200), events.next()).await
        {
            seen.push_str(&String::from_utf8_lossy(&msg.payload));
        }
    });
    seen.push_str(&std::fs::read_to_string(&log).unwrap());
    let err = std::fs::read_to_string(tmp.path().join("worker.err")).unwrap();
    assert!(
        err.contains("debug") || err.contains("DEBUG"),
        "no debug log captured"
    );
    seen.push_str(&err);
    assert!(seen.contains("secret-00001"), "events not captured");
    assert!(!seen.contains(password), "password in events or logs");

    let bundle = pull_and_unpack(
        revision["image"].as_str().unwrap(),
        Some(&format!("ci:{password}")),
        tmp.path(),
    );
    let found = Command::new("grep")
        .args(["-rl", password])
        .arg(&bundle)
        .arg(tmp.path().join("w"))
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "password in {}",
        String::from_utf8_lossy(&found.stdout)
    );
}

#[test]
fn a_full_cache_disk_fails_with_a_clear_error_and_leaves_no_corrupt_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let cache = tmp.path().join("small-disk");
    std::fs::create_dir(&cache).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a 2 MiB tmpfs needs root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(cache.clone());
    let out = kiln_cmd(&cache, &npm)
        .args([
            "build",
            root().join("fixtures/faas-hello").to_str().unwrap(),
        ])
        .args(["--layout", tmp.path().join("out").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a 40 MB base fit in 2 MiB?");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No space left on device") && err.contains("small-disk"),
        "{err}"
    );
    let store = BlobStore::open(&cache).unwrap();
    validate_blobs(&store).unwrap();
    // With space again (a bigger cache), the same build works.
    let out = kiln(
        &[
            "build",
            root().join("fixtures/faas-hello").to_str().unwrap(),
            "--layout",
            tmp.path().join("out").to_str().unwrap(),
        ],
        &npm,
    );
    assert!(out.status.success());
}
