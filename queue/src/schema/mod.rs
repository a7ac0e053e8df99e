//! Versioned messages on the queue (JSON, each with `schema_version`): jobs, events and
//! revision records.

mod event;
mod job;
mod revision;

pub use event::{Event, EventKind};
pub use job::{
    BuildJob, DeploySettings, InvalidJob, Job, RebaseJob, validate_app, validate_job_id,
};
pub use revision::{LayerRecord, Revision, Timings, revision_name};

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Now as RFC 3339 UTC.
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    kiln_builder::image::rfc3339(secs)
}
