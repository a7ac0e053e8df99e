//! End-to-end tests of the NATS worker: real nats-server (JetStream) and docker-registry on
//! loopback, real `kiln worker` processes; images pulled back, unpacked, run and called.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::nats::TestNats;
use common::registry::TestRegistry;
use common::*;
use kiln_queue::submit::submit;
use kiln_queue::{Queue, Revision};

/// Starts `kiln worker` with its own cache directory (ack wait 3 s, grace 10 s).
fn worker(
    nats: &TestNats,
    reg: &TestRegistry,
    base: &str,
    cache: &Path,
    npm: &Path,
    extra: &[&str],
) -> TestWorker {
    let mut args = vec!["--ack-wait-secs", "3", "--grace-secs", "10"];
    args.extend(extra);
    start_worker(&nats.url, &reg.addr, base, cache, npm, &args, Stdio::null())
}

/// Waits until every job id has a `job.<id>` revision index; returns job id → revision.
async fn wait_for_revisions(
    queue: &Queue,
    jobs: &[(String, String)],
    timeout: Duration,
) -> BTreeMap<String, Revision> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut done = BTreeMap::new();
        for (app, job) in jobs {
            if let Some(r) = kiln_queue::revisions::by_job(queue, app, job, false)
                .await
                .unwrap()
            {
                done.insert(job.clone(), r);
            }
        }
        if done.len() == jobs.len() {
            return done;
        }
        if Instant::now() >= deadline {
            let mut missing = Vec::new();
            for (_, job) in jobs.iter().filter(|(_, job)| !done.contains_key(job)) {
                missing.push(format!("{job}: {}", last_event(queue, job).await));
            }
            panic!(
                "only {} of {} jobs have a revision; last events of the others:\n{}",
                done.len(),
                jobs.len(),
                missing.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last event recorded for `job_id`, as JSON text, for a failure message.
async fn last_event(queue: &Queue, job_id: &str) -> String {
    let Ok(stream) = queue.js.get_stream(kiln_queue::nats::EVENTS_STREAM).await else {
        return "(no events stream)".into();
    };
    match stream
        .get_last_raw_message_by_subject(&kiln_queue::nats::events_subject(job_id))
        .await
    {
        Ok(message) => String::from_utf8_lossy(&message.payload).into_owned(),
        Err(e) => format!("(no event: {e})"),
    }
}

/// Submits `count` distinct faas sources over `apps` apps (`<prefix><i % apps>`, job ids
/// `<prefix>-<i>`); returns the (app, job id) pairs.
async fn submit_variants(
    queue: &Queue,
    tmp: &Path,
    prefix: &str,
    count: usize,
    apps: usize,
) -> Vec<(String, String)> {
    let mut jobs = Vec::new();
    for i in 0..count {
        let app = format!("{prefix}{}", i % apps);
        let id = format!("{prefix}-{i}");
        let dir = faas_variant(tmp, &id, "hello", "greeting", &format!("{prefix} {i}"));
        submit(queue, &submission(dir, &app, &id), &tmp.join("submit"))
            .await
            .unwrap();
        jobs.push((app, id));
    }
    jobs
}

/// Every app's revisions are numbered 1..=n with no gap, and each job has its own.
async fn assert_exactly_one_each(queue: &Queue, done: &BTreeMap<String, Revision>) {
    let mut per_app: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (job, r) in done {
        assert_eq!(&r.job_id, job, "job {job} points at another job's revision");
        assert!(
            per_app.entry(&r.app).or_default().insert(r.number),
            "two jobs share {}",
            r.name
        );
    }
    for (app, numbers) in per_app {
        let all = kiln_queue::revisions::list(queue, app).await.unwrap();
        let recorded: BTreeSet<u64> = all.iter().map(|r| r.number).collect();
        let by_job: Vec<(&str, &str)> = all
            .iter()
            .map(|r| (r.name.as_str(), r.job_id.as_str()))
            .collect();
        eprintln!("{app}: {by_job:?}");
        assert_eq!(
            recorded,
            (1..=numbers.len() as u64).collect::<BTreeSet<_>>(),
            "{app}: revisions not contiguous or doubled"
        );
        assert_eq!(numbers, recorded, "{app}: a revision without its job");
    }
}

#[test]
fn submit_wait_builds_pushes_runs_and_records_one_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let _w = worker(
        &nats,
        &reg,
        &base,
        &tmp.path().join("worker-cache"),
        &npm,
        &["--metrics", &metrics],
    );

    let fixture = root().join("fixtures/faas-hello");
    let submit_cmd = |job_id: &str| {
        kiln_cmd(&shared_cache(), &npm)
            .args(["submit", fixture.to_str().unwrap(), "--app", "hello"])
            .args([
                "--nats",
                &nats.url,
                "--wait",
                "--json",
                "--timeout-secs",
                "120",
            ])
            .args(["--job-id", job_id])
            .output()
            .unwrap()
    };
    let out = submit_cmd("job-one");
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{progress}");
    for step in [
        "accepted",
        "building on",
        "app layer",
        "pushed",
        "revision hello-00001",
    ] {
        assert!(
            progress.contains(step),
            "no {step:?} in progress:\n{progress}"
        );
    }
    let revision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(revision["name"], "hello-00001");
    assert_eq!(revision["runtime"], "faas");
    let image = revision["image"].as_str().unwrap().to_owned();
    assert!(
        image.starts_with(&format!("{}/apps/hello@sha256:", reg.addr)),
        "{image}"
    );

    let app = run(&pull_and_unpack(&image, None, &tmp.path().join("run")));
    let (status, body) = http(&app, "GET", "/hello?name=nats", None);
    assert!(
        status == 200 && body.contains("hello nats"),
        "{status} {body}"
    );
    drop(app);

    // The same job id again: no second revision.
    let again = submit_cmd("job-one");
    assert!(again.status.success());
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["name"], "hello-00001");
    // A new job with the same source and base: answered with the existing image.
    let same = submit_cmd("job-two");
    assert!(same.status.success());
    let same: serde_json::Value = serde_json::from_slice(&same.stdout).unwrap();
    assert_eq!(same["digest"], revision["digest"]);

    let rt = tokio_rt();
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let all = kiln_queue::revisions::list(&queue, "hello").await.unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        // The deployer's feed has the revision.
        let stream = queue.js.get_stream("KILN_REVISIONS").await.unwrap();
        let last = stream
            .get_last_raw_message_by_subject("kiln.revisions.hello")
            .await
            .unwrap();
        let fed: Revision = serde_json::from_slice(&last.payload).unwrap();
        assert_eq!(fed.name, "hello-00001");
    });

    let health = Command::new("curl")
        .args(["-sf", &format!("http://{metrics}/healthz")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok\n");
    let metrics = Command::new("curl")
        .args(["-sf", &format!("http://{metrics}/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("kiln_jobs_total{outcome=\"revision\"} 2")
            && text.contains("kiln_jobs_total{outcome=\"deduplicated\"} 1"),
        "{text}"
    );
}

#[test]
fn bad_jobs_fail_fast_with_a_reason_and_good_jobs_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let _w = worker(&nats, &reg, &base, &tmp.path().join("w"), &npm, &[]);
    let rt = tokio_rt();
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let mut events = queue.client.subscribe("kiln.events.>").await.unwrap();

        // Malformed JSON, a job with an unknown runtime, a missing source object.
        queue
            .publish("kiln.jobs.build.x".into(), b"{not json".to_vec())
            .await
            .unwrap();
        let bogus = kiln_queue::BuildJob {
            schema_version: 1,
            job_id: "missing-source".into(),
            app: "ghost".into(),
            source: format!("sha256-{}", "0".repeat(64)),
            runtime: None,
            base: None,
            env: vec![],
            deploy: Default::default(),
        };
        kiln_queue::submit::publish_job(&queue, &bogus)
            .await
            .unwrap();
        let mut unknown = bogus.clone();
        unknown.job_id = "unknown-runtime".into();
        unknown.runtime = Some("cobol".into());
        kiln_queue::submit::publish_job(&queue, &unknown)
            .await
            .unwrap();
        // An invalid package.json, then a good job.
        let sub = submission;
        let scratch = tmp.path().join("submit");
        submit(
            &queue,
            &sub(
                root().join("fixtures/bad/bad-package-json"),
                "broken",
                "bad-pkg",
            ),
            &scratch,
        )
        .await
        .unwrap();
        submit(
            &queue,
            &sub(root().join("fixtures/faas-hello"), "good", "good-1"),
            &scratch,
        )
        .await
        .unwrap();

        let expected: BTreeMap<&str, &str> = BTreeMap::from([
            ("unknown", "payload"),
            ("missing-source", "not found"),
            ("unknown-runtime", "runtime"),
            ("bad-pkg", "package.json"),
        ]);
        let mut failed = BTreeMap::new();
        let mut good = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while failed.len() < expected.len() || good.is_none() {
            use futures_util::StreamExt;
            let msg = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("events in time")
                .unwrap();
            let event: kiln_queue::Event = serde_json::from_slice(&msg.payload).unwrap();
            match event.kind {
                kiln_queue::EventKind::Failed { reason, retryable } => {
                    assert!(
                        !retryable,
                        "{}: bad input marked retryable: {reason}",
                        event.job_id
                    );
                    failed.insert(event.job_id.clone(), reason);
                }
                kiln_queue::EventKind::Revision { revision } => good = Some(revision),
                _ => {}
            }
        }
        for (job, part) in expected {
            let reason = &failed[job];
            assert!(reason.contains(part), "{job}: {reason}");
        }
        assert_eq!(good.unwrap().name, "good-00001");
        // Terminated jobs left the work queue.
        let mut jobs = queue.js.get_stream("KILN_JOBS").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while jobs.info().await.unwrap().state.messages != 0 {
            assert!(Instant::now() < deadline, "jobs left in KILN_JOBS");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn two_workers_fifty_jobs_ten_apps_exactly_one_revision_each() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let _w1 = worker(
        &nats,
        &reg,
        &base,
        &tmp.path().join("w1"),
        &npm,
        &["--jobs", "3"],
    );
    let _w2 = worker(
        &nats,
        &reg,
        &base,
        &tmp.path().join("w2"),
        &npm,
        &["--jobs", "3"],
    );
    let rt = tokio_rt();
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let jobs = submit_variants(&queue, tmp.path(), "app", 50, 10).await;
        let done = wait_for_revisions(&queue, &jobs, Duration::from_secs(240)).await;
        assert_exactly_one_each(&queue, &done).await;
    });
}

#[test]
fn killed_workers_lose_no_job_and_double_none() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let w1_cache = tmp.path().join("w1");
    let mut w1 = worker(&nats, &reg, &base, &w1_cache, &npm, &["--jobs", "2"]);
    let _w2 = worker(
        &nats,
        &reg,
        &base,
        &tmp.path().join("w2"),
        &npm,
        &["--jobs", "2"],
    );
    let rt = tokio_rt();
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let jobs = submit_variants(&queue, tmp.path(), "kill", 24, 4).await;
        // kill -9 one worker again and again while the queue drains, restarting it each time.
        for round in 0..5 {
            tokio::time::sleep(Duration::from_millis(150 + 100 * round)).await;
            let _ = w1.child.kill();
            let _ = w1.child.wait();
            w1 = worker(&nats, &reg, &base, &w1_cache, &npm, &["--jobs", "2"]);
        }
        let done = wait_for_revisions(&queue, &jobs, Duration::from_secs(240)).await;
        assert_exactly_one_each(&queue, &done).await;
    });
    drop(w1);
}

