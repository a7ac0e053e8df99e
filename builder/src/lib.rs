//! The kiln build pipeline: resolve the base, make the runtime, dependencies and app layers
//! (each cached by key), write config and manifest, and publish to an OCI layout, an OCI
//! archive or a registry.

pub mod base;
pub mod build;
pub mod build_step;
pub mod built;
pub mod destination;
pub mod error;
pub mod host_base;
pub mod image;
pub mod image_config;
mod installer;
pub mod light_bundle;
mod lockfile;
pub mod native;
pub mod node_version;
pub mod npm;
pub mod output;
pub mod package_manager;
mod pipeline;
pub mod progress;
pub mod project;
pub mod pull;
pub mod push;
pub mod rebase;
pub mod registry;
pub mod sandbox;
pub mod seen;
pub mod shared;
mod stages;
pub mod start;
pub mod workspace;

pub use base::{BaseRef, BaseSource};
pub use build::{BuildRequest, build, build_runtime_base, build_with};
pub use built::{Built, LayerKind, LayerRecord};
pub use destination::{Destination, Published, publish};
pub use error::{BuildError, Result};
pub use kiln_runtimes::NAMES as RUNTIME_NAMES;
pub use progress::{Progress, Quiet, Step};
pub use project::BuildScript;
