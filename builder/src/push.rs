//! Pushing a built image: for each blob a HEAD first; if absent a cross-repository mount from
//! a repository it was seen in; only then a streamed upload from disk. The manifest goes last.

use futures_util::{StreamExt, TryStreamExt};
use kiln_layers::{Descriptor, Digest, ImageManifest};
use oci_client::Reference;

use crate::registry::{Registry, RegistryError, parse_reference};
use crate::{BuildError, Built, Result, seen};

/// Blobs pushed at once.
pub const PARALLEL_PUSHES: usize = 4;

/// What a push did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Pushed {
    /// The reference pushed to.
    pub reference: String,
    /// The manifest digest.
    pub digest: Option<Digest>,
    /// Blobs the registry already had.
    pub present: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs uploaded, and their bytes.
    pub uploaded: usize,
    /// Bytes uploaded (manifest not counted).
    pub uploaded_bytes: u64,
}

enum BlobOutcome {
    Present,
    Mounted,
    Uploaded(u64),
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
    // repository writes the same blob (distribution's storage race): it then refuses the
    // manifest with BLOB_UNKNOWN. The blobs are checked and pushed again, up to twice more.
    for round in 1.. {
        let outcomes: Vec<BlobOutcome> = futures_util::stream::iter(blobs.iter().cloned())
            .map(|blob| async move {
                push_blob(registry, built, image_ref, repository_ref, &blob).await
            })
            .buffer_unordered(PARALLEL_PUSHES)
            .try_collect()
            .await?;
        for outcome in outcomes {
            match outcome {
                BlobOutcome::Present => pushed.present += 1,
                BlobOutcome::Mounted => pushed.mounted += 1,
                BlobOutcome::Uploaded(bytes) => {
                    pushed.uploaded += 1;
                    pushed.uploaded_bytes += bytes;
                }
            }
        }
        match registry
            .put_manifest(&image, &manifest_bytes, &built.manifest.media_type)
            .await
        {
            Ok(_) => break,
            Err(e)
                if round < 3
                    && (e.has_code("MANIFEST_BLOB_UNKNOWN") || e.has_code("BLOB_UNKNOWN")) =>
            {
                tracing::debug!("{e}; pushing the blobs again");
                tokio::time::sleep(std::time::Duration::from_millis(100 * round)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    pushed.digest = Some(built.manifest.digest.clone());
    Ok(pushed)
}

async fn push_blob(
    registry: &Registry,
    built: &Built,
    image: &Reference,
    repository: &str,
    blob: &Descriptor,
) -> Result<BlobOutcome> {
    let store = &built.store;
    let digest = blob.digest.as_str();
    let outcome = if registry.blob_exists(image, digest).await? {
        BlobOutcome::Present
    } else if mount_from_elsewhere(registry, built, image, repository, blob).await {
        BlobOutcome::Mounted
    } else {
        let path = store.blob_path(&blob.digest);
        if !path.exists() {
            return Err(BuildError::Layers(kiln_layers::Error::Io {
                op: "read blob to upload",
                path,
                source: std::io::ErrorKind::NotFound.into(),
            }));
        }
        registry.upload(image, &path, digest, blob.size).await?;
        BlobOutcome::Uploaded(blob.size)
    };
    seen::record(store, &blob.digest, repository);
    Ok(outcome)
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