/// An attempt that died between claiming its job and recording the revision leaves a fresh
/// claim behind: the redelivered job waits it out and takes it over instead of using up its
/// deliveries on "busy" and failing.
#[test]
fn a_claim_left_by_a_dead_attempt_is_taken_over_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let _w = worker(&nats, &reg, &base, &tmp.path().join("w"), &npm, &[]);
    let rt = tokio_rt();
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        queue
            .revisions
            .put("claim.orphan-1", "claimed".into())
            .await
            .unwrap();
        let dir = faas_variant(tmp.path(), "orphan", "hello", "greeting", "orphan");
        let scratch = tmp.path().join("submit");
        let revision = submit_and_wait(&queue, dir, "orphan", "orphan-1", &scratch).await;
        assert_eq!(revision.name, "orphan-00001");
        let all = kiln_queue::revisions::list(&queue, "orphan").await.unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
    });
}

/// Submits `dir` as `app` with `job_id` and waits for its revision.
async fn submit_and_wait(
    queue: &Queue,
    dir: PathBuf,
    app: &str,
    job_id: &str,
    scratch: &Path,
) -> Revision {
    let submission = submission(dir, app, job_id);
    submit(queue, &submission, scratch).await.unwrap();
    let done = wait_for_revisions(
        queue,
        &[(app.to_owned(), job_id.to_owned())],
        Duration::from_secs(120),
    )
    .await;
    done.into_values().next().unwrap()
}

