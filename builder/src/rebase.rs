//! Rebase: move an image onto a new version of its base (or runtime base) by rewriting only
//! its manifest and config. Its dependency and app layers (same digests, same diff ids) stay
//! where they are in the registry; the new base layers are mounted from the base's repository.

use std::collections::BTreeMap;

use kiln_layers::oci::{MEDIA_TYPE_DOCKER_LAYER, MEDIA_TYPE_LAYER_GZIP, Platform};
use kiln_layers::{BlobStore, Descriptor, ImageConfig, ImageManifest};

use crate::build::{
    ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME, ANNOTATION_RUNTIME, LABEL_RUNTIME,
};
use crate::error::BaseProblem;
use crate::pull::pull_metadata;
use crate::registry::{Registry, repository_of};
use crate::{BuildError, Built, Result};

/// Manifest annotation: the image a rebased image was made from.
pub const ANNOTATION_REBASED_FROM: &str = "dev.kiln.rebased.from";

/// A manifest and config read from the store.
struct Doc {
    name: String,
    manifest: ImageManifest,
    config: ImageConfig,
}

fn load(store: &BlobStore, name: String, desc: &Descriptor) -> Result<Doc> {
    let bad = |problem: BaseProblem| BuildError::Base {
        reference: name.clone(),
        problem,
    };
    let mut manifest: ImageManifest = serde_json::from_slice(&store.read_blob(&desc.digest)?)
        .map_err(|e| {
            bad(BaseProblem::Document {
                document: "manifest",
                error: e.to_string(),
            })
        })?;
    for layer in &mut manifest.layers {
        if layer.media_type == MEDIA_TYPE_DOCKER_LAYER {
            layer.media_type = MEDIA_TYPE_LAYER_GZIP.into();
        }
    }
    let config: ImageConfig = serde_json::from_slice(&store.read_blob(&manifest.config.digest)?)
        .map_err(|e| {
            bad(BaseProblem::Document {
                document: "config",
                error: e.to_string(),
            })
        })?;
    Ok(Doc {
        name,
        manifest,
        config,
    })
}

fn label<'a>(config: &'a ImageConfig, key: &str) -> Option<&'a str> {
    config.config.labels.as_ref()?.get(key).map(String::as_str)
}

/// Rewrites `image` (a registry reference, by digest or tag) onto `new_base`; the result's
/// blobs are the new config and manifest in `store` plus layers already in registries.
pub async fn rebase(
    registry: &Registry,
    image: &str,
    new_base: &str,
    platform: &Platform,
    store: &BlobStore,
) -> Result<Built> {
    let refuse = |problem: String| BuildError::Base {
        reference: image.to_owned(),
        problem: BaseProblem::NotRebasable(problem),
    };
    let (name, desc, _) = pull_metadata(registry, image, platform, store).await?;
    let old = load(store, name, &desc)?;
    let old_digest = desc.digest.to_string();

    // The base the image claims, checked layer by layer.
    let (Some(base_name), Some(base_digest)) = (
        old.manifest.annotations.get(ANNOTATION_BASE_NAME),
        old.manifest.annotations.get(ANNOTATION_BASE_DIGEST),
    ) else {
        return Err(refuse(
            "has no base name/digest annotations: it was not built by kiln".into(),
        ));
    };
    let base_desc: kiln_layers::Digest = base_digest.parse().map_err(|_| {
        refuse(format!(
            "base digest annotation {base_digest:?} is not a digest"
        ))
    })?;
    let old_base = if store.contains(&base_desc) {
        let size = store.read_blob(&base_desc)?.len() as u64;
        let d = Descriptor::new(kiln_layers::oci::MEDIA_TYPE_MANIFEST, base_desc, size);
        load(store, base_name.clone(), &d)?
    } else {
        let repo = repository_of(base_name).ok_or_else(|| {
            refuse(format!(
                "its base name {base_name:?} is not an image reference"
            ))
        })?;
        let by_digest = format!("{repo}@{base_digest}");
        let (n, d, _) = pull_metadata(registry, &by_digest, platform, store)
            .await
            .map_err(|e| refuse(format!("its base {by_digest} cannot be read: {e}")))?;
        load(store, n, &d)?
    };
    let n = old_base.manifest.layers.len();
    let layers_match = old.manifest.layers.len() > n
        && old.manifest.layers[..n]
            .iter()
            .zip(&old_base.manifest.layers)
            .all(|(a, b)| a.digest == b.digest)
        && old.config.rootfs.diff_ids.get(..n) == Some(&old_base.config.rootfs.diff_ids[..]);
    if !layers_match {
        return Err(refuse(format!(
            "was not built on the base it claims ({base_name} {base_digest}): its bottom layers differ"
        )));
    }

    // Which of its own layers to keep: all above the old base, minus the runtime layer when
    // the new base brings the runtime.
    let new_base_pulled = pull_metadata(registry, new_base, platform, store).await?;
    let new = load(store, new_base_pulled.0.clone(), &new_base_pulled.1)?;
    let app_runtime = old.manifest.annotations.get(ANNOTATION_RUNTIME).cloned();
    let old_has_runtime = label(&old_base.config, LABEL_RUNTIME).is_some();
    let mut keep_from = n;
    let mut history_from = old_base.config.history.len();
    match (label(&new.config, LABEL_RUNTIME), old_has_runtime) {
        (Some(runtime), _) if Some(runtime) != app_runtime.as_deref() => {
            return Err(refuse(format!(
                "runs on runtime {}, but {} is the runtime base of {runtime}",
                app_runtime.as_deref().unwrap_or("unknown"),
                new.name
            )));
        }
        (Some(_), false) => {
            // The image carries its own runtime layer right above the base: the new
            // runtime base replaces it.
            keep_from += 1;
            history_from += 1;
        }
        (None, true) => {
            return Err(refuse(format!(
                "sits on a runtime base; {} has no kiln runtime layer (make one with `kiln runtime publish`)",
                new.name
            )));
        }
        _ => {}
    }

    let mut config = old.config.clone();
    config.os = new.config.os.clone();
    config.architecture = new.config.architecture.clone();
    config.rootfs.diff_ids = new.config.rootfs.diff_ids.clone();
    config
        .rootfs
        .diff_ids
        .extend(old.config.rootfs.diff_ids[keep_from..].iter().cloned());
    config.history = new.config.history.clone();
    config
        .history
        .extend(old.config.history.iter().skip(history_from).cloned());
    let mut labels: BTreeMap<String, String> = old.config.config.labels.clone().unwrap_or_default();
    labels.extend(new.config.config.labels.clone().unwrap_or_default());
    config.config.labels = Some(labels);

    let mut layers = new.manifest.layers.clone();
    layers.extend(old.manifest.layers[keep_from..].iter().cloned());
    let mut annotations = old.manifest.annotations.clone();
    annotations.insert(ANNOTATION_BASE_NAME.into(), new.name.clone());
    annotations.insert(
        ANNOTATION_BASE_DIGEST.into(),
        new_base_pulled.1.digest.to_string(),
    );
    annotations.insert(
        ANNOTATION_REBASED_FROM.into(),
        format!(
            "{}@{old_digest}",
            repository_of(&old.name).unwrap_or_else(|| old.name.clone())
        ),
    );
    let (manifest, image) = store.write_image(&config, layers, annotations)?;
    Ok(Built::unrecorded(store.clone(), manifest, image))
}
