//! The fault suite, against real servers on loopback: 100 jobs while workers are killed with
//! SIGKILL, connections to NATS and the registry are cut, refused, truncated and slowed, and
//! nats-server restarts. Each fault is counted where it takes effect and must take effect
//! exactly as often as RELIABILITY.md says; every job must end in exactly one revision (no
//! final `failed` event), checked in the KV once the queue is drained and the workers are
//! stopped; the caches must validate.
//! Also: credentials never reach events, logs or layers; a full cache disk fails cleanly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::RawMessageErrorKind;
use common::nats::TestNats;
use common::proxy::Proxy;
use common::registry::TestRegistry;
use common::*;
use futures_util::StreamExt;
use kiln_layers::BlobStore;
use kiln_layers::validate::validate_blobs;
use kiln_queue::submit::submit;
use kiln_queue::{EventKind, Queue, Revision};

/// The consumer's ack wait in the fault suite (quick redelivery after a kill).
const ACK_WAIT: Duration = Duration::from_secs(2);
/// Jobs queued: 25 apps × 4.
const JOBS: usize = 100;
const APPS: usize = 25;
/// Each fault, counted where it takes effect (see RELIABILITY.md, "Fault suite").
const KILLS: usize = 6;
const NATS_CUTS: usize = 6;
const REGISTRY_CUTS: usize = 6;
const REFUSED: usize = 12;
const TRUNCATED: usize = 12;
const DELAYS: usize = 6;
/// A truncated registry connection carries this much of its requests, then is cut.
const TRUNCATE_AFTER: u64 = 3 * 1024;

/// A worker of the fault suite: its own name (in its `building` events) and `/metrics`.
struct FaultWorker {
    worker: TestWorker,
    name: String,
    metrics: String,
    /// Its stderr.
    log: PathBuf,
}

