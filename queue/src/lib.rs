//! kiln on NATS JetStream: versioned job, event and revision schemas; the streams, stores and
//! consumer; `submit`; the build worker with exactly one revision per job id; revision records,
//! traffic and rebases; how events and revisions read in the CLI.

pub mod display;
pub mod follow;
pub mod knative;
pub mod layer_cache;
pub mod light;
pub mod metrics;
pub mod nats;
pub mod rebase;
pub mod rebase_all;
pub mod revisions;
pub mod schema;
pub mod source;
pub mod submit;
pub mod traffic;
pub mod worker;

pub use nats::{NatsError, Queue};
pub use schema::{BuildJob, Event, EventKind, Revision};
