//! Image documents: reading a base, assembling the app image's config and manifest.

use kiln_layers::oci::{
    MEDIA_TYPE_DOCKER_LAYER, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST,
};
use kiln_layers::{BlobStore, Descriptor, ImageConfig, ImageManifest};

use crate::error::BaseProblem;
use crate::{BuildError, Result};

/// A base image whose blobs are in a blob store.
#[derive(Clone, Debug)]
pub struct Base {
    /// The name it was asked for by.
    pub name: String,
    /// Its manifest.
    pub descriptor: Descriptor,
    /// The manifest document.
    pub manifest: ImageManifest,
    /// The config document.
    pub config: ImageConfig,
}

impl Base {
    /// Loads the manifest `descriptor` and its config from `store`.
    pub fn load(store: &BlobStore, name: &str, descriptor: Descriptor) -> Result<Base> {
        let bad = |problem: BaseProblem| BuildError::Base {
            reference: name.into(),
            problem,
        };
        if descriptor.media_type != MEDIA_TYPE_MANIFEST
            && descriptor.media_type != MEDIA_TYPE_DOCKER_MANIFEST
        {
            return Err(bad(BaseProblem::ManifestType(
                descriptor.media_type.clone(),
            )));
        }
        let mut manifest: ImageManifest =
            serde_json::from_slice(&store.read_blob(&descriptor.digest)?).map_err(|e| {
                bad(BaseProblem::Document {
                    document: "manifest",
                    error: e.to_string(),
                })
            })?;
        // Docker v2s2 gzip layers are the same bytes as OCI gzip layers: name them the OCI way
        // so the app's OCI manifest is uniform.
        for layer in &mut manifest.layers {
            if layer.media_type == MEDIA_TYPE_DOCKER_LAYER {
                layer.media_type = MEDIA_TYPE_LAYER_GZIP.into();
            } else if !layer
                .media_type
                .starts_with("application/vnd.oci.image.layer.v1.tar")
            {
                return Err(bad(BaseProblem::LayerType {
                    digest: layer.digest.to_string(),
                    media_type: layer.media_type.clone(),
                }));
            }
        }
        let config: ImageConfig =
            serde_json::from_slice(&store.read_blob(&manifest.config.digest)?).map_err(|e| {
                bad(BaseProblem::Document {
                    document: "config",
                    error: e.to_string(),
                })
            })?;
        Ok(Base {
            name: name.into(),
            descriptor,
            manifest,
            config,
        })
    }

    /// The diff id of the base's layer `layer`.
    pub fn diff_id_of(&self, layer: &Descriptor) -> Result<kiln_layers::Digest> {
        self.manifest
            .layers
            .iter()
            .position(|l| l.digest == layer.digest)
            .and_then(|i| self.config.rootfs.diff_ids.get(i))
            .cloned()
            .ok_or_else(|| BuildError::Base {
                reference: self.name.clone(),
                problem: BaseProblem::NoDiffId(layer.digest.to_string()),
            })
    }

    /// A config label of the base.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.config
            .config
            .labels
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
}

/// The OCI name of the host architecture.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `seconds` since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_epoch_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
