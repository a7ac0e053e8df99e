//! Where the base image comes from, parsed and resolved in one place for the CLI and the
//! worker: a registry reference (`REF`, pulled into the cache by digest), a local OCI layout
//! (`oci:DIR:TAG`), or the host's own `node` (no base given).

use std::path::PathBuf;

use kiln_layers::oci::Platform;
use kiln_layers::{BlobStore, Descriptor};

use crate::error::BaseProblem;
use crate::host_base::host_base;
use crate::image::Base;
use crate::pull::pull_image;
use crate::registry::Registry;
use crate::{BuildError, Progress, Result, Step};

/// Where the base image comes from, once resolved.
#[derive(Clone, Debug)]
pub enum BaseSource {
    /// Made from the host's `node` (on `PATH` when `None`): the offline default.
    Host(Option<PathBuf>),
    /// An image already in the cache store (pulled from a registry), by manifest.
    Stored {
        /// Its full reference, recorded as the base name.
        name: String,
        /// Its manifest in the cache store.
        manifest: Descriptor,
        /// Whether all of it was in the cache before (nothing pulled).
        cache_hit: bool,
    },
    /// An image in a local OCI layout, by reference name.
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// The reference name in its `index.json`.
        tag: String,
    },
}

impl BaseSource {
    /// What identifies the base for caching a whole job: its manifest digest when known.
    pub fn identity(&self) -> String {
        match self {
            BaseSource::Host(_) => "host".into(),
            BaseSource::Stored { manifest, .. } => manifest.digest.to_string(),
            BaseSource::Layout { path, tag } => format!("oci:{}:{tag}", path.display()),
        }
    }
}

/// A base as written by a user: `oci:DIR:TAG` or a registry reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseRef {
    /// A registry image.
    Registry(String),
    /// A local OCI layout and the reference name in its index.
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// The reference name.
        tag: String,
    },
}

impl BaseRef {
    /// Parses `--base` / a job's `base` / `kiln.base` (as skopeo: the path ends at the first
    /// `:` after `oci:`).
    pub fn parse(text: &str) -> Result<BaseRef> {
        let bad = |problem: &str| BuildError::InvalidOption {
            what: "base",
            value: text.to_owned(),
            problem: problem.to_owned(),
        };
        if let Some(rest) = text.strip_prefix("oci:") {
            let (path, tag) = rest
                .split_once(':')
                .filter(|(p, t)| !p.is_empty() && !t.is_empty())
                .ok_or_else(|| bad("expected oci:DIR:TAG"))?;
            return Ok(BaseRef::Layout {
                path: path.into(),
                tag: tag.into(),
            });
        }
        crate::registry::parse_reference(text)?;
        Ok(BaseRef::Registry(text.to_owned()))
    }

    /// Resolves it: a registry image is pulled into `store` (for `platform`), a layout is
    /// read at build time.
    pub async fn resolve(
        &self,
        registry: &Registry,
        platform: &Platform,
        store: &BlobStore,
    ) -> Result<BaseSource> {
        match self {
            BaseRef::Layout { path, tag } => Ok(BaseSource::Layout {
                path: path.clone(),
                tag: tag.clone(),
            }),
            BaseRef::Registry(reference) => {
                let (name, manifest, cache_hit) =
                    pull_image(registry, reference, platform, store).await?;
                Ok(BaseSource::Stored {
                    name,
                    manifest,
                    cache_hit,
                })
            }
        }
    }
}

/// Loads the base `source` into `store` and reports it to `progress`.
pub fn load(source: &BaseSource, store: &BlobStore, progress: &dyn Progress) -> Result<Base> {
    let (base, cache_hit) = match source {
        BaseSource::Host(node) => {
            let (name, desc, hit) = host_base(store, node.as_deref())?;
            (Base::load(store, &name, desc)?, hit)
        }
        BaseSource::Stored {
            name,
            manifest,
            cache_hit,
        } => (Base::load(store, name, manifest.clone())?, *cache_hit),
        BaseSource::Layout { path, tag } => {
            let reference = format!("oci:{}:{tag}", path.display());
            let bad = |problem: String| BuildError::Base {
                reference: reference.clone(),
                problem: BaseProblem::Layout(problem),
            };
            let layout = BlobStore::open(path).map_err(|e| bad(e.to_string()))?;
            let desc = layout.resolve(tag).map_err(|e| bad(e.to_string()))?;
            let hit = store.contains(&desc.digest);
            // Config and layers first, so that loading the base finds all of it here.
            let manifest: kiln_layers::ImageManifest = serde_json::from_slice(
                &layout
                    .read_blob(&desc.digest)
                    .map_err(|e| bad(e.to_string()))?,
            )
            .map_err(|e| BuildError::Base {
                reference: reference.clone(),
                problem: BaseProblem::Document {
                    document: "manifest",
                    error: e.to_string(),
                },
            })?;
            for blob in manifest.layers.iter().chain([&manifest.config]) {
                store
                    .import_blob(&layout, &blob.digest)
                    .map_err(|e| bad(e.to_string()))?;
            }
            store.import_blob(&layout, &desc.digest)?;
            let loaded = Base::load(store, &reference, desc)?;
            (loaded, hit)
        }
    };
    progress.step(Step::Base {
        name: base.name.clone(),
        digest: base.descriptor.digest.to_string(),
        cache_hit,
    });
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layouts_and_registry_references() {
        assert_eq!(
            BaseRef::parse("oci:/tmp/x:node:20").unwrap(),
            BaseRef::Layout {
                path: "/tmp/x".into(),
                tag: "node:20".into()
            }
        );
        assert_eq!(
            BaseRef::parse("localhost:5000/base/node:20").unwrap(),
            BaseRef::Registry("localhost:5000/base/node:20".into())
        );
        let err = BaseRef::parse("oci:/tmp/x").unwrap_err().to_string();
        assert!(err.contains("oci:DIR:TAG"), "{err}");
        assert!(BaseRef::parse("Not A Ref!").is_err());
    }
}
