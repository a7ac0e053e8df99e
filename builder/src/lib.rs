//! The kiln build pipeline: resolve the base, make the runtime, dependencies and app layers
//! (each cached by key), write config and manifest, and publish to an OCI layout or archive.

pub mod build;
pub mod error;
pub mod host_base;
pub mod image;
pub mod npm;
pub mod output;
pub mod progress;

pub use build::{BaseSource, BuildRequest, Built, build};
pub use error::{BuildError, Result};
pub use progress::{Progress, Quiet, Step};
