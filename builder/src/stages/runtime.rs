//! The runtime layer: the launcher of the runtime the app uses, unless the base is already
//! that runtime's base.

use kiln_layers::{CacheKey, Digest, Layer, LayerBuilder, LayerCache};
use kiln_runtimes::Runtime;

use crate::build::LABEL_RUNTIME;
use crate::built::LayerKind;
use crate::error::BaseProblem;
use crate::pipeline::{Context, Made, Plan, Stage};
use crate::{BuildError, Result};

pub(crate) struct RuntimeStage;

impl Stage for RuntimeStage {
    fn kind(&self) -> LayerKind {
        LayerKind::Runtime
    }

    fn plan(&self, cx: &Context) -> Result<Plan> {
        match cx.base.label(LABEL_RUNTIME) {
            None => Ok(Plan::Layer {
                keys: vec![key(&cx.runtime.layer()?)?],
                detail: cx.runtime.name.clone(),
                shared: false,
            }),
            Some(name) if name == cx.runtime.name => match cx.base.manifest.layers.last() {
                Some(top) => Ok(Plan::InBase {
                    descriptor: top.clone(),
                    detail: format!("{name}, in the runtime base"),
                }),
                None => Ok(Plan::Skip),
            },
            Some(other) => Err(BuildError::Base {
                reference: cx.base.name.clone(),
                problem: BaseProblem::OtherRuntime {
                    have: other.to_owned(),
                    want: cx.runtime.name.clone(),
                },
            }),
        }
    }

    fn make(&self, cx: &Context, keys: &[CacheKey]) -> Result<Made> {
        Ok(Made {
            layer: cx.runtime.layer()?.write_to(cx.cache.store())?,
            key: keys[0].clone(),
            detail: None,
        })
    }
}

fn key(builder: &LayerBuilder) -> Result<CacheKey> {
    let tar = builder.write_tar(Vec::new())?;
    Ok(CacheKey::new("runtime").with("tar", Digest::of(&tar).as_str()))
}

/// The runtime layer of `runtime` from `cache`, or made and stored; whether it was cached.
pub(crate) fn runtime_layer(
    runtime: &Runtime,
    cache: &LayerCache,
) -> Result<(Layer, CacheKey, bool)> {
    let builder = runtime.layer()?;
    let key = key(&builder)?;
    if let Some(layer) = cache.get(&key) {
        return Ok((layer, key, true));
    }
    let layer = builder.write_to(cache.store())?;
    cache.put(&key, &layer)?;
    Ok((layer, key, false))
}
