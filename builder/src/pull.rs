//! Pulling an image (a base) from a registry into the local cache: the tag is resolved with
//! one manifest request; an index picks the requested platform; blobs already cached by
//! digest are not fetched again.

use futures_util::{StreamExt, TryStreamExt};
use kiln_layers::oci::{
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST, Platform,
};
use kiln_layers::{BlobStore, Descriptor, Digest, ImageIndex, ImageManifest};
use oci_client::Reference;

use crate::error::BaseProblem;
use crate::registry::{Registry, parse_reference};
use crate::{BuildError, Result, seen};

/// Blobs fetched at once.
const PARALLEL_PULLS: usize = 4;

/// Parses `os/arch[/variant]` (`linux/amd64`, `linux/arm64/v8`).
pub fn parse_platform(text: &str) -> Result<Platform> {
    let parts: Vec<&str> = text.split('/').collect();
    let bad = || BuildError::InvalidOption {
        what: "--platform",
        value: text.into(),
        problem: "expected os/architecture[/variant], e.g. linux/amd64".into(),
    };
    match parts.as_slice() {
        [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
            os: (*os).into(),
            architecture: (*arch).into(),
            variant: parts
                .get(2)
                .map(|v| (*v).to_owned())
                .filter(|v| !v.is_empty()),
        }),
        _ => Err(bad()),
    }
}

/// The platform of this machine (`linux/amd64` on x86-64).
pub fn host_platform() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: crate::image::oci_arch().into(),
        variant: None,
    }
}

fn platform_text(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// The image `reference` pulled into `store` for `platform`: its full reference name and
/// manifest descriptor. Returns whether everything was already cached.
pub async fn pull_image(
    registry: &Registry,
    reference: &str,
    platform: &Platform,
    store: &BlobStore,
) -> Result<(String, Descriptor, bool)> {
    pull(registry, reference, platform, store, true).await
}

/// Like [`pull_image`] but only the manifest and config: the layers stay in the registry
/// (noted as seen there, so a push to another repository mounts them).
pub async fn pull_metadata(
    registry: &Registry,
    reference: &str,
    platform: &Platform,
    store: &BlobStore,
) -> Result<(String, Descriptor, bool)> {
    pull(registry, reference, platform, store, false).await
}

async fn pull(
    registry: &Registry,
    reference: &str,
    platform: &Platform,
    store: &BlobStore,
    with_layers: bool,
) -> Result<(String, Descriptor, bool)> {
    let image = parse_reference(reference)?;
    let name = image.whole();
    let bad = |problem: BaseProblem| BuildError::Base {
        reference: name.clone(),
        problem,
    };
    // A digest names immutable content: when it is cached, no request is needed.
    let cached_manifest = image
        .digest()
        .and_then(|d| d.parse::<Digest>().ok())
        .filter(|d| store.contains(d))
        .and_then(|d| Some((store.read_blob(&d).ok()?, d.to_string())));
    let (bytes, digest) = match cached_manifest {
        Some(found) => found,
        None => registry.manifest(&image).await?,
    };
    let media_type = media_type_of(&bytes).map_err(|e| bad(BaseProblem::NotAManifest(e)))?;
    let (bytes, digest, media_type, source) =
        if media_type == MEDIA_TYPE_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST {
            let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| {
                bad(BaseProblem::Document {
                    document: "image index",
                    error: e.to_string(),
                })
            })?;
            let entry = choose(&index, platform).ok_or_else(|| {
                let available: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(platform_text))
                    .collect();
                bad(BaseProblem::NoPlatform {
                    want: platform_text(platform),
                    available: if available.is_empty() {
                        "none with a platform".into()
                    } else {
                        available.join(", ")
                    },
                })
            })?;
            let child = Reference::with_digest(
                image.registry().to_owned(),
                image.repository().to_owned(),
                entry.digest.to_string(),
            );
            let (bytes, digest) = if store.contains(&entry.digest) {
                (store.read_blob(&entry.digest)?, entry.digest.to_string())
            } else {
                registry.manifest(&child).await?
            };
            (bytes, digest, entry.media_type.clone(), child)
        } else {
            (bytes, digest, media_type, image.clone())
        };
    if media_type != MEDIA_TYPE_MANIFEST && media_type != MEDIA_TYPE_DOCKER_MANIFEST {
        return Err(bad(BaseProblem::ManifestType(media_type)));
    }
    let digest: Digest = digest.parse().map_err(|_| {
        bad(BaseProblem::Digest(format!(
            "registry gave the manifest digest {digest:?}"
        )))
    })?;
    let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
        bad(BaseProblem::Document {
            document: "manifest",
            error: e.to_string(),
        })
    })?;
    let cached = std::iter::once(&manifest.config)
        .chain(&manifest.layers)
        .all(|d| store.contains(&d.digest));
    let missing: Vec<Descriptor> = std::iter::once(&manifest.config)
        .chain(manifest.layers.iter().filter(|_| with_layers))
        .filter(|d| !store.contains(&d.digest))
        .cloned()
        .collect();
    let source = &source;
    futures_util::stream::iter(missing)
        .map(|d| async move { registry.download(source, &d, store).await })
        .buffer_unordered(PARALLEL_PULLS)
        .try_collect::<Vec<()>>()
        .await?;
    let written = store.write_blob(&media_type, &bytes)?;
    if written.digest != digest {
        return Err(bad(BaseProblem::Digest(format!(
            "manifest digest is {} but the registry said {digest}",
            written.digest
        ))));
    }
    let repository = format!("{}/{}", image.resolve_registry(), image.repository());
    for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
        seen::record(store, &d.digest, &repository);
    }
    let config: kiln_layers::ImageConfig =
        serde_json::from_slice(&store.read_blob(&manifest.config.digest)?).map_err(|e| {
            bad(BaseProblem::Document {
                document: "config",
                error: e.to_string(),
            })
        })?;
    if config.os != platform.os || config.architecture != platform.architecture {
        return Err(bad(BaseProblem::WrongPlatform {
            have: format!("{}/{}", config.os, config.architecture),
            want: platform_text(platform),
        }));
    }
    Ok((name, written, cached))
}

