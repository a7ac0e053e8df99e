//! kiln on NATS as users run it: a server nobody answers on, a server with user/password
//! auth, and a 3-node JetStream cluster that loses the node leading `KILN_JOBS` mid-drain.
//! Real nats-server processes on loopback, real `kiln` processes.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::nats::TestNats;
use common::nats::cluster::TestCluster;
use common::nats::exactly_once::{
    assert_accepted_once_and_none_failed, assert_exactly_once, recorded, submit_range,
};
use common::registry::TestRegistry;
use common::*;
use futures_util::StreamExt;
use kiln_queue::Queue;
use kiln_queue::nats::{Credentials, NatsOptions, Secret};

/// The ack wait the workers get.
const ACK_WAIT: Duration = Duration::from_secs(3);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `path` holds `text`; returns the file's text.
fn wait_for_text(path: &Path, text: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} in {} after {within:?}:\n{log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Commands give up on a URL nobody answers on, naming it; a worker keeps retrying, says so,
/// and starts working once a server is there.
#[test]
fn an_unreachable_nats_is_a_clear_error_and_a_worker_waits_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let cache = tmp.path().join("cache");
    let fixture = root().join("fixtures/faas-hello");
    for args in [
        vec!["revisions", "x"],
        vec!["submit", fixture.to_str().unwrap(), "--app", "x"],
        vec!["deploy", "x", "--promote"],
    ] {
        let out = kiln_cmd(&cache, &npm)
            .args(&args)
            .args(["--nats", "nats://127.0.0.1:1", "--nats-timeout", "1"])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("cannot reach NATS at nats://127.0.0.1:1: "),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("jetstream request timed out"),
            "{args:?}: {err}"
        );
    }
    let out = kiln_cmd(&cache, &npm)
        .args(["revisions", "x"])
        .env("KILN_NATS", "nats://127.0.0.1:1,nats://127.0.0.1:2")
        .env("KILN_NATS_TIMEOUT", "1")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("cannot reach NATS at nats://127.0.0.1:1,nats://127.0.0.1:2: "),
        "{}",
        stderr(&out)
    );

    let mut nats = TestNats::start();
    nats.down();
    let log = tmp.path().join("worker.err");
    let mut worker = kiln_cmd(&cache, &npm)
        .args(["worker", "--nats", &nats.url, "--registry", "127.0.0.1:1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let waiting = format!("cannot reach NATS at {}: ", nats.url);
    wait_for_text(&log, &waiting, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    assert!(worker.try_wait().unwrap().is_none(), "the worker gave up");
    let tries = std::fs::read_to_string(&log).unwrap();
    assert!(tries.contains("retrying in"), "{tries}");
    nats.up();
    wait_for_text(
        &log,
        &format!(" on {} (jobs: ", nats.url),
        Duration::from_secs(20),
    );
    let _ = worker.kill();
    let _ = worker.wait();
}

/// A server wanting a user and password: the right one works for submit and the worker
/// (given in the URL, by flag or by environment), a wrong one fails at once naming the
/// problem, and the password shows in no output, event, KV value or cache file, even with
/// trace logging on.
#[test]
fn nats_user_password_auth_works_and_the_password_never_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let password = "Pw-nats-d0-not-leak-4417";
    let wrong = "Wr0ng-nats-pw-9923";
    let nats = TestNats::start_with_config(&format!(
        "authorization {{ user: kiln, password: \"{password}\" }}\n"
    ));
    let port = nats.url.rsplit(':').next().unwrap();
    let in_url = format!("nats://kiln:{password}@127.0.0.1:{port}");
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);

    let rt = tokio_rt();
    let queue = rt
        .block_on(Queue::connect_with(&NatsOptions {
            credentials: Credentials::UserPassword {
                user: "kiln".into(),
                password: Secret::new(password),
            },
            ..NatsOptions::new(nats.url.as_str())
        }))
        .unwrap();
    let mut messages = rt.block_on(queue.client.subscribe("kiln.>")).unwrap();
    rt.block_on(queue.client.flush()).unwrap();

    let cache = tmp.path().join("w");
    let worker_log = tmp.path().join("worker.err");
    let worker = TestWorker {
        child: kiln_cmd(&cache, &npm)
            .args(["worker", "--nats", &nats.url, "--registry", &reg.addr])
            .args(["--insecure-registry", &reg.addr, "--base", &base])
            .env("KILN_NATS_USER", "kiln")
            .env("KILN_NATS_PASSWORD", password)
            .env("KILN_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&worker_log).unwrap())
            .spawn()
            .unwrap(),
    };
    let submit_dir = tmp.path().join("submit");
    let fixture = root().join("fixtures/faas-hello");
    let submit = |nats_args: &[&str]| {
        kiln_cmd(&submit_dir, &npm)
            .args(["submit", fixture.to_str().unwrap(), "--app", "authed"])
            .args(nats_args)
            .args(["--wait", "--json", "--timeout-secs", "120"])
            .env("KILN_LOG", "trace")
            .output()
            .unwrap()
    };
    let by_url = submit(&["--nats", &in_url]);
    assert!(by_url.status.success(), "{}", stderr(&by_url));
    let revision: serde_json::Value = serde_json::from_slice(&by_url.stdout).unwrap();
    assert_eq!(revision["name"], "authed-00001");
    let by_flag = submit(&[
        "--nats",
        &nats.url,
        "--nats-user",
        "kiln",
        "--nats-password",
        password,
    ]);
    assert!(by_flag.status.success(), "{}", stderr(&by_flag));

    // A wrong password: refused at once (no waiting out the timeout), saying why.
    let started = Instant::now();
    let refused = submit(&[
        "--nats",
        &nats.url,
        "--nats-user",
        "kiln",
        "--nats-password",
        wrong,
    ]);
    let err = stderr(&refused);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "NATS at {} refused the connection: authorization violation",
            nats.url
        )),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let anonymous = submit(&["--nats", &nats.url]);
    assert!(
        stderr(&anonymous).contains("none was given"),
        "{}",
        stderr(&anonymous)
    );
    let bad_worker = kiln_cmd(&tmp.path().join("bad"), &npm)
        .args([
            "worker",
            "--nats",
            &nats
                .url
                .replace("nats://", &format!("nats://kiln:{wrong}@")),
        ])
        .args(["--registry", &reg.addr])
        .output()
        .unwrap();
    assert!(!bad_worker.status.success());
    assert!(
        stderr(&bad_worker).contains("refused the connection: authorization violation"),
        "{}",
        stderr(&bad_worker)
    );
    // Help shows where the secret comes from, never its value.
    let help = kiln_cmd(&submit_dir, &npm)
        .args(["submit", "--help"])
        .env("KILN_NATS_PASSWORD", password)
        .env("KILN_NATS", &in_url)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("KILN_NATS_PASSWORD"));

    let mut worker = worker;
    rt.block_on(common::nats::exactly_once::sigterm(
        &mut worker,
        Duration::from_secs(30),
    ));
    let mut texts: Vec<(String, Vec<u8>)> = Vec::new();
    rt.block_on(async {
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(200), messages.next()).await
        {
            texts.push((format!("message on {}", msg.subject), msg.payload.to_vec()));
        }
        for kv in [&queue.revisions, &queue.layer_cache] {
            let keys: Vec<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
            for key in keys {
                if let Some(value) = kv.get(&key).await.unwrap() {
                    texts.push((format!("KV value {key}"), value.to_vec()));
                }
            }
        }
    });
    assert!(
        texts
            .iter()
            .any(|(what, t)| what.starts_with("message on kiln.events.")
                && String::from_utf8_lossy(t).contains("authed-00001")),
        "events not captured"
    );
    let worker_err = std::fs::read(&worker_log).unwrap();
    assert!(
        String::from_utf8_lossy(&worker_err).contains("TRACE"),
        "no trace log captured"
    );
    for (what, out) in [
        ("submit (URL)", &by_url),
        ("submit (flags)", &by_flag),
        ("submit (wrong password)", &refused),
        ("submit (anonymous)", &anonymous),
        ("worker (wrong password)", &bad_worker),
        ("submit --help", &help),
    ] {
        texts.push((format!("{what} stdout"), out.stdout.clone()));
        texts.push((format!("{what} stderr"), out.stderr.clone()));
    }
    texts.push(("worker stderr".into(), worker_err));
    let texts: Vec<(&str, &[u8])> = texts
        .iter()
        .map(|(what, t)| (what.as_str(), t.as_slice()))
        .collect();
    secrets::assert_absent(password, &texts, &[cache.as_path(), submit_dir.as_path()]);
    secrets::assert_absent(wrong, &texts, &[]);
}

