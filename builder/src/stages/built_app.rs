//! The app layer of an app with a build step: what its build script leaves, run in the
//! sandbox on a copy of the shipped files (see [`crate::build_step`]).

use kiln_layers::source::ScanOptions;
use kiln_layers::{CacheKey, SourceTree};

use super::app::app_layer;
use crate::Result;
use crate::build_step::{self, Chosen};
use crate::built::LayerKind;
use crate::pipeline::{Context, Made, Plan, Stage};

pub(crate) struct BuiltApp {
    pub(crate) script: Chosen,
}

impl Stage for BuiltApp {
    fn kind(&self) -> LayerKind {
        LayerKind::App
    }

    fn plan(&self, cx: &Context) -> Result<Plan> {
        let key = build_step::key(cx.content, cx.packages.lock_bytes(), &self.script)
            .with("mtime", cx.epoch.to_string());
        Ok(Plan::Layer {
            keys: vec![key],
            detail: format!("built by script \"{}\"", self.script.name),
            shared: false,
        })
    }

    fn make(&self, cx: &Context, keys: &[CacheKey]) -> Result<Made> {
        let built = build_step::run(cx, cx.installer, &self.script)?;
        let output = SourceTree::scan(built.path(), &ScanOptions::app())?;
        Ok(Made {
            layer: app_layer(cx, &output)?.write_to(cx.cache.store())?,
            key: keys[0].clone(),
            detail: Some(format!(
                "{} entries, built by script \"{}\"",
                output.entries().len(),
                self.script.name
            )),
        })
    }
}
