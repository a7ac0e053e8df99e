//! Why a job did not produce a revision, and whether another delivery may succeed.

use kiln_builder::BuildError;

use crate::nats::{MAX_DELIVER, NatsError};
use crate::rebase::RebaseError;
use crate::source::{self, FetchError};

/// Why a job did not produce a revision. Its text is the `failed` event's reason;
/// [`JobError::is_transient`] decides between a retry and a final failure.
#[derive(Debug, thiserror::Error)]
pub(super) enum JobError {
    /// NATS trouble.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The job's base reference does not parse.
    #[error(transparent)]
    InvalidBase(BuildError),
    /// Resolving the base, building or pushing failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The source object could not be fetched (missing, corrupt, or NATS trouble).
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The source tarball could not be extracted (hostile, corrupt or over the limits).
    #[error(transparent)]
    Extract(kiln_layers::Error),
    /// The extracted source has no app directory.
    #[error("source {object} has no {}/ directory", source::SOURCE_ROOT)]
    NoSourceRoot {
        /// The source object.
        object: String,
    },
    /// The worker's cache could not be opened.
    #[error(transparent)]
    Cache(kiln_layers::Error),
    /// The worker's scratch space could not be made.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The worker's scratch directory could not be made.
    #[error("scratch directory: {0}")]
    Scratch(#[source] std::io::Error),
    /// A blocking task (extraction, build) panicked or was cancelled.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    /// A rebase job failed.
    #[error(transparent)]
    Rebase(#[from] RebaseError),
    /// Another attempt of this job is recording its revision.
    #[error("another attempt of this job is recording its revision")]
    Busy,
    /// The job was given up after its deliveries ran out.
    #[error("gave up after {MAX_DELIVER} deliveries: no worker finished the job")]
    GivenUp,
}

impl JobError {
    /// True when something around the job failed (registry, NATS, the worker's disk) and a
    /// later delivery may succeed; false when the job itself is wrong.
    pub(super) fn is_transient(&self) -> bool {
        match self {
            JobError::Nats(_)
            | JobError::Cache(_)
            | JobError::Io(_)
            | JobError::Scratch(_)
            | JobError::Join(_)
            | JobError::Busy => true,
            JobError::InvalidBase(_)
            | JobError::Extract(_)
            | JobError::NoSourceRoot { .. }
            | JobError::GivenUp => false,
            JobError::Build(e) => build_is_transient(e),
            JobError::Fetch(e) => match e {
                FetchError::Nats(_) => true,
                FetchError::Missing(_) | FetchError::Corrupt { .. } => false,
            },
            JobError::Rebase(e) => match e {
                RebaseError::Build(e) => build_is_transient(e),
                RebaseError::Nats(_) | RebaseError::Busy => true,
                RebaseError::NotFound(_) | RebaseError::GivenUp => false,
            },
        }
    }
}

/// A registry error that may pass, or an I/O error on the worker's disk.
fn build_is_transient(e: &BuildError) -> bool {
    match e {
        BuildError::Registry(r) => r.is_retryable(),
        BuildError::Layers(kiln_layers::Error::Io { .. }) => true,
        _ => false,
    }
}