/// The replicas of a server alone and of a cluster; streams made with fewer replicas are
/// raised on the next connect.
#[test]
fn replicas_follow_the_cluster_size_and_fewer_are_raised() {
    let rt = tokio_rt();
    let single = TestNats::start();
    let err = rt
        .block_on(Queue::connect_with(&NatsOptions {
            replicas: Some(3),
            ..NatsOptions::new(single.url.as_str())
        }))
        .err()
        .expect("3 replicas on a single server");
    assert!(
        err.to_string().contains("3 replicas need a NATS cluster"),
        "{err}"
    );

    let cluster = TestCluster::start(3);
    let replicas = |stream: &str| {
        rt.block_on(async {
            let queue = Queue::connect(&cluster.url).await.unwrap();
            let mut stream = queue.js.get_stream(stream).await.unwrap();
            stream.info().await.unwrap().config.num_replicas
        })
    };
    rt.block_on(Queue::connect_with(&NatsOptions {
        replicas: Some(1),
        ..NatsOptions::new(cluster.url.as_str())
    }))
    .unwrap();
    for stream in [
        "KILN_JOBS",
        "KILN_EVENTS",
        "KILN_REVISIONS",
        "KILN_ADVISORIES",
        "KV_kiln-revisions",
        "KV_kiln-layer-cache",
        "OBJ_kiln-sources",
    ] {
        assert_eq!(replicas(stream), 3, "{stream} raised to the cluster size");
    }
}