/// The media type a manifest document declares, or what its shape says it is.
fn media_type_of(bytes: &[u8]) -> std::result::Result<String, String> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        let start: String = String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("registry sent a manifest that is not JSON ({e}): {start:?}")
    })?;
    if let Some(mt) = doc.get("mediaType").and_then(|v| v.as_str()) {
        return Ok(mt.to_owned());
    }
    if doc.get("manifests").is_some() {
        Ok(MEDIA_TYPE_INDEX.into())
    } else if doc.get("layers").is_some() {
        Ok(MEDIA_TYPE_MANIFEST.into())
    } else {
        Err("registry sent a document that is neither a manifest nor an index".into())
    }
}

/// The index entry for `platform` (variant compared only when asked for).
fn choose<'a>(index: &'a ImageIndex, platform: &Platform) -> Option<&'a Descriptor> {
    index.manifests.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == platform.os
                && p.architecture == platform.architecture
                && (platform.variant.is_none() || p.variant == platform.variant)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_bad_ones_are_named() {
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
            ("linux", "arm64", Some("v8"))
        );
        let err = parse_platform("amd64").unwrap_err().to_string();
        assert!(err.contains("--platform") && err.contains("amd64"), "{err}");
    }

    #[test]
    fn index_entry_is_chosen_by_platform() {
        let index: ImageIndex = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": MEDIA_TYPE_MANIFEST, "size": 1,
                 "digest": format!("sha256:{}", "a".repeat(64)),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": MEDIA_TYPE_MANIFEST, "size": 1,
                 "digest": format!("sha256:{}", "b".repeat(64)),
                 "platform": {"os": "linux", "architecture": "amd64"}},
            ]
        }))
        .unwrap();
        let amd = choose(&index, &parse_platform("linux/amd64").unwrap()).unwrap();
        assert!(amd.digest.hex().starts_with('b'));
        let arm = choose(&index, &parse_platform("linux/arm64").unwrap()).unwrap();
        assert!(arm.digest.hex().starts_with('a'));
        assert!(choose(&index, &parse_platform("linux/arm64/v7").unwrap()).is_none());
        assert!(choose(&index, &parse_platform("linux/s390x").unwrap()).is_none());
    }
}
