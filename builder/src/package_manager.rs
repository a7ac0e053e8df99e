//! Which package manager installs an app and which version: its lockfile says which
//! (`package-lock.json`, `pnpm-lock.yaml`, `yarn.lock` v1 or Berry), package.json's
//! `packageManager` (the corepack convention) says which version, else a default per
//! lockfile. pnpm and yarn are npm packages: fetched once into kiln's cache with `npm pack`
//! (npm's registry, cache and credentials apply), never assumed installed.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{BuildError, Result};

/// Default pnpm when `packageManager` names none (pnpm-lock.yaml v9).
pub const DEFAULT_PNPM: &str = "9.15.9";
/// Default pnpm for lockfile v6 (pnpm 8).
pub const DEFAULT_PNPM_8: &str = "8.15.9";
/// Default yarn for a yarn.lock v1.
pub const DEFAULT_YARN_CLASSIC: &str = "1.22.22";
/// Default yarn for a Berry yarn.lock.
pub const DEFAULT_YARN_BERRY: &str = "4.18.1";

/// The lockfiles kiln reads, by file name.
pub const LOCKFILES: [&str; 3] = ["package-lock.json", "pnpm-lock.yaml", "yarn.lock"];

/// A kind of lockfile, and so of package manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// `package-lock.json` (npm 7+).
    Npm,
    /// `pnpm-lock.yaml`.
    Pnpm,
    /// `yarn.lock` v1 (yarn classic).
    YarnClassic,
    /// `yarn.lock` of yarn 2+ (Berry).
    YarnBerry,
}

impl LockKind {
    /// The package manager's name.
    pub fn manager(self) -> &'static str {
        match self {
            LockKind::Npm => "npm",
            LockKind::Pnpm => "pnpm",
            LockKind::YarnClassic | LockKind::YarnBerry => "yarn",
        }
    }
}

/// An app's lockfile.
#[derive(Clone, Debug)]
pub struct Lockfile {
    /// Which kind.
    pub kind: LockKind,
    /// Its file name.
    pub name: &'static str,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// The lockfile in `dir`, if any. With several, package.json's `packageManager` picks; else
/// it is an error naming them.
pub fn find_lockfile(dir: &Path, package: &Value) -> Result<Option<Lockfile>> {
    let mut found = Vec::new();
    for name in LOCKFILES {
        let path = dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(kiln_layers::Error::io("read", &path)(e).into()),
        };
        let kind = match name {
            "package-lock.json" => LockKind::Npm,
            "pnpm-lock.yaml" => LockKind::Pnpm,
            _ if String::from_utf8_lossy(&bytes).contains("\n__metadata:") => LockKind::YarnBerry,
            _ => LockKind::YarnClassic,
        };
        found.push(Lockfile { kind, name, bytes });
    }
    if found.len() > 1 {
        let wanted = declared(dir, package)?.map(|(name, _)| name);
        let names: Vec<&str> = found.iter().map(|l| l.name).collect();
        return match found
            .into_iter()
            .find(|l| Some(l.kind.manager()) == wanted.as_deref())
        {
            Some(lock) => Ok(Some(lock)),
            None => Err(BuildError::PackageJson {
                path: dir.join("package.json"),
                problem: format!(
                    "several lockfiles ({}): delete the stale ones, or name the package manager in \"packageManager\"",
                    names.join(", ")
                ),
            }),
        };
    }
    Ok(found.pop())
}

/// `packageManager` of package.json as (name, version), the `+sha…` suffix dropped.
fn declared(dir: &Path, package: &Value) -> Result<Option<(String, String)>> {
    let Some(text) = package.get("packageManager") else {
        return Ok(None);
    };
    let bad = || BuildError::PackageJson {
        path: dir.join("package.json"),
        problem: format!("\"packageManager\": {text} is not NAME@VERSION (e.g. \"pnpm@9.15.9\")"),
    };
    let text = text.as_str().ok_or_else(bad)?;
    let (name, version) = text.split_once('@').ok_or_else(bad)?;
    let version = version.split('+').next().unwrap_or_default();
    if !matches!(name, "npm" | "pnpm" | "yarn") || node_semver::Version::parse(version).is_err() {
        return Err(bad());
    }
    Ok(Some((name.to_owned(), version.to_owned())))
}

/// A package manager to fetch and run: its npm package, version, and entry script in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tool {
    /// `pnpm` or `yarn`.
    pub name: &'static str,
    /// The npm package that carries it (`pnpm`, `yarn`, `@yarnpkg/cli-dist`).
    pub package: &'static str,
    /// Its version.
    pub version: String,
    /// The script to run with node, inside the package.
    pub entry: &'static str,
}