#[test]
fn deps_layer_built_by_one_worker_is_a_cache_hit_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let rt = tokio_rt();
    let scratch = tmp.path().join("submit");
    let express = root().join("fixtures/app-express");
    let queue = rt.block_on(Queue::connect(&nats.url)).unwrap();

    let w1 = worker(&nats, &reg, &base, &tmp.path().join("c1"), &npm, &[]);
    let first = rt.block_on(submit_and_wait(
        &queue,
        express.clone(),
        "expa",
        "exp-a",
        &scratch,
    ));
    drop(w1);
    let deps = first.layers.iter().find(|l| l.kind == "deps").unwrap();
    assert!(!deps.cache_hit, "first build should make the deps layer");

    // A second worker with an empty cache: the deps layer comes from the shared cache.
    let c2 = tmp.path().join("c2");
    let _w2 = worker(&nats, &reg, &base, &c2, &npm, &[]);
    let second = rt.block_on(submit_and_wait(&queue, express, "expb", "exp-b", &scratch));
    let deps2 = second.layers.iter().find(|l| l.kind == "deps").unwrap();
    assert_eq!(deps2.digest, deps.digest);
    assert!(deps2.cache_hit, "{second:?}");
    let hex = deps.digest.strip_prefix("sha256:").unwrap();
    assert!(
        !c2.join("blobs/sha256").join(hex).exists(),
        "worker 2 made or downloaded the deps layer"
    );
    let app = run(&pull_and_unpack(
        &second.image,
        None,
        &tmp.path().join("run"),
    ));
    let (status, body) = http(&app, "GET", "/users/7", None);
    assert_eq!((status, body.as_str()), (200, r#"{"id":"7"}"#));
}

#[test]
fn queue_drains_across_nats_and_registry_restarts_and_sigterm_stops_a_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let mut nats = TestNats::start();
    let mut reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let mut w1 = worker(&nats, &reg, &base, &tmp.path().join("w1"), &npm, &[]);
    let _w2 = worker(&nats, &reg, &base, &tmp.path().join("w2"), &npm, &[]);
    let rt = tokio_rt();
    // The registry is down while the jobs arrive: every push fails and is retried.
    reg.down();
    let jobs = rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let scratch = tmp.path().join("submit");
        let mut jobs = Vec::new();
        for i in 0..40 {
            let app = format!("rs{}", i % 4);
            let dir = faas_variant(
                tmp.path(),
                &format!("r{i}"),
                "hello",
                "greeting",
                &format!("r {i}"),
            );
            let id = format!("restart-{i}");
            let submission = submission(dir, &app, &id);
            submit(&queue, &submission, &scratch).await.unwrap();
            jobs.push((app, id));
        }
        jobs
    });
    // NATS restarts with the queue still full, then the registry comes back.
    nats.down();
    std::thread::sleep(Duration::from_millis(500));
    nats.up();
    std::thread::sleep(Duration::from_millis(300));
    reg.up();
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let done = wait_for_revisions(&queue, &jobs, Duration::from_secs(240)).await;
        assert_exactly_one_each(&queue, &done).await;
    });

    // SIGTERM: the worker stops taking jobs and exits cleanly.
    let pid = w1.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = w1.child.try_wait().unwrap() {
            assert!(status.success(), "worker exit after SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "worker ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_job_failing_transiently_on_every_delivery_gives_up_and_leaves_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let _w = worker(&nats, &reg, &base, &tmp.path().join("w"), &npm, &[]);
    let rt = tokio_rt();
    rt.block_on(async {
        use futures_util::StreamExt;
        let queue = Queue::connect(&nats.url).await.unwrap();
        let mut events = queue.client.subscribe("kiln.events.doomed").await.unwrap();
        // Its base is on a registry nobody listens on: a transient fault, every time.
        let mut job = submission(root().join("fixtures/faas-hello"), "doomed", "doomed");
        job.base = Some(format!("127.0.0.1:{}/base/node:20", free_port()));
        submit(&queue, &job, &tmp.path().join("submit"))
            .await
            .unwrap();
        let mut retryable = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let last = loop {
            let msg = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("a final failure in time")
                .unwrap();
            let event: kiln_queue::Event = serde_json::from_slice(&msg.payload).unwrap();
            match event.kind {
                kiln_queue::EventKind::Failed {
                    retryable: true, ..
                } => retryable += 1,
                kiln_queue::EventKind::Failed { reason, .. } => break reason,
                kiln_queue::EventKind::Revision { .. } => panic!("a revision without a base"),
                _ => {}
            }
        };
        assert_eq!(retryable, 4, "retried before giving up");
        assert!(
            last.contains("gave up after 5 attempts") && last.contains("cannot connect"),
            "{last}"
        );
        let mut stream = queue.js.get_stream("KILN_JOBS").await.unwrap();
        assert_eq!(
            stream.info().await.unwrap().state.messages,
            0,
            "the job stayed queued"
        );
    });
}

/// A job whose worker dies on every delivery (here: killed as soon as it starts building)
/// uses up its deliveries; the server's max-deliveries advisory is kept in
/// `KILN_ADVISORIES`, and a worker reports the job failed and removes it from the work queue.
#[test]
fn a_job_that_kills_its_worker_on_every_delivery_is_given_up_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let cache = tmp.path().join("w");
    let start = || {
        let args = ["--ack-wait-secs", "1", "--grace-secs", "1"];
        start_worker(
            &nats.url,
            &reg.addr,
            &base,
            &cache,
            &npm,
            &args,
            Stdio::null(),
        )
    };
    // The poison job's base is on a server that accepts connections and never answers, so
    // each delivery stays busy until the worker is killed.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let rt = tokio_rt();
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let mut events = queue.client.subscribe("kiln.events.poison").await.unwrap();
        let mut job = submission(root().join("fixtures/faas-hello"), "poison", "poison");
        job.base = Some(format!("{}/base/node:20", silent.local_addr().unwrap()));
        submit(&queue, &job, &tmp.path().join("submit"))
            .await
            .unwrap();
        // Kill the worker as each attempt starts, until the fifth (a delivery to a pull
        // request of a worker already dead would count without an event).
        let mut attempt = 0;
        while attempt < 5 {
            let mut w = start();
            loop {
                match next_event(&mut events).await.kind {
                    kiln_queue::EventKind::Building { attempt: a, .. } => {
                        assert!(a > attempt, "attempt {a} after {attempt}");
                        attempt = a;
                        break;
                    }
                    kiln_queue::EventKind::Failed { reason, .. } => {
                        panic!(
                            "attempt {} failed instead of hanging: {reason}",
                            attempt + 1
                        )
                    }
                    _ => {}
                }
            }
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        assert_eq!(attempt, 5);
        // The next worker's fetch makes the server give the job up (pull consumers redeliver
        // on a pull); its advisory is kept in KILN_ADVISORIES for whichever worker takes it.
        let mut advisories = queue.js.get_stream("KILN_ADVISORIES").await.unwrap();
        let _w = start();
        let reason = loop {
            match next_event(&mut events).await.kind {
                kiln_queue::EventKind::Failed {
                    reason,
                    retryable: false,
                } => break reason,
                kiln_queue::EventKind::Building { attempt, .. } => {
                    panic!("delivered again (attempt {attempt}) after giving up")
                }
                _ => {}
            }
        };
        assert!(reason.contains("gave up after 5 deliveries"), "{reason}");
        let mut jobs = queue.js.get_stream("KILN_JOBS").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while jobs.info().await.unwrap().state.messages != 0
            || advisories.info().await.unwrap().state.messages != 0
        {
            assert!(Instant::now() < deadline, "the job or its advisory stayed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The worker goes on with the next job.
        let dir = faas_variant(tmp.path(), "after", "hello", "greeting", "after");
        let revision =
            submit_and_wait(&queue, dir, "after", "after-1", &tmp.path().join("submit")).await;
        assert_eq!(revision.name, "after-00001");
    });
}

/// The next event on `events` (waiting at most a minute).
async fn next_event(events: &mut async_nats::Subscriber) -> kiln_queue::Event {
    use futures_util::StreamExt;
    let next = tokio::time::timeout(Duration::from_secs(60), events.next());
    let msg = next.await.expect("an event in time").unwrap();
    serde_json::from_slice(&msg.payload).unwrap()
}
