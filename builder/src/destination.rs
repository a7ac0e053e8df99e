//! Where a built image goes, published by one call: OCI archives and layouts on disk, then a
//! registry. The CLI and anything else that publishes share it.

use std::path::PathBuf;

use crate::push::{Pushed, push_image};
use crate::registry::Registry;
use crate::{Built, Result, output};

/// One place to put an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// An OCI archive (a tar of a layout) at `path`, the image named `tag` in it.
    Archive {
        /// The archive file.
        path: PathBuf,
        /// Reference name of the image in it.
        tag: String,
    },
    /// An OCI layout directory, the image tagged `tag` in its index.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// Reference name of the image in it.
        tag: String,
    },
    /// A registry reference (`host[:port]/repo:tag`).
    Registry(String),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Archive { path, .. } => write!(f, "{}", path.display()),
            Destination::Layout { dir, tag } => write!(f, "{}:{tag}", dir.display()),
            Destination::Registry(reference) => f.write_str(reference),
        }
    }
}

/// What publishing did at one destination.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Published {
    /// Where (as [`Destination`] displays it).
    pub destination: String,
    /// For a registry: what the push did.
    pub pushed: Option<Pushed>,
}

/// Publishes `built` to every destination, in order; `registry` is used for pushes.
pub async fn publish(
    built: &Built,
    destinations: &[Destination],
    registry: &Registry,
) -> Result<Vec<Published>> {
    let mut done = Vec::new();
    for destination in destinations {
        let pushed = match destination {
            Destination::Archive { path, tag } => {
                output::write_archive(built, path, tag)?;
                None
            }
            Destination::Layout { dir, tag } => {
                output::write_layout(built, dir, tag)?;
                None
            }
            Destination::Registry(reference) => Some(push_image(registry, built, reference).await?),
        };
        done.push(Published {
            destination: destination.to_string(),
            pushed,
        });
    }
    Ok(done)
}
