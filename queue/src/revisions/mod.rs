//! Revision records in the `kiln-revisions` KV bucket.
//!
//! Keys: `rev.<app>.<NNNNN>` holds a [`Revision`](crate::schema::Revision); `job.<job_id>`
//! names the revision a job produced; `built.<app>.<key>` names the revision built from given
//! inputs; `latest.<app>` is a hint of the highest number; `claim.<job_id>` says which attempt
//! of a job may record it and the number it reserved (see [`record`]). A number is taken by an
//! atomic `create` of its `rev.` key, so numbers are contiguous per app and a revision and its
//! job id are recorded in one write.
//!
//! `query` reads revisions (by number, name, job, inputs; the latest; all); `record` is the
//! exactly-once protocol that writes them (claim, record, index, give up, announce).

mod query;
mod record;

pub use query::{by_inputs, by_job, by_name, get, latest_number, list};
pub use record::{Recorded, announce, give_up, index, record};

/// The key of revision `number` of `app`.
fn rev_key(app: &str, number: u64) -> String {
    format!("rev.{app}.{number:05}")
}