/// 200 jobs over 10 apps, 3 workers on a 3-node cluster, each worker seeded with one node's
/// URL (the rest it learns from the server), the test's client with all three. The jobs come
/// in two batches of 94; while the first drains, the node leading `KILN_JOBS` is killed
/// (SIGKILL), and restarted once another leads it; while the second drains, the node
/// leading the `kiln-revisions` KV. Around the first kill 6 `kiln submit --wait` start
/// (connecting, uploading and publishing during the election) and the test's client
/// publishes 6 more jobs while the new leader is elected: none fails. Every job ends with
/// exactly one revision, numbers contiguous per app, no final `failed`, nothing left in the
/// queue.
#[test]
fn a_cluster_loses_the_jobs_leader_mid_drain_and_every_job_gets_one_revision() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let mut cluster = TestCluster::start(3);
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let logs: Vec<_> = (0..3)
        .map(|i| tmp.path().join(format!("w{i}.err")))
        .collect();
    let workers: Vec<TestWorker> = (0..3)
        .map(|i| {
            let name = format!("cluster-w{i}");
            let seed = format!("nats://127.0.0.1:{}", cluster.nodes[i].port);
            start_worker(
                &seed,
                &reg.addr,
                &base,
                &tmp.path().join(format!("w{i}")),
                &npm,
                &[
                    "--ack-wait-secs",
                    "3",
                    "--grace-secs",
                    "10",
                    "--jobs",
                    "1",
                    "--name",
                    &name,
                ],
                Stdio::from(std::fs::File::create(&logs[i]).unwrap()),
            )
        })
        .collect();
    // Each worker has found or made every stream before the first submit: streams a client
    // has just created may refuse a publish for a moment (see RELIABILITY.md).
    for log in &logs {
        wait_for_text(log, "(jobs: 1)", Duration::from_secs(30));
    }
    let rt = tokio_rt();
    let killed = rt.block_on(async {
        let queue = Queue::connect(&cluster.url).await.unwrap();
        let mut jobs = Vec::new();
        let mut killed = Vec::new();
        let mut waiting = Vec::new();
        for (batch, stream) in [(0..94, "KILN_JOBS"), (94..188, "KV_kiln-revisions")] {
            let first = batch.start;
            jobs.extend(submit_range(&queue, tmp.path(), "cl", batch, APPS).await);
            let before = wait_recorded(&queue, &jobs, first + 5).await;
            let leader = cluster.wait_leader_of(stream, Duration::from_secs(30));
            let queued = jobs.len();
            if stream == "KILN_JOBS" {
                // Commands that connect, upload, publish and wait across the election.
                waiting = (0..CLI_SUBMITS)
                    .map(|k| submit_wait(tmp.path(), &npm, &cluster.url, k))
                    .collect();
                jobs.extend(waiting.iter().map(|(job, _)| job.clone()));
            }
            cluster.kill(leader);
            killed.push(leader);
            let at = Instant::now();
            eprintln!(
                "killed {} ({stream} leader) with {before} of {} recorded, after {:?}",
                cluster.nodes[leader].name,
                queued,
                started.elapsed()
            );
            assert!(before < queued, "the batch drained before the kill");
            if stream == "KILN_JOBS" {
                // Published by a client connected before the kill, while a new leader is
                // elected: each publish is tried again until one takes it.
                let electing = cluster.leader_of(stream).is_none_or(|i| i == leader);
                jobs.extend(submit_range(&queue, tmp.path(), "cl", 188..194, APPS).await);
                eprintln!(
                    "6 jobs published {:?} after the kill (no leader when it started: {electing})",
                    at.elapsed()
                );
            }
            let next = cluster.wait_leader_of(stream, Duration::from_secs(30));
            eprintln!(
                "{} leads {stream} {:?} later",
                cluster.nodes[next].name,
                at.elapsed()
            );
            cluster.restart(leader);
            eprintln!(
                "restarted {} with {} recorded, after {:?}",
                cluster.nodes[leader].name,
                recorded(&queue, &jobs).await,
                started.elapsed()
            );
        }
        let failed: Vec<String> = waiting
            .into_iter()
            .filter_map(|((_, job), child)| {
                let out = child.wait_with_output().unwrap();
                eprintln!("{job}: `submit --wait` ended after {:?}", started.elapsed());
                (!out.status.success()).then(|| format!("{job}: {}", stderr(&out)))
            })
            .collect();
        assert_eq!(
            failed,
            Vec::<String>::new(),
            "submit --wait across the election"
        );
        eprintln!("{CLI_SUBMITS} `submit --wait` across the election: 0 failed");
        assert_exactly_once(&queue, &jobs, workers, Duration::from_secs(240), ACK_WAIT).await;
        assert_accepted_once_and_none_failed(&queue, &jobs).await;
        killed
    });
    for (i, log) in logs.iter().enumerate() {
        let text = std::fs::read_to_string(log).unwrap();
        let lost = text.matches("lost the NATS connection").count();
        eprintln!(
            "worker {i} (seeded with n{}): lost its connection {lost} times",
            i + 1
        );
        if killed.contains(&i) {
            assert!(
                lost >= 1,
                "worker {i} on killed node n{} never lost it:\n{text}",
                i + 1
            );
        }
    }
    eprintln!(
        "drained with exactly one revision each in {:?}",
        started.elapsed()
    );
}

