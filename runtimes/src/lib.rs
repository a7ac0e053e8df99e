//! The kiln runtime catalog: one folder per runtime (`faas/`, `sma/`, `sma-light/`, `app/`) holding its
//! `runtime.json` definition and its JavaScript, embedded into the binary, plus the runtime
//! layer made from them and the detection of a source's runtime.
//!
//! A runtime layer depends only on the catalog (fixed mtime, sorted entries), so every app of
//! one runtime shares it byte for byte.

use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};
use kiln_layers::{Entry, LayerBuilder};
use serde::Deserialize;

static CATALOG: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR");

/// Names of the runtimes in the catalog.
pub const NAMES: [&str; 4] = ["faas", "sma", "sma-light", "app"];

/// Where runtime files live in an image.
pub const RUNTIME_ROOT: &str = "kiln/runtime";

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A runtime name that is not in the catalog.
    #[error("unknown runtime {0:?} (known runtimes: faas, sma, sma-light, app)")]
    Unknown(String),
    /// A catalog entry that does not hold together (a bug in the catalog, caught by tests).
    #[error("runtime catalog entry {name}: {problem}")]
    Catalog {
        /// The runtime.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A runtime file that could not be written out ([`Runtime::write_files`]).
    #[error("cannot write runtime file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
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
        for (path, contents) in self.contents()? {
            layer.add(&path, Entry::bytes(contents));
        }
        Ok(layer)
    }

    /// Writes the runtime's files under `dir` as its layer lays them out in an image
    /// (`<dir>/kiln/runtime/<name>/server.js`, `<dir>/kiln/runtime/common/http.js`, …), so
    /// that `node <dir>/kiln/runtime/<name>/server.js` runs the production runtime outside
    /// an image (`kiln dev`). Returns the paths written.
    pub fn write_files(&self, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        let mut written = Vec::new();
        for (rel, contents) in self.contents()? {
            let path = dir.join(&rel);
            let write = |path: &Path| {
                std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
                std::fs::write(path, contents)
            };
            write(&path).map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }

    /// Each listed file as `(path in the image without the leading /, contents)`.
    fn contents(&self) -> Result<Vec<(String, &'static [u8])>, Error> {
        self.files
            .iter()
            .map(|file| {
                let rel =
                    normalize(&format!("{}/{file}", self.name)).ok_or_else(|| Error::Catalog {
                        name: self.name.clone(),
                        problem: format!("file {file:?} leaves the catalog"),
                    })?;
                let contents = CATALOG.get_file(&rel).ok_or_else(|| Error::Catalog {
                    name: self.name.clone(),
                    problem: format!("file {file:?} is missing"),
                })?;
                Ok((format!("{RUNTIME_ROOT}/{rel}"), contents.contents()))
            })
            .collect()
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
    fn written_files_are_laid_out_as_in_the_layer() {
        let dir = std::env::temp_dir().join(format!("kiln-runtimes-test-{}", std::process::id()));
        let faas = Runtime::get("faas").unwrap();
        let written = faas.write_files(&dir).unwrap();
        let server = dir.join(format!("{RUNTIME_ROOT}/faas/server.js"));
        let common = dir.join(format!("{RUNTIME_ROOT}/common/http.js"));
        assert_eq!(written, [server.clone(), common.clone()]);
        assert!(
            std::fs::read_to_string(&server)
                .unwrap()
                .contains("'../common/http.js'")
        );
        assert_eq!(
            std::fs::read(&common).unwrap(),
            CATALOG.get_file("common/http.js").unwrap().contents()
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
