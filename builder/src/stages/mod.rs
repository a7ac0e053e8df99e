//! The stages of an app build, in order. A new kind of layer (an SBOM, say) is a new file here
//! plus one line in [`for_app`].

mod app;
mod built_app;
mod deps;
mod runtime;

pub(crate) use runtime::runtime_layer;

use crate::build_step::Chosen;
use crate::pipeline::Stage;

/// The stages of an app image: runtime, deps, then the app as it is or as its build script
/// leaves it.
pub(crate) fn for_app(build_script: Option<Chosen>) -> Vec<Box<dyn Stage>> {
    let app: Box<dyn Stage> = match build_script {
        Some(script) => Box::new(built_app::BuiltApp { script }),
        None => Box::new(app::App),
    };
    vec![Box::new(runtime::RuntimeStage), Box::new(deps::Deps), app]
}
