//! package.json and package-lock.json checks, and `npm ci` in a scratch directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::package_manager::{LockKind, Lockfile, Tool, find_lockfile};
use crate::workspace::Workspace;
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
    /// The lockfile, if there is one (npm's, pnpm's or yarn's).
    pub lockfile: Option<Lockfile>,
    /// An npm lockfile parsed (null otherwise), read once for everyone who needs it.
    pub lock: Value,
    /// The pnpm or yarn the lockfile asks for (none for npm, which is the machine's).
    pub tool: Option<Tool>,
}

/// Reads and checks `package.json` and the lockfile of `source`.
pub fn read(source: &Path) -> Result<Manifest> {
    read_in(source, None)
}

/// Reads the package.json of the workspace package `ws` and the monorepo's lockfile, checked
/// against it.
pub fn read_workspace(ws: &Workspace) -> Result<Manifest> {
    read_in(&ws.root, Some(&ws.dir))
}

fn read_json(path: &Path) -> Result<Value> {
    let package = match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice::<Value>(&bytes).map_err(|e| BuildError::PackageJson {
                path: path.to_owned(),
                problem: e.to_string(),
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => return Err(kiln_layers::Error::io("read", path)(e).into()),
    };
    if !package.is_null() && !package.is_object() {
        return Err(BuildError::PackageJson {
            path: path.to_owned(),
            problem: "not a JSON object".into(),
        });
    }
    Ok(package)
}

/// package.json of `root` (or of its package `dir`) and the lockfile of `root`.
fn read_in(root: &Path, dir: Option<&str>) -> Result<Manifest> {
    let root_package = read_json(&root.join("package.json"))?;
    let package = match dir {
        Some(dir) => read_json(&root.join(dir).join("package.json"))?,
        None => root_package.clone(),
    };
    let lockfile = find_lockfile(root, &root_package)?;
    let tool = match &lockfile {
        Some(lock) => Tool::for_lockfile(root, &root_package, lock)?,
        None => None,
    };
    let lock = match &lockfile {
        Some(lock) if lock.kind == LockKind::Npm => check_lockfile(
            &root.join(lock.name),
            &lock.bytes,
            &package,
            dir.unwrap_or_default(),
        )?,
        _ => Value::Null,
    };
    Ok(Manifest {
        package,
        lockfile,
        lock,
        tool,
    })
}

impl Manifest {
    /// The lockfile's bytes, if there is one.
    pub fn lock_bytes(&self) -> Option<&[u8]> {
        self.lockfile.as_ref().map(|l| l.bytes.as_slice())
    }

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

/// Parses and checks a lockfile against package.json (of the package at `entry`, `""` for the
/// root); returns it parsed.
fn check_lockfile(path: &Path, bytes: &[u8], package: &Value, entry: &str) -> Result<Value> {
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
    let root = lock
        .get("packages")
        .and_then(|p| p.get(entry))
        .cloned()
        .unwrap_or(Value::Null);
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

/// Runs `npm ci` with `flags` in `scratch` (where package.json, the lockfile and a source
/// `.npmrc` were copied from `source`) and returns the `node_modules` it made. npm's own
/// config (`~/.npmrc`, `NPM_TOKEN`, `npm_config_*`) applies; nothing of it reaches a layer.
pub fn install_with(source: &Path, scratch: &Path, flags: &[&str]) -> Result<PathBuf> {
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

/// The version of the `npm` on PATH, read from its package.json (no process started), or
/// `unknown`.
pub fn npm_version() -> String {
    let found = crate::host_base::which("npm")
        .and_then(|bin| std::fs::canonicalize(bin).ok())
        .and_then(|real| {
            real.ancestors().skip(1).take(3).find_map(|dir| {
                let package: Value =
                    serde_json::from_slice(&std::fs::read(dir.join("package.json")).ok()?).ok()?;
                (package.get("name")?.as_str()? == "npm")
                    .then(|| package.get("version")?.as_str().map(str::to_owned))?
            })
        });
    found.unwrap_or_else(|| "unknown".into())
}
