//! Job events: what happened to a job, published on `kiln.events.<job_id>`.

use serde::{Deserialize, Serialize};

use super::Revision;

/// What happened to a job: published on `kiln.events.<job_id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Always [`SCHEMA_VERSION`](super::SCHEMA_VERSION).
    pub schema_version: u32,
    /// The job.
    pub job_id: String,
    /// The app, when known.
    #[serde(default)]
    pub app: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
    /// When (RFC 3339).
    pub at: String,
}

/// The kinds of event, tagged by `event`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// `kiln submit` published the job.
    Accepted,
    /// A worker took the job (delivery `attempt`).
    Building {
        /// Worker name.
        worker: String,
        /// Delivery count, 1 for the first.
        attempt: u64,
    },
    /// A build step (`resolving base`, `deps: cache hit`, …).
    Step {
        /// The step, as the CLI prints it.
        text: String,
    },
    /// The image is in the registry.
    Pushed {
        /// `repo@sha256:…`.
        image: String,
    },
    /// The job's revision is recorded.
    Revision {
        /// The revision record.
        revision: Box<Revision>,
    },
    /// The job failed.
    Failed {
        /// What went wrong.
        reason: String,
        /// True when the job will be (or could be) retried.
        retryable: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::now;

    #[test]
    fn events_are_tagged() {
        let e = Event {
            schema_version: 1,
            job_id: "j".into(),
            app: None,
            kind: EventKind::Failed {
                reason: "x".into(),
                retryable: false,
            },
            at: now(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "failed");
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
    }
}
