//! The deps layer (`/app/node_modules`): the production dependencies as the chosen installer
//! lays them out. Keyed by the installer's inputs; by Node ABI, platform and libc too when the
//! tree may hold native code, so a portable tree is shared across Node versions.

use kiln_layers::source::ScanOptions;
use kiln_layers::{CacheKey, Entry, Layer, LayerBuilder, SourceTree};

use crate::built::LayerKind;
use crate::host_base::{LABEL_LIBC, LABEL_NODE_ABI};
use crate::installer::{self, Installer};
use crate::pipeline::{Context, Made, Plan, Stage};
use crate::{Result, Step, native, workspace};

/// The deps stage.
pub(crate) struct Deps;

impl Deps {
    /// The key for a portable tree and the one for a tree with native code.
    fn keys(cx: &Context, installer: &dyn Installer) -> Result<(CacheKey, CacheKey)> {
        let portable = installer.key(
            cx,
            CacheKey::new("deps")
                .with("runtime", &cx.runtime.name)
                .with("mtime", cx.epoch.to_string()),
        )?;
        let native = portable
            .clone()
            .with("abi", abi(cx))
            .with("platform", platform(cx));
        Ok((portable, native))
    }
}

impl Stage for Deps {
    fn kind(&self) -> LayerKind {
        LayerKind::Deps
    }

    fn plan(&self, cx: &Context) -> Result<Plan> {
        let Some(installer) = cx.installer else {
            return Ok(Plan::Skip);
        };
        let (portable, native) = Self::keys(cx, installer)?;
        // A tree that may be native is only ever stored under the native key; one that
        // should be portable is looked up there too, in case native code turned up.
        let keys = if installer.may_be_native(cx) {
            vec![native]
        } else {
            vec![native, portable]
        };
        let detail = installer.name();
        Ok(Plan::Layer {
            keys,
            detail,
            shared: true,
        })
    }

    fn make(&self, cx: &Context, keys: &[CacheKey]) -> Result<Made> {
        let installer = cx.installer.expect("planned with an installer");
        let (layer, native) = match installer.write_layer(cx) {
            Some(streamed) => {
                let streamed = streamed?;
                (streamed.layer, streamed.native)
            }
            None => from_disk(cx, installer)?,
        };
        let key = if native.is_empty() {
            keys.last()
        } else {
            cx.progress.step(Step::Note(format!(
                "deps: native code in {} (layer keyed by Node ABI {} and {})",
                native.join(", "),
                abi(cx),
                platform(cx)
            )));
            keys.first()
        };
        Ok(Made {
            layer,
            key: key.expect("at least one key").clone(),
            detail: None,
        })
    }
}

/// Installs into a scratch directory and writes the layer from the tree there; returns it and
/// the packages with native code.
fn from_disk(cx: &Context, installer: &dyn Installer) -> Result<(Layer, Vec<String>)> {
    let scratch = cx.scratch()?;
    let modules = installer.install(cx, scratch.path(), installer::Deps::Production)?;
    let native = native::packages_with_native_code(&modules);
    let mut layer = LayerBuilder::new(cx.epoch);
    layer
        .add("app", Entry::dir())
        .add("app/node_modules", Entry::dir());
    match cx.workspace {
        // The node_modules of the root and of the members, as far as the closure goes.
        Some(ws) => {
            let tree = SourceTree::scan(scratch.path(), &ScanOptions::default())?;
            tree.filtered(|entry| {
                workspace::in_members_modules(ws, &entry.rel)
                    && installer.keeps(cx, &entry.rel, &entry.path)
            })
            .add_to(&mut layer, "app");
        }
        None => {
            let tree = SourceTree::scan(&modules, &ScanOptions::default())?;
            tree.add_to(&mut layer, "app/node_modules");
        }
    }
    Ok((layer.write_to(cx.cache.store())?, native))
}

fn abi(cx: &Context) -> String {
    cx.base
        .label(LABEL_NODE_ABI)
        .unwrap_or("unknown")
        .to_owned()
}

fn platform(cx: &Context) -> String {
    format!(
        "{}/{}/{}",
        cx.base.config.os,
        cx.base.config.architecture,
        cx.base.label(LABEL_LIBC).unwrap_or("unknown")
    )
}
