//! End-to-end tests of the NATS worker: real nats-server (JetStream) and docker-registry on
//! loopback, real `kiln worker` processes; images pulled back, unpacked, run and called.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use common::nats::TestNats;
use common::nats::exactly_once::{
    assert_exactly_once, sigterm, submit_variants, wait_drained, wait_for_revisions,
};
use common::proxy::Proxy;
use common::registry::TestRegistry;
use common::*;
use futures_util::StreamExt;
use kiln_queue::submit::submit;
use kiln_queue::{Event, EventKind, Queue, Revision};

/// The ack wait [`worker`] gives its workers.
const ACK_WAIT: Duration = Duration::from_secs(3);

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

/// Every event of `job_id` kept in `KILN_EVENTS`, oldest first.
async fn job_events(queue: &Queue, job_id: &str) -> Vec<Event> {
    let stream = queue
        .js
        .get_stream(kiln_queue::nats::EVENTS_STREAM)
        .await
        .unwrap();
    let mut reader: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: kiln_queue::nats::events_subject(job_id),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = reader.info().await.unwrap().num_pending as usize;
    let mut events = Vec::new();
    if pending > 0 {
        let mut messages = reader
            .fetch()
            .max_messages(pending)
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .unwrap();
        while let Some(message) = messages.next().await {
            events.push(serde_json::from_slice(&message.unwrap().payload).unwrap());
        }
    }
    assert_eq!(events.len(), pending, "events of {job_id} read back");
    events
}

/// The final (not retryable) `failed` events of `job_id` in `KILN_EVENTS`: asserts there is
/// exactly one and returns its reason.
async fn the_one_final_failure(queue: &Queue, job_id: &str) -> String {
    let events = job_events(queue, job_id).await;
    let finals: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Failed {
                reason,
                retryable: false,
            } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        finals.len(),
        1,
        "job {job_id}: {} final failed events in KILN_EVENTS, want exactly 1: {finals:?}",
        finals.len()
    );
    finals[0].to_owned()
}

/// Every event on `kiln.events.>` from the moment it starts, collected in the background.
struct EventLog(Arc<Mutex<Vec<Event>>>);

impl EventLog {
    async fn start(queue: &Queue) -> EventLog {
        let mut sub = queue.client.subscribe("kiln.events.>").await.unwrap();
        queue.client.flush().await.unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                if let Ok(event) = serde_json::from_slice::<Event>(&message.payload) {
                    sink.lock().unwrap().push(event);
                }
            }
        });
        EventLog(log)
    }

    /// Waits (at most `within`) until `found` answers something about the events so far.
    async fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        found: impl Fn(&[Event]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(answer) = found(&self.0.lock().unwrap()) {
                return answer;
            }
            assert!(Instant::now() < deadline, "no {what} within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The jobs `worker` is building according to `events`: each job with its delivery count,
/// taken by `worker` (a `building` event) and not finished since (no `revision` or `failed`
/// event after it).
fn in_hand(events: &[Event], worker: &str) -> BTreeMap<String, u64> {
    let mut held = BTreeMap::new();
    for e in events {
        match &e.kind {
            EventKind::Building { worker: w, attempt } if w == worker => {
                held.insert(e.job_id.clone(), *attempt);
            }
            EventKind::Revision { .. } | EventKind::Failed { .. } => {
                held.remove(&e.job_id);
            }
            _ => {}
        }
    }
    held
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
    let mut w = worker(&nats, &reg, &base, &tmp.path().join("w"), &npm, &[]);
    let rt = tokio_rt();
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let mut events = queue.client.subscribe("kiln.events.>").await.unwrap();

        // Malformed JSON, a job with an unknown runtime, a missing source object.
        // Its failure is reported under its message id.
        queue
            .publish_with_id(
                "kiln.jobs.build.x".into(),
                b"{not json".to_vec().into(),
                "malformed",
            )
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
            ("malformed", "payload"),
            ("missing-source", "not found"),
            ("unknown-runtime", "runtime"),
            ("bad-pkg", "package.json"),
        ]);
        let mut failed = BTreeMap::new();
        let mut good = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while failed.len() < expected.len() || good.is_none() {
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
            let reason = failed
                .get(job)
                .unwrap_or_else(|| panic!("no failure for {job}: {failed:#?}"));
            assert!(reason.contains(part), "{job}: {reason}");
        }
        assert_eq!(good.unwrap().name, "good-00001");
        // Terminated jobs left the work queue.
        wait_drained(&queue, Duration::from_secs(10)).await;
        // Once the worker has stopped, each bad job has exactly one final `failed` event in
        // KILN_EVENTS, and the good one none.
        let status = sigterm(&mut w, Duration::from_secs(30)).await;
        assert!(status.success(), "worker exit after SIGTERM: {status}");
        for job in failed.keys() {
            the_one_final_failure(&queue, job).await;
        }
        let good_events = job_events(&queue, "good-1").await;
        assert!(
            !good_events
                .iter()
                .any(|e| matches!(e.kind, EventKind::Failed { .. })),
            "{good_events:?}"
        );
    });
}

