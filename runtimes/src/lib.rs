//! The kiln runtime catalog: one folder per runtime (`faas/`, `sma/`, `app/`) holding its
//! `runtime.json` definition and its JavaScript, embedded into the binary, plus the runtime
//! layer made from them and the detection of a source's runtime.
//!
//! A runtime layer depends only on the catalog (fixed mtime, sorted entries), so every app of
//! one runtime shares it byte for byte.

use std::path::Path;

use include_dir::{Dir, include_dir};
use kiln_layers::{Entry, LayerBuilder};
use serde::Deserialize;

static CATALOG: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR");

/// Names of the runtimes in the catalog.
pub const NAMES: [&str; 3] = ["faas", "sma", "app"];

/// Where runtime files live in an image.
pub const RUNTIME_ROOT: &str = "kiln/runtime";

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A runtime name that is not in the catalog.
    #[error("unknown runtime {0:?} (known runtimes: faas, sma, app)")]
    Unknown(String),
    /// A catalog entry that does not hold together (a bug in the catalog, caught by tests).
    #[error("runtime catalog entry {name}: {problem}")]
    Catalog {
        /// The runtime.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

/// A runtime's `runtime.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Runtime {
    /// Its name (`faas`, `sma`, `app`).
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// The image entrypoint.
    pub entrypoint: Vec<String>,
    /// The port the runtime listens on (`$PORT`).
    pub port: u16,
    /// Files of the runtime folder that go into the image, relative to it.
    pub files: Vec<String>,
}

impl Runtime {
    /// Looks a runtime up by name.
    pub fn get(name: &str) -> Result<Runtime, Error> {
        if !NAMES.contains(&name) {
            return Err(Error::Unknown(name.into()));
        }
        let bad = |problem: String| Error::Catalog {
            name: name.into(),
            problem,
        };
        let def = CATALOG
            .get_file(format!("{name}/runtime.json"))
            .ok_or_else(|| bad("no runtime.json".into()))?;
        let runtime: Runtime = serde_json::from_slice(def.contents())
            .map_err(|e| bad(format!("runtime.json: {e}")))?;
        if runtime.name != name {
            return Err(bad(format!("runtime.json names {:?}", runtime.name)));
        }
        Ok(runtime)
    }

    /// The runtime layer: each listed file at `kiln/runtime/<name>/<file>`, mtime 0, 0644.
    pub fn layer(&self) -> Result<LayerBuilder, Error> {
        let mut layer = LayerBuilder::new(0);
        for file in &self.files {
            let rel =
                normalize(&format!("{}/{file}", self.name)).ok_or_else(|| Error::Catalog {
                    name: self.name.clone(),
                    problem: format!("file {file:?} leaves the catalog"),
                })?;
            let contents = CATALOG.get_file(&rel).ok_or_else(|| Error::Catalog {
                name: self.name.clone(),
                problem: format!("file {file:?} is missing"),
            })?;
            layer.add(
                &format!("{RUNTIME_ROOT}/{rel}"),
                Entry::bytes(contents.contents()),
            );
        }
        Ok(layer)
    }
}

/// Resolves `.` and `..` in a `/`-separated relative path; `None` if it climbs above the start.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Which runtime a source directory is for, and the reason.
pub fn detect(source: &Path) -> (&'static str, &'static str) {
    if source.join("functions").is_dir() {
        ("faas", "functions/ found")
    } else if source.join("service.js").is_file() {
        ("sma", "service.js found")
    } else {
        ("app", "no functions/ or service.js")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_in_the_catalog_loads_and_makes_a_layer() {
        for name in NAMES {
            let runtime = Runtime::get(name).unwrap();
            assert_eq!(
                runtime.entrypoint.last().unwrap(),
                &format!("/{RUNTIME_ROOT}/{name}/server.js")
            );
            assert!(runtime.layer().unwrap().len() >= 3, "{name}");
        }
    }

    #[test]
    fn unknown_runtime_is_named() {
        let err = Runtime::get("lambda").unwrap_err().to_string();
        assert!(err.contains("\"lambda\"") && err.contains("faas"), "{err}");
    }

    #[test]
    fn paths_cannot_climb_out() {
        assert_eq!(
            normalize("faas/../common/http.js").as_deref(),
            Some("common/http.js")
        );
        assert_eq!(normalize("faas/../../x"), None);
    }
}