/// Apps the drain's jobs are spread over.
const APPS: usize = 10;

/// How many `kiln submit --wait` start as the `KILN_JOBS` leader is killed.
const CLI_SUBMITS: usize = 6;

/// Starts `kiln submit --wait` of a distinct source as job `cl-cli-<k>` of app `cl<k % 6>`
/// on `nats`; returns the (app, job id) and the process (stdout and stderr piped).
fn submit_wait(
    tmp: &Path,
    npm: &Path,
    nats: &str,
    k: usize,
) -> ((String, String), std::process::Child) {
    let (app, job) = (format!("cl{}", k % 6), format!("cl-cli-{k}"));
    let dir = faas_variant(tmp, &job, "hello", "greeting", &job);
    let child = kiln_cmd(&tmp.join(format!("cli{k}")), npm)
        .args([
            "submit",
            dir.to_str().unwrap(),
            "--app",
            &app,
            "--job-id",
            &job,
        ])
        .args(["--nats", nats, "--wait", "--json", "--timeout-secs", "120"])
        // An election takes 4-9 s here; the default 10 s of patience may end during the
        // set-up of a command that starts as it begins (see RELIABILITY.md).
        .args(["--nats-timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ((app, job), child)
}

/// Waits until at least `n` of `jobs` have their revision; returns how many have.
async fn wait_recorded(queue: &Queue, jobs: &[(String, String)], n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = recorded(queue, jobs).await;
        if done >= n {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} revisions after 180 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