#[test]
fn two_workers_fifty_jobs_ten_apps_exactly_one_revision_each() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let w1 = worker(
        &nats,
        &reg,
        &base,
        &tmp.path().join("w1"),
        &npm,
        &["--jobs", "3"],
    );
    let w2 = worker(
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
        let timeout = Duration::from_secs(240);
        assert_exactly_once(&queue, &jobs, vec![w1, w2], timeout, ACK_WAIT).await;
    });
}

/// SIGKILL of a worker 5 times while 24 jobs drain, each kill landing while that worker is
/// building a job (it published `building` for the job and nothing has ended the job since);
/// every kill must have interrupted a job in hand (the job is delivered again), and every job,
/// interrupted ones included, ends with exactly one revision.
#[test]
fn killed_workers_lose_no_job_and_double_none() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let w1_cache = tmp.path().join("w1");
    let name = |round: usize| format!("killed-w1-{round}");
    let start_w1 = |round: usize| {
        let args = ["--jobs", "2", "--name", &name(round)];
        worker(&nats, &reg, &base, &w1_cache, &npm, &args)
    };
    // The other worker takes one job at a time, so the queue outlasts the five kills.
    let w2_args = ["--jobs", "1", "--name", "killed-w2"];
    let w2 = worker(&nats, &reg, &base, &tmp.path().join("w2"), &npm, &w2_args);
    let rt = tokio_rt();
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let log = EventLog::start(&queue).await;
        let mut w1 = start_w1(0);
        let jobs = submit_variants(&queue, tmp.path(), "kill", 24, 4).await;
        // kill -9 the worker as soon as it has a job in hand, again and again while the queue
        // drains, restarting it each time.
        let mut kills: Vec<BTreeMap<String, u64>> = Vec::new();
        for round in 0..5 {
            let held = log
                .wait_for(
                    &format!("job in hand of {}", name(round)),
                    Duration::from_secs(60),
                    |events| Some(in_hand(events, &name(round))).filter(|h| !h.is_empty()),
                )
                .await;
            let _ = w1.child.kill();
            let _ = w1.child.wait();
            eprintln!("killed {} building {held:?}", name(round));
            kills.push(held);
            w1 = start_w1(round + 1);
        }
        let timeout = Duration::from_secs(240);
        let done = assert_exactly_once(&queue, &jobs, vec![w1, w2], timeout, ACK_WAIT).await;
        // A kill interrupted a job when the job was delivered again after it.
        let mut interrupted = 0;
        for (round, held) in kills.iter().enumerate() {
            let mut again = Vec::new();
            for (job, attempt) in held {
                let redelivered = job_events(&queue, job).await.iter().any(
                    |e| matches!(e.kind, EventKind::Building { attempt: a, .. } if a > *attempt),
                );
                if redelivered {
                    again.push(job.clone());
                    assert!(done.contains_key(job), "{job} has no revision");
                }
            }
            eprintln!("kill {round}: {held:?} in hand, delivered again: {again:?}");
            if !again.is_empty() {
                interrupted += 1;
            }
        }
        assert_eq!(
            interrupted, 5,
            "kills that interrupted a job in hand (delivered again afterwards): {kills:?}"
        );
    });
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
    let w1 = worker(&nats, &reg, &base, &tmp.path().join("w1"), &npm, &[]);
    let w2 = worker(&nats, &reg, &base, &tmp.path().join("w2"), &npm, &[]);
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
    // Once drained, SIGTERM stops both (idle) workers: each exits 0.
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let timeout = Duration::from_secs(240);
        assert_exactly_once(&queue, &jobs, vec![w1, w2], timeout, ACK_WAIT).await;
    });
}

