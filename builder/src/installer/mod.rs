//! The installer seam: how the dependencies of an app become the tree of its deps layer (and
//! the full tree a build script runs with). Each installer says what decides its tree (its
//! cache key) and installs it into a scratch directory. A new package manager is a new file
//! here plus one line in [`choose`].

mod npm_ci;
mod npm_lockfile;
mod pnpm;
mod vendored;
mod yarn;

use std::path::{Path, PathBuf};

use kiln_layers::{CacheKey, Layer};

use crate::lockfile::{self, Platform};
use crate::npm::Manifest;
use crate::package_manager::{LockKind, Tool};
use crate::pipeline::Context;
use crate::workspace::Workspace;
use crate::{BuildError, Result};

/// Which dependencies to install.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deps {
    /// Production dependencies only: what the image ships.
    Production,
    /// Dev ones too: what a build script runs with.
    All,
}

/// Installs the dependencies of an app.
pub(crate) trait Installer {
    /// How it is named in progress and records (`npm ci`, `pnpm@9.15.9 install`).
    fn name(&self) -> String;
    /// `key` plus everything that decides the tree it installs.
    fn key(&self, cx: &Context, key: CacheKey) -> Result<CacheKey>;
    /// Whether the tree may hold native code, judged before installing (the lockfile's
    /// install scripts and os/cpu/libc constraints); such a layer is keyed by Node ABI and
    /// platform. Native code found only after installing is keyed so too.
    fn may_be_native(&self, cx: &Context) -> bool;
    /// Installs `deps` into `scratch` and returns the `node_modules` directory to use.
    fn install(&self, cx: &Context, scratch: &Path, deps: Deps) -> Result<PathBuf>;
    /// In a monorepo: whether the installed path `rel` (relative to the root, under a
    /// `node_modules` of the root or of a member) belongs to the workspace's closure.
    /// `path` is where it is in the scratch directory.
    fn keeps(&self, _cx: &Context, _rel: &str, _path: &Path) -> bool {
        true
    }
    /// False when [`Installer::install`] hands back a tree that already exists (vendored).
    fn installs(&self) -> bool {
        true
    }
    /// Writes the production deps layer itself (`app/node_modules`), with no tree on disk in
    /// between; `None` when the stage is to scan what [`Installer::install`] lays out.
    fn write_layer(&self, _cx: &Context) -> Option<Result<Streamed>> {
        None
    }
}

/// A deps layer an installer wrote itself.
pub(crate) struct Streamed {
    /// The layer, in the blob store.
    pub layer: Layer,
    /// The packages in it with native code.
    pub native: Vec<String>,
}

/// The installer for the app in `source` (a package of the monorepo `workspace`) whose
/// package.json and lockfile are `packages`, for an image on `platform`; `None` when it has no
/// dependencies. An npm lockfile is laid out by kiln itself unless it needs npm (install
/// scripts the app allows, git or file dependencies, a monorepo), which is then said.
pub(crate) fn choose(
    source: &Path,
    workspace: Option<&Workspace>,
    packages: &Manifest,
    allow_scripts: &[String],
    platform: &Platform,
) -> Result<Option<Box<dyn Installer>>> {
    if workspace.is_none() && source.join("node_modules").is_dir() {
        return Ok(Some(Box::new(vendored::Vendored::scan(source)?)));
    }
    if let Some(lock) = &packages.lockfile {
        return Ok(Some(match (lock.kind, packages.tool.clone()) {
            (LockKind::Npm, _) => npm(workspace, packages, allow_scripts, platform),
            (_, None) => Box::<npm_ci::NpmCi>::default(),
            (LockKind::Pnpm, Some(tool)) => Box::new(pnpm::Pnpm { tool }),
            (LockKind::YarnClassic, Some(tool)) => Box::new(yarn::Yarn { tool, berry: false }),
            (LockKind::YarnBerry, Some(tool)) => Box::new(yarn::Yarn { tool, berry: true }),
        }));
    }
    if packages.has_dependencies() {
        return Err(BuildError::MissingLockfile {
            path: source.join("package.json"),
        });
    }
    Ok(None)
}