impl FaultWorker {
    /// Fails the test if the worker is no longer running, with the end of its log.
    fn assert_alive(&mut self) {
        if let Some(status) = self.worker.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            panic!(
                "worker {} exited on its own ({status}); its log ends:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A worker with a short ack wait and 3 jobs at once, named `name`.
fn fault_worker(
    nats: &str,
    registry: &str,
    base: &str,
    cache: &Path,
    npm: &Path,
    name: &str,
) -> FaultWorker {
    let metrics = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(cache.with_file_name(format!("{name}.log"))).unwrap();
    let ack_wait = ACK_WAIT.as_secs().to_string();
    let args = [
        "--ack-wait-secs",
        ack_wait.as_str(),
        "--jobs",
        "3",
        "--name",
        name,
        "--metrics",
        metrics.as_str(),
    ];
    FaultWorker {
        worker: start_worker(nats, registry, base, cache, npm, &args, Stdio::from(log)),
        log: cache.with_file_name(format!("{name}.log")),
        name: name.to_owned(),
        metrics,
    }
}

/// Job deliveries a worker has started and not yet ended (its `/metrics`: started minus
/// revision, failed and retried); `None` when it does not answer.
fn jobs_in_hand(metrics: &str) -> Option<u64> {
    let mut conn = std::net::TcpStream::connect(metrics).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let count = |outcome: &str| -> Option<u64> {
        let prefix = format!("kiln_jobs_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))?
            .trim()
            .parse()
            .ok()
    };
    let ended = count("revision")? + count("failed")? + count("retried")?;
    Some(count("started")?.saturating_sub(ended))
}

/// SIGKILLs `w` if it is alive and holds a job: returns the jobs it held.
fn kill_if_holding_a_job(w: &mut FaultWorker) -> Option<u64> {
    w.assert_alive();
    let in_hand = jobs_in_hand(&w.metrics).filter(|n| *n > 0)?;
    w.assert_alive();
    let child = &mut w.worker.child;
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "worker {}: {status}", w.name);
    Some(in_hand)
}

/// Messages in `KILN_JOBS`, and pending and ack-pending ones of `kiln-workers`.
async fn queue_backlog(queue: &Queue) -> Result<(u64, u64, usize), String> {
    let mut stream = queue
        .js
        .get_stream(kiln_queue::nats::JOBS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let messages = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .messages;
    let consumer = stream
        .consumer_info(kiln_queue::nats::WORKERS_CONSUMER)
        .await
        .map_err(|e| e.to_string())?;
    Ok((messages, consumer.num_pending, consumer.num_ack_pending))
}

/// Waits until `KILN_JOBS` is empty and `kiln-workers` has nothing pending or unacked.
async fn wait_drained(queue: &Queue, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let backlog = queue_backlog(queue).await;
        if backlog == Ok((0, 0, 0)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue not drained after {within:?}: (messages, pending, ack pending) = {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every message of stream `name`, oldest first, as (subject, payload).
async fn stream_messages(queue: &Queue, name: &str) -> Vec<(String, Vec<u8>)> {
    let mut stream = queue.js.get_stream(name).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence.max(1)..=state.last_sequence {
        match stream.get_raw_message(seq).await {
            Ok(m) => out.push((m.subject.to_string(), m.payload.to_vec())),
            // Deleted (none are, in a limits stream within its age).
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
            Err(e) => panic!("{name} message {seq}: {e}"),
        }
    }
    assert_eq!(out.len() as u64, state.messages, "{name}: messages read");
    out
}

/// Every `rev.<app>.<n>` record in the `kiln-revisions` KV, whatever the app, by app and
/// number (the key's number must be the record's).
async fn all_revisions(queue: &Queue) -> BTreeMap<String, BTreeMap<u64, Revision>> {
    let keys: Vec<String> = queue
        .revisions
        .keys()
        .await
        .unwrap()
        .map(|k| k.unwrap())
        .collect()
        .await;
    let mut all: BTreeMap<String, BTreeMap<u64, Revision>> = BTreeMap::new();
    for key in keys.iter().filter(|k| k.starts_with("rev.")) {
        let bytes = queue.revisions.get(key).await.unwrap().unwrap();
        let r: Revision = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(key, &format!("rev.{}.{:05}", r.app, r.number), "{r:?}");
        all.entry(r.app.clone()).or_default().insert(r.number, r);
    }
    all
}

/// What the faults did, counted where each took effect.
#[derive(Debug, Default)]
struct Applied {
    /// SIGKILLs of a live worker holding at least one job, and the jobs they held.
    kills: usize,
    jobs_in_hand_at_kills: u64,
    killed: Vec<String>,
    /// Rounds that cut at least one open NATS connection, and connections cut.
    nats_cuts: usize,
    nats_connections_cut: usize,
    /// Rounds that cut at least one open registry connection, and connections cut.
    registry_cuts: usize,
    registry_connections_cut: usize,
    /// Rounds of refusals asked for (2 each) and of truncations asked for (2 each).
    refusal_rounds: usize,
    truncation_rounds: usize,
    /// Rounds of 40 ms added per chunk.
    delays: usize,
    restarted: bool,
    /// The round after which every fault had taken effect.
    complete_at: Option<usize>,
}

#[test]
fn a_hundred_jobs_through_kills_cut_connections_and_a_nats_restart() {
    let started = Instant::now();
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
    let start = |slot: usize, generation: usize| {
        let name = format!("fault-w{slot}-g{generation}");
        fault_worker(
            &nats_via,
            &reg_proxy.addr,
            &base,
            &caches[slot],
            &npm,
            &name,
        )
    };
    let mut workers = vec![start(0, 0), start(1, 0)];

    let rt = tokio_rt();
    let queue = rt.block_on(Queue::connect(&nats.url)).unwrap();
    let mut events = rt
        .block_on(queue.client.subscribe("kiln.events.>"))
        .unwrap();
    let scratch = tmp.path().join("submit");
    let mut jobs: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..JOBS {
        let app = format!("f{}", i % APPS);
        let id = format!("fault-{i}");
        let dir = faas_variant(tmp.path(), &format!("src{i}"), "job", "job", &i.to_string());
        let submission = submission(dir, &app, &id);
        rt.block_on(submit(&queue, &submission, &scratch)).unwrap();
        jobs.insert(id, app);
    }

    // Faults while the queue drains, one kind per round, until each has taken effect as
    // often as it should. A fault that cannot take effect in its round (no job in hand, no
    // open connection, refusals or truncations still pending) is tried again 6 rounds later.
    let mut applied = Applied::default();
    let mut final_failures: BTreeMap<String, String> = BTreeMap::new();
    let mut done: BTreeMap<String, Revision> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(420);
    let mut round = 0;
    while done.len() + final_failures.len() < JOBS {
        assert!(
            Instant::now() < deadline,
            "{} revisions and {} final failures of {JOBS} jobs; faults: {applied:?}",
            done.len(),
            final_failures.len(),
        );
        match round % 6 {
            // Whichever worker holds a job first within 3 s (worker 0 asked first).
            0 if applied.kills < KILLS => {
                let until = Instant::now() + Duration::from_secs(3);
                'kill: while Instant::now() < until {
                    for (slot, worker) in workers.iter_mut().enumerate() {
                        if let Some(held) = kill_if_holding_a_job(worker) {
                            applied.kills += 1;
                            applied.jobs_in_hand_at_kills += held;
                            applied.killed.push(worker.name.clone());
                            *worker = start(slot, applied.kills);
                            break 'kill;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            1 if applied.nats_cuts < NATS_CUTS => {
                let cut = nats_proxy.cut_all();
                if cut > 0 {
                    applied.nats_cuts += 1;
                    applied.nats_connections_cut += cut;
                }
            }
            2 => {
                // The next 2 connections are refused: the ones opened again after the cut.
                if applied.refusal_rounds < REFUSED / 2 && reg_proxy.drops_pending() == 0 {
                    reg_proxy.drop_next(2);
                    applied.refusal_rounds += 1;
                }
                if applied.registry_cuts < REGISTRY_CUTS {
                    let cut = reg_proxy.cut_all();
                    if cut > 0 {
                        applied.registry_cuts += 1;
                        applied.registry_connections_cut += cut;
                    }
                }
            }
            3 if !applied.restarted && round > 6 => {
                nats.down();
                std::thread::sleep(Duration::from_millis(300));
                nats.up();
                applied.restarted = true;
            }
            // 40 ms on every chunk both ways, to NATS and the registry, for one round.
            5 if applied.delays < DELAYS => {
                for proxy in [&nats_proxy, &reg_proxy] {
                    proxy.set_delay(Duration::from_millis(40));
                }
                applied.delays += 1;
            }
            _ => {}
        }
        // Every round: once the last two are done, the next two registry connections to
        // carry 3 KiB are cut there (requests cut off in the middle).
        if applied.truncation_rounds < TRUNCATED / 2 && reg_proxy.truncations_pending() == 0 {
            reg_proxy.truncate_next(2, TRUNCATE_AFTER);
            applied.truncation_rounds += 1;
        }
        if applied.complete_at.is_none()
            && applied.kills == KILLS
            && applied.nats_cuts == NATS_CUTS
            && applied.registry_cuts == REGISTRY_CUTS
            && reg_proxy.dropped() == REFUSED
            && reg_proxy.truncated() == TRUNCATED
            && applied.delays == DELAYS
            && applied.restarted
        {
            applied.complete_at = Some(round);
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
                    final_failures.insert(e.job_id, reason);
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                for (job, app) in &jobs {
                    if done.contains_key(job) {
                        continue;
                    }
                    match kiln_queue::revisions::by_job(&queue, app, job, false).await {
                        Ok(Some(r)) => {
                            done.insert(job.clone(), r);
                        }
                        Ok(None) => {}
                        Err(_) => return,
                    }
                }
            })
            .await;
        });
    }
    for proxy in [&nats_proxy, &reg_proxy] {
        proxy.set_delay(Duration::ZERO);
    }
    let drained_after = started.elapsed();
    eprintln!(
        "fault suite: {} of {JOBS} jobs recorded, {} final failures, {round} rounds in {drained_after:?}; \
         {} kills ({} jobs in hand), NATS cut {} times ({} connections), registry cut {} times \
         ({} connections), refused {}, truncated {}, delayed {} rounds, nats restarted: {}, \
         all faults done after round {:?}",
        done.len(),
        final_failures.len(),
        applied.kills,
        applied.jobs_in_hand_at_kills,
        applied.nats_cuts,
        applied.nats_connections_cut,
        applied.registry_cuts,
        applied.registry_connections_cut,
        reg_proxy.dropped(),
        reg_proxy.truncated(),
        applied.delays,
        applied.restarted,
        applied.complete_at,
    );
    assert!(
        final_failures.is_empty(),
        "final failures: {final_failures:?}"
    );
    assert_eq!(done.len(), JOBS);
    // Every fault took effect exactly as often as RELIABILITY.md says.
    let faults = [
        ("SIGKILL of a worker holding a job", applied.kills, KILLS),
        (
            "cut of every open NATS connection",
            applied.nats_cuts,
            NATS_CUTS,
        ),
        (
            "cut of every open registry connection",
            applied.registry_cuts,
            REGISTRY_CUTS,
        ),
        ("registry connection refused", reg_proxy.dropped(), REFUSED),
        (
            "registry request truncated",
            reg_proxy.truncated(),
            TRUNCATED,
        ),
        ("round of 40 ms delays", applied.delays, DELAYS),
        ("nats-server restart", usize::from(applied.restarted), 1),
    ];
    for (fault, count, expected) in faults {
        assert_eq!(
            count, expected,
            "{fault}: took effect {count} times, not {expected} (the queue drained first?)"
        );
    }

    // Exactly once, checked at rest: the queue drained, then (after a late redelivery would
    // have had its chance with the workers still up) the workers stopped.
    rt.block_on(wait_drained(&queue, Duration::from_secs(120)));
    std::thread::sleep(ACK_WAIT * 2 + Duration::from_secs(1));
    for w in &mut workers {
        w.assert_alive();
    }
    let names: Vec<String> = workers.iter().map(|w| w.name.clone()).collect();
    drop(workers);
    std::thread::sleep(ACK_WAIT + Duration::from_secs(1));
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        assert_eq!(
            queue_backlog(&queue).await,
            Ok((0, 0, 0)),
            "a job came back after the queue drained"
        );

        // Revisions: every record in the KV, whatever its app.
        let all = all_revisions(&queue).await;
        let apps: BTreeSet<&String> = jobs.values().collect();
        for app in all.keys() {
            assert!(apps.contains(app), "revision of an unknown app {app}");
        }
        let mut per_job: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (app, revisions) in &all {
            let numbers: Vec<u64> = revisions.keys().copied().collect();
            let expected: Vec<u64> = (1..=revisions.len() as u64).collect();
            assert_eq!(numbers, expected, "{app}: gap in revision numbers");
            let listed = kiln_queue::revisions::list(&queue, app).await.unwrap();
            let listed: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
            let stored: Vec<&str> = revisions.values().map(|r| r.name.as_str()).collect();
            assert_eq!(listed, stored, "{app}: revisions::list");
            for r in revisions.values() {
                assert_eq!(
                    jobs.get(&r.job_id),
                    Some(app),
                    "{} for unknown job {}",
                    r.name,
                    r.job_id
                );
                per_job.entry(&r.job_id).or_default().push(&r.name);
            }
        }
        for (job, app) in &jobs {
            let recorded = per_job.get(job.as_str()).cloned().unwrap_or_default();
            assert_eq!(recorded.len(), 1, "{job}: revisions {recorded:?}");
            assert_eq!(done[job].name, recorded[0], "{job}: index");
            let indexed = kiln_queue::revisions::by_job(&queue, app, job, false)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(indexed.name, recorded[0], "{job}: job index");
        }
        assert_eq!(per_job.len(), JOBS);
        assert_eq!(all.len(), APPS);

        // Events, read back from KILN_EVENTS: one `accepted` per job (so they were all
        // captured), no final `failed`, and each killed worker had taken a job.
        let mut accepted: BTreeMap<String, usize> = BTreeMap::new();
        let mut final_failed = Vec::new();
        let mut retried = 0;
        let mut builders: BTreeSet<String> = BTreeSet::new();
        let mut max_attempt = 0;
        for (subject, payload) in stream_messages(&queue, kiln_queue::nats::EVENTS_STREAM).await {
            let e: kiln_queue::Event =
                serde_json::from_slice(&payload).unwrap_or_else(|err| panic!("{subject}: {err}"));
            assert!(jobs.contains_key(&e.job_id), "event of unknown job: {e:?}");
            match e.kind {
                EventKind::Accepted => *accepted.entry(e.job_id).or_default() += 1,
                EventKind::Building { worker, attempt } => {
                    builders.insert(worker);
                    max_attempt = max_attempt.max(attempt);
                }
                EventKind::Failed {
                    retryable: false,
                    reason,
                } => final_failed.push((e.job_id, reason)),
                EventKind::Failed { .. } => retried += 1,
                _ => {}
            }
        }
        assert_eq!(accepted.len(), JOBS, "accepted events");
        assert!(accepted.values().all(|n| *n == 1), "{accepted:?}");
        assert!(
            final_failed.is_empty(),
            "final failed events: {final_failed:?}"
        );
        // (A `building` event can be lost to a cut, so this is reported, not asserted.)
        let killed_seen = applied
            .killed
            .iter()
            .filter(|n| builders.contains(*n))
            .count();
        eprintln!(
            "fault suite at rest: {JOBS} jobs, {} revisions in {} apps, 0 doubled, 0 gaps, \
             {retried} retryable failures, highest attempt {max_attempt}, killed workers seen \
             building: {killed_seen} of {}, workers at the end: {names:?}",
            per_job.len(),
            all.len(),
            applied.killed.len(),
        );
    });

    // The caches the killed workers left behind hold only whole, correct blobs.
    for cache in &caches {
        let store = BlobStore::open(cache).unwrap();
        let blobs = validate_blobs(&store).unwrap();
        assert!(blobs > 0);
    }
    eprintln!("fault suite took {:?}", started.elapsed());
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
    let cache = tmp.path().join("w");
    let mut worker = kiln_cmd(&cache, &npm)
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

    // Everything published on kiln.> (jobs, events, revisions), and every value in the KV
    // buckets, one text each.
    let mut texts: Vec<(String, Vec<u8>)> = Vec::new();
    rt.block_on(async {
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(200), events.next()).await
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
    let on_kiln = texts.len();
    assert!(
        texts
            .iter()
            .any(|(what, t)| what.starts_with("message on kiln.events.")
                && String::from_utf8_lossy(t).contains("secret-00001")),
        "events not captured ({on_kiln} messages and KV values)"
    );
    let err = std::fs::read(tmp.path().join("worker.err")).unwrap();
    let err_text = String::from_utf8_lossy(&err);
    assert!(
        err_text.contains("debug") || err_text.contains("DEBUG"),
        "no debug log captured"
    );
    texts.push(("submit stdout".into(), out.stdout.clone()));
    texts.push(("submit stderr".into(), out.stderr.clone()));
    texts.push(("worker stdout".into(), std::fs::read(&log).unwrap()));
    texts.push(("worker stderr".into(), err.clone()));

    let bundle = pull_and_unpack(
        revision["image"].as_str().unwrap(),
        Some(&format!("ci:{password}")),
        tmp.path(),
    );
    assert!(bundle.join("rootfs/app").is_dir(), "nothing unpacked");
    let texts: Vec<(&str, &[u8])> = texts
        .iter()
        .map(|(what, t)| (what.as_str(), t.as_slice()))
        .collect();
    // Plain, URL-encoded, JSON-escaped and base64 at any offset; gzip blobs inflated too.
    secrets::assert_absent(password, &texts, &[bundle.as_path(), cache.as_path()]);
    eprintln!(
        "password absent from {on_kiln} messages and KV values, 4 outputs, the unpacked image and the worker's cache"
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