/// SIGTERM while a worker is in the middle of two builds (every chunk to the registry delayed,
/// so each takes seconds): it starts no new job, finishes both jobs in hand and records their
/// revisions itself (no other worker runs and nothing is redelivered), then exits 0. The job
/// it left queued is built later by another worker, exactly once.
#[test]
fn sigterm_during_builds_finishes_the_jobs_in_hand_and_takes_no_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let proxy = Proxy::start(&reg.addr);
    let base = push_host_base(&proxy.addr, &npm, &[]);
    let start = |name: &str, cache: &str| {
        let args = ["--ack-wait-secs", "3", "--grace-secs", "120"];
        let args = [&args[..], &["--jobs", "2", "--name", name]].concat();
        let cache = tmp.path().join(cache);
        start_worker(
            &nats.url,
            &proxy.addr,
            &base,
            &cache,
            &npm,
            &args,
            Stdio::null(),
        )
    };
    let mut w = start("term-w1", "w1");
    let rt = tokio_rt();
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let log = EventLog::start(&queue).await;
        let scratch = tmp.path().join("submit");
        // A first job fills the worker's cache with the base.
        let submit_one = async |i: usize| {
            let id = format!("term-{i}");
            let dir = faas_variant(tmp.path(), &id, "hello", "greeting", &id);
            submit(&queue, &submission(dir, "term", &id), &scratch)
                .await
                .unwrap();
            ("term".to_owned(), id)
        };
        let mut jobs = vec![submit_one(0).await];
        wait_for_revisions(&queue, &jobs, Duration::from_secs(120)).await;
        // Then every chunk to and from the registry waits: a build takes seconds.
        proxy.set_delay(Duration::from_millis(200));
        for i in 1..=3 {
            jobs.push(submit_one(i).await);
        }
        let held = log
            .wait_for(
                "two jobs in hand of term-w1",
                Duration::from_secs(60),
                |events| Some(in_hand(events, "term-w1")).filter(|h| h.len() == 2),
            )
            .await;
        let status = sigterm(&mut w, Duration::from_secs(120)).await;
        assert!(status.success(), "worker exit after SIGTERM: {status}");
        // Checked before any other worker runs: whatever is recorded, this worker recorded.
        for job in held.keys() {
            let r = kiln_queue::revisions::by_job(&queue, "term", job, true)
                .await
                .unwrap();
            assert!(
                r.is_some(),
                "{job} was in hand at SIGTERM but has no revision when the worker exited"
            );
        }
        let mut stream = queue
            .js
            .get_stream(kiln_queue::nats::JOBS_STREAM)
            .await
            .unwrap();
        let mut consumer: consumer::PullConsumer = stream
            .get_consumer(kiln_queue::nats::WORKERS_CONSUMER)
            .await
            .unwrap();
        let info = consumer.info().await.unwrap().clone();
        let queued = stream.info().await.unwrap().state.messages;
        assert_eq!(
            (
                queued,
                info.num_pending,
                info.num_ack_pending,
                info.num_redelivered
            ),
            (1, 1, 0, 0),
            "after SIGTERM: (messages in KILN_JOBS, pending, ack-pending, redelivered)"
        );
        let ids: Vec<String> = jobs.iter().map(|(_, id)| id.clone()).collect();
        for job in &ids[1..] {
            let events = job_events(&queue, job).await;
            let building: Vec<_> = events
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::Building { worker, attempt } => Some((worker.as_str(), *attempt)),
                    _ => None,
                })
                .collect();
            let revisions = events
                .iter()
                .filter(|e| matches!(e.kind, EventKind::Revision { .. }))
                .count();
            if held.contains_key(job) {
                assert_eq!(building, [("term-w1", 1)], "{job}: deliveries");
                assert_eq!(revisions, 1, "{job}: revision events");
            } else {
                assert_eq!(building, [], "{job} was started after SIGTERM");
            }
        }
        // Another worker takes the job left queued.
        proxy.set_delay(Duration::ZERO);
        let w2 = start("term-w2", "w2");
        let timeout = Duration::from_secs(120);
        let done = assert_exactly_once(&queue, &jobs, vec![w2], timeout, ACK_WAIT).await;
        assert_eq!(done.len(), 4);
    });
}

