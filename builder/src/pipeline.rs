//! The build as a sequence of stages (runtime → deps → app), driven by one loop: each stage
//! says what its layer depends on (its cache keys), the loop looks the layer up in the local
//! cache and then in the shared one, asks the stage to make it only on a miss, stores it, and
//! reports and records it the same way for every stage.

use std::path::Path;
use std::time::Instant;

use kiln_layers::{CacheKey, Descriptor, Digest, Layer, LayerCache, SourceTree};
use kiln_runtimes::Runtime;

use crate::built::{LayerKind, LayerRecord};
use crate::image::Base;
use crate::installer::Installer;
use crate::project::ProjectConfig;
use crate::shared::SharedLayers;
use crate::workspace::Workspace;
use crate::{Progress, Result, Step, npm, seen};

/// What every stage may read: the inputs of the build and what earlier steps resolved.
pub(crate) struct Context<'a> {
    /// The app's directory (a workspace package's own directory in a monorepo).
    pub source: &'a Path,
    /// Where its lockfile is: `source`, or the monorepo's root.
    pub root: &'a Path,
    /// The monorepo package being built, if it is one.
    pub workspace: Option<&'a Workspace>,
    /// How its dependencies are installed (none when it has none).
    pub installer: Option<&'a dyn Installer>,
    /// package.json and the lockfile.
    pub packages: &'a npm::Manifest,
    /// The project's `kiln` settings.
    pub config: &'a ProjectConfig,
    /// The runtime the image runs.
    pub runtime: &'a Runtime,
    /// The base image.
    pub base: &'a Base,
    /// The app's shipped files (ignore files applied, `node_modules` left out).
    pub tree: &'a SourceTree,
    /// In a monorepo, the other workspace packages that ship (directory from the root, files).
    pub members: &'a [(String, SourceTree)],
    /// The content digest of `tree` (and of `members`).
    pub content: &'a Digest,
    /// Layer cache and blob store.
    pub cache: &'a LayerCache,
    /// mtime of every entry kiln writes (`SOURCE_DATE_EPOCH`).
    pub epoch: u64,
    /// Where steps are reported.
    pub progress: &'a dyn Progress,
}

impl Context<'_> {
    /// A new scratch directory in the cache (`tmp/`), removed when dropped.
    pub fn scratch(&self) -> Result<tempfile::TempDir> {
        let root = self.cache.store().root().join("tmp");
        std::fs::create_dir_all(&root)
            .map_err(kiln_layers::Error::io("create directory", &root))?;
        tempfile::tempdir_in(&root)
            .map_err(kiln_layers::Error::io("create scratch directory in", &root))
            .map_err(Into::into)
    }
}

/// What a stage needs in this build.
pub(crate) enum Plan {
    /// No layer (an app without dependencies has no deps layer).
    Skip,
    /// The layer is already in the base image (a runtime base holds the runtime layer).
    InBase {
        /// The base's layer.
        descriptor: Descriptor,
        /// What to say about it.
        detail: String,
    },
    /// A layer cached by key.
    Layer {
        /// Keys it may be stored under, looked up in order.
        keys: Vec<CacheKey>,
        /// What to say about it.
        detail: String,
        /// Whether other machines' layers (the shared cache) can stand in for it.
        shared: bool,
    },
}

/// A layer a stage made.
pub(crate) struct Made {
    /// The layer, written to the store.
    pub layer: Layer,
    /// Which of the plan's keys it is stored under.
    pub key: CacheKey,
    /// What to say about it, when it differs from the plan's.
    pub detail: Option<String>,
}

/// One stage of the build: one layer kind, its keys, and how to make it.
pub(crate) trait Stage {
    /// The layer kind it makes.
    fn kind(&self) -> LayerKind;
    /// What this build needs from the stage.
    fn plan(&self, cx: &Context) -> Result<Plan>;
    /// Makes the layer of `keys` (the plan's) on a cache miss.
    fn make(&self, cx: &Context, keys: &[CacheKey]) -> Result<Made>;
}

/// A layer the stages produced, with its history line.
pub(crate) struct Staged {
    /// What is known about it.
    pub record: LayerRecord,
    /// The layer itself.
    pub layer: Layer,
    /// The key it is stored under.
    pub key: Option<CacheKey>,
}

/// Runs `stages` in order; layers already in the base are recorded but not returned as new.
pub(crate) fn run(
    stages: &[Box<dyn Stage>],
    cx: &Context,
    shared: &dyn SharedLayers,
) -> Result<(Vec<Staged>, Vec<LayerRecord>)> {
    let mut made = Vec::new();
    let mut in_base = Vec::new();
    for stage in stages {
        let started = Instant::now();
        let kind = stage.kind();
        let (descriptor, hit, from_shared, detail, layer, key) = match stage.plan(cx)? {
            Plan::Skip => continue,
            Plan::InBase { descriptor, detail } => (descriptor, true, false, detail, None, None),
            Plan::Layer {
                keys,
                detail,
                shared: may_share,
            } => {
                let (layer, key, hit, from_shared, detail) =
                    lookup_or_make(stage.as_ref(), cx, shared, keys, detail, may_share)?;
                (
                    layer.descriptor.clone(),
                    hit,
                    from_shared,
                    detail,
                    Some(layer),
                    Some(key),
                )
            }
        };
        cx.progress.step(Step::Layer {
            kind,
            detail: detail.clone(),
            descriptor: descriptor.clone(),
            cache_hit: hit,
            cache_key: key.as_ref().map(CacheKey::digest),
        });
        let diff_id = match &layer {
            Some(layer) => layer.diff_id.clone(),
            None => cx.base.diff_id_of(&descriptor)?,
        };
        let record = LayerRecord {
            kind,
            descriptor,
            diff_id,
            cache_key: key.as_ref().map(CacheKey::digest),
            cache_hit: hit,
            shared: from_shared,
            detail,
            millis: started.elapsed().as_millis() as u64,
        };
        match layer {
            Some(layer) => made.push(Staged { record, layer, key }),
            None => in_base.push(record),
        }
    }
    Ok((made, in_base))
}

type Found = (Layer, CacheKey, bool, bool, String);

fn lookup_or_make(
    stage: &dyn Stage,
    cx: &Context,
    shared: &dyn SharedLayers,
    keys: Vec<CacheKey>,
    detail: String,
    may_share: bool,
) -> Result<Found> {
    for key in &keys {
        if let Some(layer) = cx.cache.get(key) {
            return Ok((layer, key.clone(), true, false, detail));
        }
    }
    if may_share {
        for key in &keys {
            if let Some(found) = shared.get(&key.digest()) {
                // Made and pushed by another machine: the push mounts it from there.
                seen::record(
                    cx.cache.store(),
                    &found.layer.descriptor.digest,
                    &found.repository,
                );
                return Ok((
                    found.layer,
                    key.clone(),
                    true,
                    true,
                    format!("{detail}, shared cache"),
                ));
            }
        }
    }
    let made = stage.make(cx, &keys)?;
    cx.cache.put(&made.key, &made.layer)?;
    Ok((
        made.layer,
        made.key,
        false,
        false,
        made.detail.unwrap_or(detail),
    ))
}
