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

/// Publishes `built` to every destination, in order; `push` pushes to a registry reference
/// (so that a build written only to disk starts no async runtime and no registry client,
/// which loads the system's CA certificates). [`push_with`] makes one from a client.
pub fn publish(
    built: &Built,
    destinations: &[Destination],
    mut push: impl FnMut(&str) -> Result<Pushed>,
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
            Destination::Registry(reference) => Some(push(reference)?),
        };
        done.push(Published {
            destination: destination.to_string(),
            pushed,
        });
    }
    Ok(done)
}

/// A `push` for [`publish`]: `built` pushed with `registry` on the async runtime `runtime`.
pub fn push_with<'a>(
    built: &'a Built,
    registry: &'a Registry,
    runtime: &'a tokio::runtime::Handle,
) -> impl FnMut(&str) -> Result<Pushed> + 'a {
    move |reference| runtime.block_on(push_image(registry, built, reference))
}