/// kiln's own layout of an npm lockfile, or `npm ci` with the reason.
fn npm(
    workspace: Option<&Workspace>,
    packages: &Manifest,
    allow_scripts: &[String],
    platform: &Platform,
) -> Box<dyn Installer> {
    let (allowed, _) = npm_ci::allowed_scripts(&packages.lock, allow_scripts);
    let roots = match workspace {
        Some(ws) => ws.members.clone(),
        None => vec![String::new()],
    };
    let streamed = if std::env::var_os(ENV_NPM_CI).is_some_and(|v| !v.is_empty() && v != "0") {
        Err(format!("{ENV_NPM_CI} is set"))
    } else if !allowed.is_empty() {
        Err(format!(
            "kiln.allowScripts runs install scripts ({})",
            allowed.join(", ")
        ))
    } else {
        lockfile::production_packages(&packages.lock, platform, &roots)
    };
    match streamed {
        Ok(plan) => Box::new(npm_lockfile::NpmLockfile {
            plan,
            npm: npm_ci::NpmCi::default(),
        }),
        Err(why) => Box::new(npm_ci::NpmCi::because(why)),
    }
}

/// Set (to anything but `0`), npm lockfiles are installed by `npm ci`, not by kiln's reader.
pub(crate) const ENV_NPM_CI: &str = "KILN_NPM_CI";

/// Says which installed packages under `modules` have install scripts that did not run; the
/// allowlist (`kiln.allowScripts`) is run by npm installs only.
pub(crate) fn report_skipped_scripts(cx: &Context, modules: &Path, manager: &str) {
    let scripted = crate::native::packages_with_install_scripts(modules);
    if !scripted.is_empty() {
        cx.progress.step(crate::Step::Note(format!(
            "deps: install scripts not run (--ignore-scripts): {}",
            scripted.join(", ")
        )));
    }
    if !cx.config.allow_scripts.is_empty() {
        cx.progress.step(crate::Step::Note(format!(
            "deps: kiln.allowScripts ({}) is run for npm installs only; with {manager} these scripts do not run",
            cx.config.allow_scripts.join(", ")
        )));
    }
}

/// Copies the files an install reads (package.json, the lockfile, package-manager config,
/// `names`) from the app's root into `scratch`; in a monorepo, every package's package.json
/// too (the lockfile covers them all).
pub(crate) fn copy_inputs(cx: &Context, scratch: &Path, names: &[&str]) -> Result<()> {
    let copy = |from: PathBuf, to: PathBuf| -> Result<()> {
        if from.is_file() {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(kiln_layers::Error::io("create directory", parent))?;
            }
            std::fs::copy(&from, &to).map_err(kiln_layers::Error::io("copy", &from))?;
        }
        Ok(())
    };
    for name in names {
        copy(cx.root.join(name), scratch.join(name))?;
    }
    for dir in cx.workspace.map(|w| w.all.as_slice()).unwrap_or_default() {
        let rel = Path::new(dir).join("package.json");
        copy(cx.root.join(&rel), scratch.join(&rel))?;
    }
    Ok(())
}

/// Runs `tool` (its entry script with node) with `args` in `scratch`, `env` added; a failure
/// names the command and ends with the last lines of its output.
pub(crate) fn run_tool(
    cx: &Context,
    tool: &Tool,
    args: &[&str],
    scratch: &Path,
    env: &[(&str, String)],
) -> Result<()> {
    let entry = tool.fetch(&cx.cache.store().root().join("tools"))?;
    let command = format!("{} {}", tool.label(), args.join(" "));
    let failed = |status: String, output: String| BuildError::Install {
        command: command.clone(),
        source_dir: cx.source.to_owned(),
        status,
        output,
    };
    let out = std::process::Command::new("node")
        .arg(&entry)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(scratch)
        .output()
        .map_err(|e| failed(format!("cannot run node: {e}"), String::new()))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        return Err(failed(out.status.to_string(), tail));
    }
    Ok(())
}
