//! package.json and package-lock.json checks, and `npm ci` in a scratch directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{BuildError, Result};

/// Flags of the dependency install; part of the deps cache key.
pub const NPM_CI_FLAGS: [&str; 5] = [
    "--omit=dev",
    "--ignore-scripts",
    "--no-audit",
    "--no-fund",
    "--loglevel=error",
];

/// What a source declares about its dependencies.
#[derive(Debug, Default)]
pub struct Manifest {
    /// The package.json contents (null when absent).
    pub package: Value,
    /// Lockfile bytes, if there is one.
    pub lockfile: Option<Vec<u8>>,
    /// The lockfile parsed (null when absent), read once for everyone who needs it.
    pub lock: Value,
}

/// Reads and checks `package.json` and `package-lock.json` of `source`.
pub fn read(source: &Path) -> Result<Manifest> {
    let pkg_path = source.join("package.json");
    let package = match std::fs::read(&pkg_path) {
        Ok(bytes) => {
            serde_json::from_slice::<Value>(&bytes).map_err(|e| BuildError::PackageJson {
                path: pkg_path.clone(),
                problem: e.to_string(),
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => return Err(kiln_layers::Error::io("read", &pkg_path)(e).into()),
    };
    if !package.is_null() && !package.is_object() {
        return Err(BuildError::PackageJson {
            path: pkg_path,
            problem: "not a JSON object".into(),
        });
    }
    let lock_path = source.join("package-lock.json");
    let lockfile = match std::fs::read(&lock_path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(kiln_layers::Error::io("read", &lock_path)(e).into()),
    };
    let lock = match &lockfile {
        Some(bytes) => check_lockfile(&lock_path, bytes, &package)?,
        None => Value::Null,
    };
    Ok(Manifest {
        package,
        lockfile,
        lock,
    })
}

impl Manifest {
    /// True when package.json declares runtime dependencies.
    pub fn has_dependencies(&self) -> bool {
        ["dependencies", "optionalDependencies"].iter().any(|k| {
            self.package
                .get(k)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
        })
    }
}

fn deps(v: &Value, key: &str) -> BTreeMap<String, String> {
    v.get(key)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses and checks a lockfile against package.json; returns it parsed.
fn check_lockfile(path: &Path, bytes: &[u8], package: &Value) -> Result<Value> {
    let lock: Value = serde_json::from_slice(bytes).map_err(|e| BuildError::Lockfile {
        path: path.into(),
        problem: e.to_string(),
    })?;
    let version = lock.get("lockfileVersion").and_then(Value::as_u64);
    if !matches!(version, Some(2 | 3)) {
        return Err(BuildError::Lockfile {
            path: path.into(),
            problem: format!("lockfileVersion {version:?} (need 2 or 3, npm 7 or newer)"),
        });
    }
    let root = lock.pointer("/packages/").cloned().unwrap_or(Value::Null);
    for key in ["dependencies", "devDependencies", "optionalDependencies"] {
        let (want, have) = (deps(package, key), deps(&root, key));
        if want != have {
            let diff = want
                .iter()
                .find(|(k, v)| have.get(*k) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{key}.{k} = {v:?} in package.json, {:?} in the lockfile",
                        have.get(k)
                    )
                })
                .or_else(|| {
                    have.keys()
                        .find(|k| !want.contains_key(*k))
                        .map(|k| format!("{key}.{k} is in the lockfile only"))
                })
                .unwrap_or_default();
            return Err(BuildError::LockfileOutOfSync {
                path: path.into(),
                problem: diff,
            });
        }
    }
    Ok(lock)
}

/// Runs `npm ci` for `source` in `scratch` (package.json, lockfile and a source `.npmrc` are
/// copied there) and returns the `node_modules` it made. npm's own config (`~/.npmrc`,
/// `NPM_TOKEN`, `npm_config_*`) applies; nothing of it reaches a layer.
pub fn install(source: &Path, scratch: &Path) -> Result<PathBuf> {
    install_with(source, scratch, &NPM_CI_FLAGS)
}

/// [`install`] with other `npm ci` flags.
pub fn install_with(source: &Path, scratch: &Path, flags: &[&str]) -> Result<PathBuf> {
    for name in ["package.json", "package-lock.json", ".npmrc"] {
        let from = source.join(name);
        if from.is_file() {
            std::fs::copy(&from, scratch.join(name))
                .map_err(kiln_layers::Error::io("copy", &from))?;
        }
    }
    let failed = |status: String, output: String| BuildError::Npm {
        source_dir: source.into(),
        status,
        output,
    };
    let out = Command::new("npm")
        .arg("ci")
        .args(flags)
        .current_dir(scratch)
        .output()
        .map_err(|e| failed(format!("cannot run npm: {e}"), String::new()))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(8)..].join("\n");
        return Err(failed(out.status.to_string(), tail));
    }
    Ok(scratch.join("node_modules"))
}
