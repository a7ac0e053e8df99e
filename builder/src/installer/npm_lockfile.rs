//! npm lockfiles (v2/v3) installed by kiln itself: each production package's tarball, from
//! npm's content-addressed cache, is checked against the lockfile's integrity and streamed
//! straight into the deps layer, with its `.bin` links; no tree is written to disk. Tarballs
//! missing from the cache are fetched into it by `npm cache add` while the others are laid out,
//! so registries, tokens and proxies are npm's own config. The build step's full install is `npm ci`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use kiln_layers::{CacheKey, Entry, LayerStream};

use super::npm_ci::NpmCi;
use super::{Deps, Installer, Streamed, copy_inputs};
use crate::lockfile::tarball::{self, Dirs};
use crate::lockfile::{LockedPackage, Plan, bins};
use crate::pipeline::Context;
use crate::{BuildError, Result, Step, native};

/// Version of the layout this installer writes; part of its cache key.
const READER: &str = "kiln-npm-lockfile-1";

/// The lockfile's production packages, laid out by kiln.
pub(crate) struct NpmLockfile {
    /// The packages and workspace links.
    pub plan: Plan,
    /// `npm ci`, for the build step's full install.
    pub npm: NpmCi,
}

impl Installer for NpmLockfile {
    fn name(&self) -> String {
        "npm lockfile, streamed".into()
    }

    fn key(&self, cx: &Context, key: CacheKey) -> Result<CacheKey> {
        Ok(self.npm.key(cx, key)?.with("reader", READER))
    }

    fn may_be_native(&self, cx: &Context) -> bool {
        native::lockfile_may_have_native_code(&cx.packages.lock)
    }

    fn install(&self, cx: &Context, scratch: &Path, deps: Deps) -> Result<PathBuf> {
        self.npm.install(cx, scratch, deps)
    }

    fn write_layer(&self, cx: &Context) -> Option<Result<Streamed>> {
        Some(self.stream(cx))
    }
}

impl NpmLockfile {
    fn stream(&self, cx: &Context) -> Result<Streamed> {
        let cache = npm_cache_dir();
        // The tarballs npm's cache lacks are fetched while those it has are laid out.
        let mut fetching = self.fetch_missing(cx, &cache)?;
        cx.progress.step(Step::Installing(format!(
            "deps: {} packages from package-lock.json, streamed from npm's cache",
            self.plan.packages.len()
        )));
        let mut layer = LayerStream::new(cx.cache.store(), cx.epoch)?;
        let mut dirs = Dirs::default();
        dirs.ensure(&mut layer, "app/node_modules")?;
        let mut native = Vec::new();
        for package in &self.plan.packages {
            let path = package.integrity.cache_path(&cache);
            if let Some(fetch) = &mut fetching {
                fetch.wait_for(&path)?;
            }
            let file = File::open(&path).map_err(|e| BuildError::Package {
                package: package.spec(),
                path: package.path.clone(),
                problem: format!(
                    "cannot open its tarball in npm's cache ({}): {e}",
                    path.display()
                ),
            })?;
            let prefix = format!("app/{}", package.path);
            let laid = tarball::lay_out(&mut layer, &mut dirs, &prefix, package, file)?;
            if laid.native {
                native.push(package.name.clone());
            }
        }
        let bins = bins::links(&self.plan.packages);
        for (link, target) in self.plan.links.iter().chain(&bins) {
            let path = format!("app/{link}");
            dirs.parents(&mut layer, &path)?;
            layer.entry(&path, &Entry::symlink(target.as_str()))?;
        }
        if let Some(fetch) = fetching {
            fetch.finish()?;
        }
        // kiln runs no install scripts here (an app that allows some is installed by npm).
        let names: std::collections::HashSet<&str> =
            self.plan.packages.iter().map(|p| p.name.as_str()).collect();
        let skipped: Vec<String> = native::skipped_install_scripts(&cx.packages.lock)
            .into_iter()
            .filter(|n| names.contains(n.as_str()))
            .collect();
        if !skipped.is_empty() {
            cx.progress.step(Step::Note(format!(
                "deps: install scripts not run (--ignore-scripts): {}",
                skipped.join(", ")
            )));
        }
        Ok(Streamed {
            layer: layer.finish()?,
            native,
        })
    }

