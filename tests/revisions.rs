//! Recording revisions against a real nats-server: exactly one revision per job id however
//! many attempts of the job race, an attempt that stalled after reserving a number, and a
//! job given up after its deliveries ran out.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::nats::TestNats;
use common::tokio_rt;
use kiln_queue::revisions::{self, Recorded};
use kiln_queue::schema::{DeploySettings, SCHEMA_VERSION, Timings};
use kiln_queue::{Queue, Revision};

/// A revision of `app` made by `job_id`, not yet numbered.
fn made_by(app: &str, job_id: &str) -> Revision {
    Revision {
        schema_version: SCHEMA_VERSION,
        name: String::new(),
        app: app.into(),
        number: 0,
        job_id: job_id.into(),
        image: format!("127.0.0.1:1/apps/{app}@sha256:{}", "0".repeat(64)),
        digest: format!("sha256:{}", "0".repeat(64)),
        runtime: "faas".into(),
        base: "base".into(),
        base_digest: String::new(),
        source_digest: String::new(),
        source_object: String::new(),
        env: vec![],
        port: 8080,
        deploy: DeploySettings::default(),
        layers: vec![],
        timings_ms: Timings::default(),
        created: String::new(),
    }
}

async fn record(queue: &Queue, app: &str, job_id: &str) -> Revision {
    match revisions::record(queue, made_by(app, job_id), None)
        .await
        .unwrap()
    {
        Recorded::Done(r) => *r,
        Recorded::Busy => panic!("{job_id}: busy"),
        Recorded::GivenUp => panic!("{job_id}: given up"),
    }
}

/// Job id of each recorded number of `app`, in order.
async fn numbers(queue: &Queue, app: &str) -> BTreeMap<u64, String> {
    revisions::list(queue, app)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.number, r.job_id))
        .collect()
}

#[test]
fn racing_attempts_of_each_job_record_one_revision_each() {
    let nats = TestNats::start();
    tokio_rt().block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let mut attempts = Vec::new();
        for job in 0..8 {
            for _ in 0..4 {
                let queue = queue.clone();
                attempts.push(tokio::spawn(async move {
                    record(&queue, "race", &format!("job-{job}")).await
                }));
            }
        }
        let mut by_job: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for attempt in attempts {
            let r = attempt.await.unwrap();
            by_job.entry(r.job_id).or_default().insert(r.number);
        }
        for (job, got) in &by_job {
            assert_eq!(got.len(), 1, "{job} got numbers {got:?}");
        }
        let recorded = numbers(&queue, "race").await;
        assert_eq!(
            recorded.keys().copied().collect::<Vec<_>>(),
            (1..=8).collect::<Vec<_>>()
        );
        let jobs: BTreeSet<&String> = recorded.values().collect();
        assert_eq!(jobs.len(), 8, "{recorded:?}");
    });
}

/// An attempt reserved number 2 in its claim and stalled; another job took 2 meanwhile. The
/// next attempt waits out the claim, takes it over with the reservation, finds 2 taken by
/// another job and records under 3, once.
#[test]
fn a_stalled_reservation_is_taken_over_and_finished_once() {
    let nats = TestNats::start();
    tokio_rt().block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        assert_eq!(record(&queue, "stall", "first").await.number, 1);
        queue
            .revisions
            .put("claim.stalled", "n=2".into())
            .await
            .unwrap();
        assert_eq!(record(&queue, "stall", "other").await.number, 2);
        // The second attempt waits out the claim (10 s unchanged), takes it over with the
        // reservation, finds 2 taken by another job and moves on to 3.
        let taker = {
            let queue = queue.clone();
            tokio::spawn(async move { record(&queue, "stall", "stalled").await })
        };
        let taken = taker.await.unwrap();
        assert_eq!(taken.number, 3);
        // Every later attempt gets that revision.
        assert_eq!(record(&queue, "stall", "stalled").await.number, 3);
        let recorded = numbers(&queue, "stall").await;
        assert_eq!(
            recorded,
            BTreeMap::from([
                (1, "first".to_owned()),
                (2, "other".to_owned()),
                (3, "stalled".to_owned())
            ])
        );
    });
}

/// An attempt that created its revision but died before indexing it: the next attempt
/// takes the claim over and finds the revision under the reserved number.
#[test]
fn a_revision_recorded_but_not_indexed_is_found_not_doubled() {
    let nats = TestNats::start();
    tokio_rt().block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let mut orphan = made_by("half", "half-1");
        orphan.number = 1;
        orphan.name = "half-00001".into();
        queue
            .revisions
            .put("claim.half-1", "n=1".into())
            .await
            .unwrap();
        queue
            .revisions
            .put(
                "rev.half.00001",
                serde_json::to_vec(&orphan).unwrap().into(),
            )
            .await
            .unwrap();
        let found = record(&queue, "half", "half-1").await;
        assert_eq!(found.name, "half-00001");
        assert_eq!(numbers(&queue, "half").await.len(), 1);
    });
}

#[test]
fn a_job_given_up_is_not_recorded_and_a_recorded_one_is_reported() {
    let nats = TestNats::start();
    tokio_rt().block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        assert!(
            revisions::give_up(&queue, "gone", "gone-1")
                .await
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            revisions::record(&queue, made_by("gone", "gone-1"), None)
                .await
                .unwrap(),
            Recorded::GivenUp
        ));
        assert!(numbers(&queue, "gone").await.is_empty());
        // Giving up a job that has its revision reports the revision.
        let done = record(&queue, "gone", "done-1").await;
        let reported = revisions::give_up(&queue, "gone", "done-1").await.unwrap();
        assert_eq!(reported.map(|r| r.name), Some(done.name));
    });
}
