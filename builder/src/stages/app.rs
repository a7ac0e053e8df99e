//! The app layer (`/app`) of an app without a build step: its shipped files as they are.

use kiln_layers::{CacheKey, Entry, LayerBuilder, SourceTree};

use crate::built::LayerKind;
use crate::pipeline::{Context, Made, Plan, Stage};
use crate::{Result, start};

pub(crate) struct App;

impl Stage for App {
    fn kind(&self) -> LayerKind {
        LayerKind::App
    }

    fn plan(&self, cx: &Context) -> Result<Plan> {
        Ok(Plan::Layer {
            keys: vec![
                CacheKey::new("app")
                    .with("content", cx.content.as_str())
                    .with("mtime", cx.epoch.to_string()),
            ],
            detail: format!("{} entries", cx.tree.entries().len()),
            shared: false,
        })
    }

    fn make(&self, cx: &Context, keys: &[CacheKey]) -> Result<Made> {
        Ok(Made {
            layer: app_layer(cx, cx.tree).write_to(cx.cache.store())?,
            key: keys[0].clone(),
            detail: None,
        })
    }
}

/// `/app` holding `tree`, plus the directories the app's framework writes at run time.
pub(super) fn app_layer(cx: &Context, tree: &SourceTree) -> LayerBuilder {
    let mut layer = LayerBuilder::new(cx.epoch);
    layer.add("app", Entry::dir());
    tree.add_to(&mut layer, "app");
    for (dir, mode) in start::framework_dirs(&cx.packages.package) {
        layer.add(&format!("app/{dir}"), Entry::dir().with_mode(*mode));
    }
    layer
}
