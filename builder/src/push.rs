//! Pushing a built image. A blob kiln pushed to the repository before is taken as there: the
//! registry checks every blob on the manifest PUT, and when it answers that one is missing
//! (garbage-collected, or lost in a storage race) every blob is checked and pushed again. A
//! small blob new to the registry goes up at once; any other blob gets a HEAD first, then a
//! cross-repository mount from a repository it was seen in, and only then an upload from disk.
//! The manifest goes last.

use futures_util::{StreamExt, TryStreamExt};
use kiln_layers::{Descriptor, Digest, ImageManifest};
use oci_client::Reference;

use crate::registry::{Registry, RegistryError, SINGLE_POST_MAX, parse_reference};
use crate::{BuildError, Built, Result, seen};

/// Blobs pushed at once.
pub const PARALLEL_PUSHES: usize = 4;

/// What a push did (its last round, when the registry had lost a blob).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Pushed {
    /// The reference pushed to.
    pub reference: String,
    /// The manifest digest.
    pub digest: Option<Digest>,
    /// Blobs the registry already had (answered to a HEAD, or pushed to this repository
    /// before and confirmed by the manifest PUT).
    pub present: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs uploaded, and their bytes.
    pub uploaded: usize,
    /// Bytes uploaded (manifest not counted).
    pub uploaded_bytes: u64,
}

enum BlobOutcome {
    /// Pushed to this repository before: not checked, the manifest PUT checks it.
    Known,
    Present,
    Mounted,
    Uploaded(u64),
}

/// How one round of a push treats the blobs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Round {
    /// The first: blobs kiln pushed to the repository before are not checked, small new
    /// blobs go up without asking.
    Trusting,
    /// After the registry refused the manifest for a missing blob: every blob is checked.
    Checking,
}

/// Pushes `built` to `target` (`host[:port]/repository[:tag]`).
pub async fn push_image(registry: &Registry, built: &Built, target: &str) -> Result<Pushed> {
    let image = parse_reference(target)?;
    if let Some(digest) = image.digest()
        && digest != built.manifest.digest.as_str()
    {
        return Err(RegistryError::local(
            target,
            "push",
            format!("the image's digest is {}", built.manifest.digest),
        )
        .into());
    }
    let store = &built.store;
    let manifest_bytes = store.read_blob(&built.manifest.digest)?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(kiln_layers::Error::json("image manifest"))?;
    let repository = format!("{}/{}", image.resolve_registry(), image.repository());

    let mut blobs: Vec<Descriptor> = vec![manifest.config.clone()];
    blobs.extend(manifest.layers.iter().cloned());
    blobs.dedup_by(|a, b| a.digest == b.digest);
    let (image_ref, repository_ref) = (&image, repository.as_str());
    let mut pushed = Pushed {
        reference: image.whole(),
        ..Pushed::default()
    };
    // A registry can lose a blob it just confirmed while another push into the same
    // repository writes the same blob (distribution's storage race), or drop one kiln pushed
    // long ago (garbage collection): it then refuses the manifest with BLOB_UNKNOWN. The
    // blobs are checked and pushed again: after a round that took some blob as known at once,
    // and after a round that checked them all up to twice more.
    let (mut round, mut retries) = (Round::Trusting, 0);
    loop {
        let outcomes: Vec<BlobOutcome> = futures_util::stream::iter(blobs.iter().cloned())
            .map(|blob| async move {
                push_blob(registry, built, image_ref, repository_ref, &blob, round).await
            })
            .buffer_unordered(PARALLEL_PUSHES)
            .try_collect()
            .await?;
        let trusted = outcomes.iter().any(|o| matches!(o, BlobOutcome::Known));
        tally(&mut pushed, outcomes);
        let error = match registry
            .put_manifest(&image, &manifest_bytes, &built.manifest.media_type)
            .await
        {
            Ok(_) => break,
            Err(e) if e.has_code("MANIFEST_BLOB_UNKNOWN") || e.has_code("BLOB_UNKNOWN") => e,
            Err(e) => return Err(e.into()),
        };
        if trusted {
            tracing::debug!("{error}; checking every blob");
        } else if retries < 2 {
            retries += 1;
            tracing::debug!("{error}; pushing the blobs again");
            tokio::time::sleep(std::time::Duration::from_millis(100 * retries)).await;
        } else {
            return Err(error.into());
        }
        round = Round::Checking;
    }
    pushed.digest = Some(built.manifest.digest.clone());
    Ok(pushed)
}

