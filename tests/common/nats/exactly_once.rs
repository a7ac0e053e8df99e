//! Exactly once, checked on a drained queue (the check of tests/worker.rs, shared here and
//! made to ride out a cluster's leader elections): every job has exactly one revision,
//! numbered 1..=n per app with no gap, none belongs to a job or app never submitted,
//! `revisions::list` and the `job.<id>` indexes agree, and `KILN_JOBS` is empty with nothing
//! pending or unacked. [`assert_accepted_once_and_none_failed`] adds the events' side.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use futures_util::StreamExt;
use kiln_queue::nats::{EVENTS_STREAM, JOBS_STREAM, WORKERS_CONSUMER, events_subject};
use kiln_queue::{Event, EventKind, Queue, Revision};

use crate::common::{TestWorker, faas_variant, submission};

/// Submits `count` distinct faas sources over `apps` apps (`<prefix><i % apps>`, job ids
/// `<prefix>-<i>`); returns the (app, job id) pairs.
pub async fn submit_variants(
    queue: &Queue,
    tmp: &Path,
    prefix: &str,
    count: usize,
    apps: usize,
) -> Vec<(String, String)> {
    submit_range(queue, tmp, prefix, 0..count, apps).await
}

/// [`submit_variants`] for the jobs numbered `range` only (a later batch of the same apps).
pub async fn submit_range(
    queue: &Queue,
    tmp: &Path,
    prefix: &str,
    range: std::ops::Range<usize>,
    apps: usize,
) -> Vec<(String, String)> {
    let mut jobs = Vec::new();
    for i in range {
        let app = format!("{prefix}{}", i % apps);
        let id = format!("{prefix}-{i}");
        let dir = faas_variant(tmp, &id, "hello", "greeting", &format!("{prefix} {i}"));
        kiln_queue::submit::submit(queue, &submission(dir, &app, &id), &tmp.join("submit"))
            .await
            .unwrap();
        jobs.push((app, id));
    }
    jobs
}

/// `op` until it succeeds, at most `within` (a cluster may be electing a leader).
pub async fn retrying<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    within: Duration,
    mut op: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e} (retrying)");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{what}: {e} (for {within:?})"),
        }
    }
}

/// How many of `jobs` have a `job.<id>` revision index.
pub async fn recorded(queue: &Queue, jobs: &[(String, String)]) -> usize {
    let mut done = 0;
    for (app, job) in jobs {
        if let Ok(Some(_)) = kiln_queue::revisions::by_job(queue, app, job, false).await {
            done += 1;
        }
    }
    done
}

/// Waits until every job id has a `job.<id>` revision index; returns job id → revision.
pub async fn wait_for_revisions(
    queue: &Queue,
    jobs: &[(String, String)],
    timeout: Duration,
) -> BTreeMap<String, Revision> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut done = BTreeMap::new();
        for (app, job) in jobs {
            if let Ok(Some(r)) = kiln_queue::revisions::by_job(queue, app, job, false).await {
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
pub async fn last_event(queue: &Queue, job_id: &str) -> String {
    let Ok(stream) = queue.js.get_stream(EVENTS_STREAM).await else {
        return "(no events stream)".into();
    };
    match stream
        .get_last_raw_message_by_subject(&events_subject(job_id))
        .await
    {
        Ok(message) => String::from_utf8_lossy(&message.payload).into_owned(),
        Err(e) => format!("(no event: {e})"),
    }
}

/// The check of revisions (see the module doc). Waits until every job has a revision, then
/// until the queue is drained; lets the workers run past `ack_wait` (a late redelivery gets
/// its chance and must find the queue drained again), stops them with SIGTERM (each must exit
/// 0), and only then reads every `rev.*` key of the KV.
pub async fn assert_exactly_once(
    queue: &Queue,
    jobs: &[(String, String)],
    workers: Vec<TestWorker>,
    timeout: Duration,
    ack_wait: Duration,
) -> BTreeMap<String, Revision> {
    let done = wait_for_revisions(queue, jobs, timeout).await;
    wait_drained(queue, Duration::from_secs(60)).await;
    tokio::time::sleep(ack_wait + Duration::from_secs(1)).await;
    wait_drained(queue, Duration::from_secs(60)).await;
    for mut w in workers {
        let status = sigterm(&mut w, Duration::from_secs(30)).await;
        assert!(status.success(), "worker exit after SIGTERM: {status}");
    }
    wait_drained(queue, Duration::from_secs(5)).await;

    let mut expected: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (app, job) in jobs {
        expected.entry(app).or_default().insert(job);
    }
    let recorded = all_revisions(queue).await;
    for app in recorded.keys() {
        assert!(
            expected.contains_key(app.as_str()),
            "revisions of app {app}, which no job was for: {:?}",
            names(&recorded[app])
        );
    }
    for (app, app_jobs) in &expected {
        let revisions = recorded.get(*app).cloned().unwrap_or_default();
        let mut by_job: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in &revisions {
            assert_eq!(&r.app, app, "{} is filed under {app}", r.name);
            assert!(
                app_jobs.contains(r.job_id.as_str()),
                "{} belongs to job {:?}, which was never submitted for {app}",
                r.name,
                r.job_id
            );
            by_job.entry(&r.job_id).or_default().push(&r.name);
        }
        for job in app_jobs {
            match by_job.get(job).map(Vec::as_slice) {
                Some([_]) => {}
                Some(more) => panic!("job {job} has {} revisions: {more:?}", more.len()),
                None => panic!("job {job} has no revision in the KV"),
            }
        }
        let numbers: Vec<u64> = revisions.iter().map(|r| r.number).collect();
        assert_eq!(
            numbers,
            (1..=app_jobs.len() as u64).collect::<Vec<_>>(),
            "{app}: revision numbers are not 1..={} ({:?})",
            app_jobs.len(),
            names(&revisions)
        );
        let listed = kiln_queue::revisions::list(queue, app).await.unwrap();
        assert_eq!(
            names(&listed),
            names(&revisions),
            "{app}: revisions::list disagrees with the KV"
        );
        for r in &revisions {
            assert_eq!(
                done[&r.job_id].name, r.name,
                "job.{} does not name its revision",
                r.job_id
            );
        }
    }
    done
}

/// Every job of `jobs` was accepted once (one `accepted` event) and none failed finally.
pub async fn assert_accepted_once_and_none_failed(queue: &Queue, jobs: &[(String, String)]) {
    let events = all_events(queue).await;
    for (_, job) in jobs {
        let subject = events_subject(job);
        let mine: Vec<&Event> = events
            .iter()
            .filter(|(s, _)| *s == subject)
            .map(|(_, e)| e)
            .collect();
        let accepted = mine
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Accepted))
            .count();
        assert_eq!(accepted, 1, "job {job}: {accepted} accepted events");
        let finals: Vec<&str> = mine
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Failed {
                    reason,
                    retryable: false,
                } => Some(reason.as_str()),
                _ => None,
            })
            .collect();
        assert!(finals.is_empty(), "job {job} failed finally: {finals:?}");
    }
}

