//! Fuzzes the queue's job parser: `Job::parse(subject, payload)` and `BuildJob::parse(payload)`.
//!
//! Input: if the first line (up to `\n`, at most 256 bytes) does not start with `{`, it is the
//! NATS subject and the rest is the payload; otherwise the whole input is the payload. Every
//! payload is parsed as a build job, as a job on the given subject (or a build subject) and as a
//! job on a rebase subject.
//!
//! Nothing may panic, and every job accepted must serialize and parse back to the same value
//! (on the same subject), and still validate.

use crate::verbose;
use kiln_queue::schema::{BuildJob, Job};

const BUILD_SUBJECT: &str = "kiln.jobs.build.fuzz";
const REBASE_SUBJECT: &str = "kiln.jobs.rebase.fuzz";

/// One input: see the module documentation for what must hold. Panics when it does not.
pub fn run(data: &[u8]) {
    let (subject, payload) = split(data);
    if verbose() {
        eprintln!(
            "BuildJob::parse: {:?}",
            BuildJob::parse(payload).map(|j| j.job_id)
        );
        for s in [subject.unwrap_or(BUILD_SUBJECT), REBASE_SUBJECT] {
            eprintln!(
                "Job::parse({s}): {:?}",
                Job::parse(s, payload).map(|j| j.app().to_owned())
            );
        }
    }

    if let Ok(job) = BuildJob::parse(payload) {
        job.validate().expect("a parsed build job validates");
        let bytes = serde_json::to_vec(&job).expect("a build job serializes");
        let again = BuildJob::parse(&bytes)
            .unwrap_or_else(|e| panic!("re-serialized build job {bytes:?} is refused: {e}"));
        assert_eq!(again, job, "build job changed across a round trip");
        // The generic parser agrees on build subjects.
        let generic = Job::parse(BUILD_SUBJECT, payload).expect("Job::parse refused a build job");
        assert_eq!(generic, Job::Build(job));
    }

    let subject = subject.unwrap_or(BUILD_SUBJECT);
    for subject in [subject, REBASE_SUBJECT] {
        if let Ok(job) = Job::parse(subject, payload) {
            round_trip(subject, &job);
            // job_id and app are the validated ones.
            kiln_queue::schema::validate_job_id(job.job_id()).expect("job id validates");
            kiln_queue::schema::validate_app(job.app()).expect("app validates");
        }
    }
}

fn round_trip(subject: &str, job: &Job) {
    let bytes = match job {
        Job::Build(j) => {
            j.validate().expect("a parsed build job validates");
            serde_json::to_vec(j)
        }
        Job::Rebase(j) => {
            j.validate().expect("a parsed rebase job validates");
            serde_json::to_vec(j)
        }
    }
    .expect("a job serializes");
    let again = Job::parse(subject, &bytes).unwrap_or_else(|e| {
        panic!(
            "re-serialized job {:?} on {subject} is refused: {e}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(&again, job, "job changed across a round trip on {subject}");
}

/// Splits an optional subject line off the payload.
fn split(data: &[u8]) -> (Option<&str>, &[u8]) {
    if let Some(newline) = data.iter().take(257).position(|&b| b == b'\n')
        && !data.starts_with(b"{")
        && let Ok(subject) = std::str::from_utf8(&data[..newline])
    {
        return (Some(subject), &data[newline + 1..]);
    }
    (None, data)
}