/// Counts what one round did into `pushed` (replacing an earlier round's counts).
fn tally(pushed: &mut Pushed, outcomes: Vec<BlobOutcome>) {
    (pushed.present, pushed.mounted, pushed.uploaded) = (0, 0, 0);
    pushed.uploaded_bytes = 0;
    for outcome in outcomes {
        match outcome {
            BlobOutcome::Known | BlobOutcome::Present => pushed.present += 1,
            BlobOutcome::Mounted => pushed.mounted += 1,
            BlobOutcome::Uploaded(bytes) => {
                pushed.uploaded += 1;
                pushed.uploaded_bytes += bytes;
            }
        }
    }
}

async fn push_blob(
    registry: &Registry,
    built: &Built,
    image: &Reference,
    repository: &str,
    blob: &Descriptor,
    round: Round,
) -> Result<BlobOutcome> {
    let store = &built.store;
    let seen_in = seen::seen_in(store, &blob.digest);
    let host = image.resolve_registry();
    let on_this_registry = seen_in.iter().any(|r| in_registry(r, host));
    let trusting = round == Round::Trusting;
    if trusting && seen_in.iter().any(|r| r == repository) {
        return Ok(BlobOutcome::Known);
    }
    let outcome = if trusting && !on_this_registry && blob.size <= SINGLE_POST_MAX {
        // New here as far as kiln knows, and small: sent at once, without asking first. A
        // refusal may mean the registry has it (or takes no upload so): then ask as for any.
        match upload(registry, built, image, blob).await {
            Err(BuildError::Registry(e)) if !e.is_retryable() => {
                tracing::debug!("{e}; checking the blob first");
                check_then_push(registry, built, image, repository, blob, on_this_registry).await?
            }
            outcome => outcome?,
        }
    } else {
        check_then_push(registry, built, image, repository, blob, on_this_registry).await?
    };
    seen::record(store, &blob.digest, repository);
    Ok(outcome)
}

/// A HEAD for `blob`; when absent, a mount from another repository of the registry it was
/// seen in (`seen_here`), else an upload.
async fn check_then_push(
    registry: &Registry,
    built: &Built,
    image: &Reference,
    repository: &str,
    blob: &Descriptor,
    seen_here: bool,
) -> Result<BlobOutcome> {
    if registry.blob_exists(image, blob.digest.as_str()).await? {
        Ok(BlobOutcome::Present)
    } else if seen_here && mount_from_elsewhere(registry, built, image, repository, blob).await {
        Ok(BlobOutcome::Mounted)
    } else {
        upload(registry, built, image, blob).await
    }
}

/// True when `repository` (`host[:port]/path`) is on the registry `host`.
fn in_registry(repository: &str, host: &str) -> bool {
    repository
        .strip_prefix(host)
        .is_some_and(|path| path.starts_with('/'))
}

/// Uploads `blob` from the store to the reference's repository.
async fn upload(
    registry: &Registry,
    built: &Built,
    image: &Reference,
    blob: &Descriptor,
) -> Result<BlobOutcome> {
    let path = built.store.blob_path(&blob.digest);
    if !path.exists() {
        return Err(BuildError::Layers(kiln_layers::Error::Io {
            op: "read blob to upload",
            path,
            source: std::io::ErrorKind::NotFound.into(),
        }));
    }
    registry
        .upload(image, &path, blob.digest.as_str(), blob.size)
        .await?;
    Ok(BlobOutcome::Uploaded(blob.size))
}

/// Tries a mount from each other repository of the same registry the blob was seen in (the
/// base's repository for base layers: pulls record where blobs came from).
async fn mount_from_elsewhere(
    registry: &Registry,
    built: &Built,
    image: &Reference,
    repository: &str,
    blob: &Descriptor,
) -> bool {
    let host = image.resolve_registry();
    for candidate in seen::seen_in(&built.store, &blob.digest) {
        let Some(path) = candidate
            .strip_prefix(host)
            .and_then(|p| p.strip_prefix('/'))
        else {
            continue;
        };
        if candidate == repository {
            continue;
        }
        let from = Reference::with_tag(host.to_owned(), path.to_owned(), "latest".into());
        if registry.mount(image, &from, blob.digest.as_str()).await {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_is_on_its_registry_only() {
        assert!(in_registry("r:5000/apps/a", "r:5000"));
        assert!(!in_registry("r:50001/apps/a", "r:5000"));
        assert!(!in_registry("other/apps/a", "r:5000"));
    }
}