#[test]
fn a_job_failing_transiently_on_every_delivery_gives_up_and_leaves_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let mut w = worker(&nats, &reg, &base, &tmp.path().join("w"), &npm, &[]);
    let rt = tokio_rt();
    rt.block_on(async {
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
        // With the queue and the advisories drained and the worker stopped: one final
        // `failed` event in KILN_EVENTS, after the four retryable ones.
        wait_drained(&queue, Duration::from_secs(10)).await;
        wait_no_advisories(&queue, Duration::from_secs(20)).await;
        let status = sigterm(&mut w, Duration::from_secs(30)).await;
        assert!(status.success(), "worker exit after SIGTERM: {status}");
        let reason = the_one_final_failure(&queue, "doomed").await;
        assert_eq!(reason, last);
        let kept = job_events(&queue, "doomed").await;
        let retried = kept
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::Failed {
                        retryable: true,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(retried, 4, "retryable failed events in KILN_EVENTS");
    });
}

/// Waits until `KILN_ADVISORIES` holds no advisory.
async fn wait_no_advisories(queue: &Queue, within: Duration) {
    let mut advisories = queue
        .js
        .get_stream(kiln_queue::nats::ADVISORIES_STREAM)
        .await
        .unwrap();
    let deadline = Instant::now() + within;
    while advisories.info().await.unwrap().state.messages != 0 {
        assert!(Instant::now() < deadline, "an advisory stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        let mut w = start();
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
        // Once the dust settles (queue and advisories drained, the worker stopped), the
        // poison job has exactly one final `failed` event in KILN_EVENTS and no revision.
        wait_drained(&queue, Duration::from_secs(10)).await;
        wait_no_advisories(&queue, Duration::from_secs(10)).await;
        let status = sigterm(&mut w, Duration::from_secs(30)).await;
        assert!(status.success(), "worker exit after SIGTERM: {status}");
        let reason = the_one_final_failure(&queue, "poison").await;
        assert!(reason.contains("gave up after 5 deliveries"), "{reason}");
        let poison = kiln_queue::revisions::by_job(&queue, "poison", "poison", true)
            .await
            .unwrap();
        assert!(poison.is_none(), "{poison:?}");
    });
}

/// The next event on `events` (waiting at most a minute).
async fn next_event(events: &mut async_nats::Subscriber) -> kiln_queue::Event {
    let next = tokio::time::timeout(Duration::from_secs(60), events.next());
    let msg = next.await.expect("an event in time").unwrap();
    serde_json::from_slice(&msg.payload).unwrap()
}