fn names(revisions: &[Revision]) -> Vec<(String, String)> {
    revisions
        .iter()
        .map(|r| (r.name.clone(), r.job_id.clone()))
        .collect()
}

/// Every revision in the `kiln-revisions` KV (every `rev.<app>.<n>` key), by app, in number
/// order.
pub async fn all_revisions(queue: &Queue) -> BTreeMap<String, Vec<Revision>> {
    let keys: Vec<String> = queue
        .revisions
        .keys()
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    let mut all: BTreeMap<String, Vec<Revision>> = BTreeMap::new();
    for key in keys.iter().filter(|k| k.starts_with("rev.")) {
        let bytes = queue.revisions.get(key).await.unwrap().unwrap();
        let r: Revision = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(key, &format!("rev.{}.{:05}", r.app, r.number), "{r:?}");
        all.entry(r.app.clone()).or_default().push(r);
    }
    for revisions in all.values_mut() {
        revisions.sort_by_key(|r| r.number);
    }
    all
}

/// Every event kept in `KILN_EVENTS`, with its subject, oldest first.
pub async fn all_events(queue: &Queue) -> Vec<(String, Event)> {
    let stream = queue.js.get_stream(EVENTS_STREAM).await.unwrap();
    let reader: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    let total = stream.cached_info().state.messages as usize;
    let mut events = Vec::new();
    while events.len() < total {
        let mut batch = reader
            .fetch()
            .max_messages(500)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let before = events.len();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let event: Event = serde_json::from_slice(&message.payload).unwrap();
            events.push((message.subject.to_string(), event));
        }
        assert!(
            events.len() > before,
            "KILN_EVENTS read stalled at {before} of {total}"
        );
    }
    events
}

/// Waits until `KILN_JOBS` holds no message and `kiln-workers` has nothing pending or
/// ack-pending (reading through transient errors while a leader is elected).
pub async fn wait_drained(queue: &Queue, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let state = async {
            let mut stream = queue.js.get_stream(JOBS_STREAM).await?;
            let messages = stream.info().await?.state.messages;
            let mut workers: consumer::PullConsumer = stream.get_consumer(WORKERS_CONSUMER).await?;
            let info = workers.info().await?;
            Ok::<_, async_nats::Error>((messages, info.num_pending, info.num_ack_pending))
        }
        .await;
        match state {
            Ok((0, 0, 0)) => return,
            Ok((messages, pending, ack_pending)) => assert!(
                Instant::now() < deadline,
                "KILN_JOBS not drained after {within:?}: {messages} messages, {pending} pending, \
                 {ack_pending} ack-pending"
            ),
            Err(e) => assert!(
                Instant::now() < deadline,
                "KILN_JOBS state unreadable for {within:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM to the worker and waits (at most `within`) for it to exit.
pub async fn sigterm(w: &mut TestWorker, within: Duration) -> std::process::ExitStatus {
    let pid = w.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid}");
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = w.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "worker {pid} still running {within:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