impl Tool {
    /// The tool for `lock` in the app at `dir` (none for npm, which is the machine's).
    pub fn for_lockfile(dir: &Path, package: &Value, lock: &Lockfile) -> Result<Option<Tool>> {
        let declared = declared(dir, package)?;
        if let Some((name, _)) = &declared
            && name != lock.kind.manager()
        {
            return Err(BuildError::PackageJson {
                path: dir.join("package.json"),
                problem: format!(
                    "\"packageManager\" names {name}, but the lockfile is {} ({})",
                    lock.name,
                    lock.kind.manager()
                ),
            });
        }
        let version = |default: &str| {
            declared
                .as_ref()
                .map_or_else(|| default.to_owned(), |(_, v)| v.clone())
        };
        Ok(match lock.kind {
            LockKind::Npm => None,
            LockKind::Pnpm => {
                let v6 = String::from_utf8_lossy(&lock.bytes).starts_with("lockfileVersion: '6");
                Some(Tool {
                    name: "pnpm",
                    package: "pnpm",
                    version: version(if v6 { DEFAULT_PNPM_8 } else { DEFAULT_PNPM }),
                    entry: "bin/pnpm.cjs",
                })
            }
            LockKind::YarnClassic => Some(Tool {
                name: "yarn",
                package: "yarn",
                version: version(DEFAULT_YARN_CLASSIC),
                entry: "bin/yarn.js",
            }),
            LockKind::YarnBerry => Some(Tool {
                name: "yarn",
                package: "@yarnpkg/cli-dist",
                version: version(DEFAULT_YARN_BERRY),
                entry: "bin/yarn.js",
            }),
        })
    }

    /// `name@version`, as keys and messages show it.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Its entry script, fetched into `tools` (kiln's cache) on first use with `npm pack`.
    pub fn fetch(&self, tools: &Path) -> Result<PathBuf> {
        let dir = tools.join(format!(
            "{}@{}",
            self.package.replace('/', "+"),
            self.version
        ));
        let entry = dir.join("package").join(self.entry);
        if entry.is_file() {
            return Ok(entry);
        }
        std::fs::create_dir_all(tools)
            .map_err(kiln_layers::Error::io("create directory", tools))?;
        let scratch = tempfile::tempdir_in(tools)
            .map_err(kiln_layers::Error::io("create scratch directory in", tools))?;
        let spec = format!("{}@{}", self.package, self.version);
        let out = std::process::Command::new("npm")
            .args(["pack", &spec, "--silent", "--pack-destination"])
            .arg(scratch.path())
            .current_dir(scratch.path())
            .output()
            .map_err(|e| self.fetch_failed(format!("cannot run npm: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            return Err(self.fetch_failed(tail[tail.len().saturating_sub(4)..].join("\n")));
        }
        let tarball = std::fs::read_dir(scratch.path())
            .map_err(kiln_layers::Error::io("read", scratch.path()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "tgz"))
            .ok_or_else(|| self.fetch_failed("npm pack wrote no tarball".into()))?;
        let unpacked = scratch.path().join("unpacked");
        let file =
            std::fs::File::open(&tarball).map_err(kiln_layers::Error::io("open", &tarball))?;
        tar::Archive::new(flate2::read::GzDecoder::new(file))
            .unpack(&unpacked)
            .map_err(kiln_layers::Error::io("unpack", &tarball))?;
        if !unpacked.join("package").join(self.entry).is_file() {
            return Err(self.fetch_failed(format!("the package has no {}", self.entry)));
        }
        // Whole or not at all: a concurrent build that got there first wins.
        if std::fs::rename(&unpacked, &dir).is_err() && !entry.is_file() {
            return Err(self.fetch_failed(format!("cannot move it into {}", dir.display())));
        }
        Ok(entry)
    }

    fn fetch_failed(&self, problem: String) -> BuildError {
        BuildError::FetchTool {
            tool: format!("{}@{}", self.package, self.version),
            problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lock(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn the_lockfile_names_the_manager_and_package_manager_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        lock(d, "yarn.lock", "# yarn lockfile v1\n\n");
        let found = find_lockfile(d, &json!({})).unwrap().unwrap();
        assert_eq!(found.kind, LockKind::YarnClassic);
        let tool = Tool::for_lockfile(d, &json!({}), &found).unwrap().unwrap();
        assert_eq!(tool.label(), format!("yarn@{DEFAULT_YARN_CLASSIC}"));

        lock(
            d,
            "yarn.lock",
            "# This file is generated\n\n__metadata:\n  version: 8\n",
        );
        let found = find_lockfile(d, &json!({})).unwrap().unwrap();
        assert_eq!(found.kind, LockKind::YarnBerry);
        let pkg = json!({"packageManager": "yarn@4.5.0+sha512.abc"});
        let tool = Tool::for_lockfile(d, &pkg, &found).unwrap().unwrap();
        assert_eq!(
            (tool.package, tool.version.as_str()),
            ("@yarnpkg/cli-dist", "4.5.0")
        );

        let err = Tool::for_lockfile(d, &json!({"packageManager": "pnpm@9.1.0"}), &found)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("names pnpm, but the lockfile is yarn.lock"),
            "{err}"
        );

        lock(d, "pnpm-lock.yaml", "lockfileVersion: '9.0'\n");
        let err = find_lockfile(d, &json!({})).unwrap_err().to_string();
        assert!(
            err.contains("several lockfiles (pnpm-lock.yaml, yarn.lock)"),
            "{err}"
        );
        let picked = find_lockfile(d, &json!({"packageManager": "pnpm@9.1.0"}))
            .unwrap()
            .unwrap();
        assert_eq!(picked.kind, LockKind::Pnpm);
        let err = find_lockfile(d, &json!({"packageManager": "pnpm"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not NAME@VERSION"), "{err}");
    }
}
