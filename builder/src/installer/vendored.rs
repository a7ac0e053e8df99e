//! Dependencies the source already holds (`node_modules` in the app directory): layered as
//! they are, keyed by their files' metadata.

use std::path::{Path, PathBuf};

use kiln_layers::source::ScanOptions;
use kiln_layers::{CacheKey, SourceTree};

use super::{Deps, Installer};
use crate::Result;
use crate::pipeline::Context;

pub(crate) struct Vendored {
    stat_key: String,
    modules: PathBuf,
}

impl Vendored {
    pub(crate) fn scan(source: &Path) -> Result<Vendored> {
        let modules = source.join("node_modules");
        let tree = SourceTree::scan(&modules, &ScanOptions::default())?;
        Ok(Vendored {
            stat_key: tree.stat_key().to_string(),
            modules,
        })
    }
}

impl Installer for Vendored {
    fn name(&self) -> String {
        "node_modules in source".into()
    }

    fn key(&self, _: &Context, key: CacheKey) -> Result<CacheKey> {
        Ok(key.with("vendored", &self.stat_key))
    }

    fn may_be_native(&self, _: &Context) -> bool {
        true
    }

    fn install(&self, _: &Context, _: &Path, _: Deps) -> Result<PathBuf> {
        Ok(self.modules.clone())
    }

    fn installs(&self) -> bool {
        false
    }
}
