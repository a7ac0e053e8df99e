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
            layer: app_layer(cx, cx.tree)?.write_to(cx.cache.store())?,
            key: keys[0].clone(),
            detail: None,
        })
    }
}

/// `/app` holding `tree`, plus the directories the app's framework writes at run time; in a
/// monorepo `/app` is its root: the package and the workspace packages it needs at their
/// places, and the root's package.json.
pub(super) fn app_layer(cx: &Context, tree: &SourceTree) -> Result<LayerBuilder> {
    let mut layer = LayerBuilder::new(cx.epoch);
    layer.add("app", Entry::dir());
    let at = match cx.workspace {
        Some(ws) => {
            let root_package = cx.root.join("package.json");
            let size = std::fs::metadata(&root_package)
                .map_err(kiln_layers::Error::io("stat", &root_package))?
                .len();
            layer.add("app/package.json", Entry::file(root_package, size, false));
            for (dir, member) in cx.members {
                member.add_to(&mut layer, &format!("app/{dir}"));
            }
            format!("app/{}", ws.dir)
        }
        None => "app".to_owned(),
    };
    layer.add(&at, Entry::dir());
    tree.add_to(&mut layer, &at);
    for (dir, mode) in start::framework_dirs(&cx.packages.package) {
        layer.add(&format!("{at}/{dir}"), Entry::dir().with_mode(*mode));
    }
    Ok(layer)
}
