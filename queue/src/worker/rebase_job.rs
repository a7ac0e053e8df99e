//! A rebase job: a revision's image onto a new base, recorded as a new revision.

use std::time::Instant;

use super::Ctx;
use super::error::JobError;
use crate::schema::{RebaseJob, Revision};

/// One delivery of a rebase job: returns its revision.
pub(super) async fn process(
    ctx: &Ctx,
    job: &RebaseJob,
    started: Instant,
) -> Result<Revision, JobError> {
    let store =
        kiln_layers::BlobStore::open_or_create(&ctx.opts.cache_dir).map_err(JobError::Cache)?;
    Ok(crate::rebase::rebase_revision(
        &ctx.queue,
        &ctx.opts.registry,
        &store,
        &ctx.opts.platform,
        job,
        started,
    )
    .await?)
}
