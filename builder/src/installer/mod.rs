//! The installer seam: how the production dependencies of an app become the tree of its deps
//! layer. Each installer says what decides its tree (its cache key) and installs it into a
//! scratch directory. A new package manager is a new file here plus one line in [`choose`].

mod npm_ci;
mod vendored;

use std::path::{Path, PathBuf};

use kiln_layers::CacheKey;

use crate::pipeline::Context;
use crate::{BuildError, Result};

/// Installs the production dependencies of an app.
pub(crate) trait Installer {
    /// How it is named in progress and records (`npm ci`).
    fn name(&self) -> &'static str;
    /// `key` plus everything that decides the tree it installs.
    fn key(&self, cx: &Context, key: CacheKey) -> Result<CacheKey>;
    /// Whether the tree may hold native code, judged before installing (the lockfile's
    /// install scripts and os/cpu/libc constraints); such a layer is keyed by Node ABI and
    /// platform. Native code found only after installing is keyed so too.
    fn may_be_native(&self, cx: &Context) -> bool;
    /// Installs into `scratch` and returns the `node_modules` directory to layer.
    fn install(&self, cx: &Context, scratch: &Path) -> Result<PathBuf>;
}

/// The installer for the app in `cx`, or `None` when it has no dependencies.
pub(crate) fn choose(cx: &Context) -> Result<Option<Box<dyn Installer>>> {
    if cx.source.join("node_modules").is_dir() {
        return Ok(Some(Box::new(vendored::Vendored::scan(cx.source)?)));
    }
    if cx.packages.lockfile.is_some() {
        return Ok(Some(Box::new(npm_ci::NpmCi)));
    }
    if cx.packages.has_dependencies() {
        return Err(BuildError::MissingLockfile {
            path: cx.source.join("package.json"),
        });
    }
    Ok(None)
}