    /// Starts `npm cache add` for the tarballs npm's cache does not hold, in a scratch
    /// directory with the app's `.npmrc` (never in a layer).
    fn fetch_missing(&self, cx: &Context, cache: &Path) -> Result<Option<Fetching>> {
        let missing: Vec<String> = self
            .plan
            .packages
            .iter()
            .filter(|p| !p.integrity.cache_path(cache).is_file())
            .map(LockedPackage::fetch_spec)
            .collect();
        if missing.is_empty() {
            return Ok(None);
        }
        cx.progress.step(Step::Installing(format!(
            "deps: fetching {} packages into npm's cache (npm cache add)",
            missing.len()
        )));
        let scratch = cx.scratch()?;
        copy_inputs(cx, scratch.path(), &[".npmrc"])?;
        let failed = |status: String, output: String| BuildError::Npm {
            source_dir: cx.source.to_owned(),
            status,
            output,
        };
        let log = scratch.path().join("npm-cache-add.log");
        let log_file = File::create(&log).map_err(kiln_layers::Error::io("create", &log))?;
        let child = std::process::Command::new("npm")
            .args(["cache", "add", "--loglevel=error"])
            .args(&missing)
            .current_dir(scratch.path())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| failed(format!("cannot run npm: {e}"), String::new()))?;
        Ok(Some(Fetching {
            child: Some(child),
            source: cx.source.to_owned(),
            log,
            _scratch: scratch,
        }))
    }
}

/// A running `npm cache add`.
struct Fetching {
    child: Option<Child>,
    source: PathBuf,
    /// npm's error output.
    log: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Fetching {
    /// Waits until npm's cache holds `path` (npm moves each tarball into place whole), or
    /// npm has ended.
    fn wait_for(&mut self, path: &Path) -> Result<()> {
        while !path.is_file() {
            let Some(child) = &mut self.child else {
                return Ok(());
            };
            if child.try_wait().ok().flatten().is_some() {
                return self.end();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits for npm to end; its failure is an error with the end of its output.
    fn finish(mut self) -> Result<()> {
        self.end()
    }

    fn end(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let failed = |status: String, output: String| BuildError::Npm {
            source_dir: self.source.clone(),
            status,
            output,
        };
        let status = child
            .wait()
            .map_err(|e| failed(format!("npm cache add: {e}"), String::new()))?;
        if !status.success() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            return Err(failed(
                format!("npm cache add: {status}"),
                lines[lines.len().saturating_sub(8)..].join("\n"),
            ));
        }
        Ok(())
    }
}

impl Drop for Fetching {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// npm's cache directory: `npm_config_cache` from the environment, else `cache=` in
/// `~/.npmrc`, else `~/.npm`.
fn npm_cache_dir() -> PathBuf {
    let from_env = std::env::vars()
        .find(|(k, _)| k.eq_ignore_ascii_case("npm_config_cache"))
        .map(|(_, v)| v);
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let from_npmrc = || {
        std::fs::read_to_string(home.join(".npmrc"))
            .ok()?
            .lines()
            .find_map(|line| {
                let (k, v) = line.split_once('=')?;
                (k.trim() == "cache").then(|| v.trim().to_owned())
            })
    };
    match from_env.filter(|v| !v.is_empty()).or_else(from_npmrc) {
        Some(dir) => match dir.strip_prefix("~/") {
            Some(rest) => home.join(rest),
            None => PathBuf::from(dir),
        },
        None => home.join(".npm"),
    }
}
