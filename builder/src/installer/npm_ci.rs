//! npm's own install from package-lock.json: `npm ci --omit=dev --ignore-scripts`, then the
//! install scripts of the packages the app allows (`kiln.allowScripts`), in the sandbox.

use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kiln_layers::{CacheKey, Digest};

use super::{Deps, Installer, copy_inputs};
use crate::pipeline::Context;
use crate::workspace::Workspace;
use crate::{Result, Step, build_step, native, npm, workspace};

/// The files `npm ci` reads.
const INPUTS: [&str; 3] = ["package.json", "package-lock.json", ".npmrc"];

/// `npm ci`; in a monorepo, the workspace's closure once computed.
#[derive(Default)]
pub(crate) struct NpmCi {
    closure: OnceCell<BTreeSet<String>>,
    /// Why npm installs rather than kiln's own lockfile reader, said when it does.
    why: Option<String>,
}

impl NpmCi {
    /// `npm ci` in place of kiln's lockfile reader, because of `why`.
    pub fn because(why: String) -> Self {
        NpmCi {
            why: Some(why),
            ..NpmCi::default()
        }
    }

    /// The lockfile entries the workspace `ws` needs, computed once.
    fn closure(&self, cx: &Context, ws: &Workspace) -> &BTreeSet<String> {
        self.closure
            .get_or_init(|| workspace::npm_closure(&cx.packages.lock, ws))
    }

    /// The production packages with install scripts: those the app allows, and the others.
    fn scripts(cx: &Context) -> (Vec<String>, Vec<String>) {
        allowed_scripts(&cx.packages.lock, &cx.config.allow_scripts)
    }
}

impl Installer for NpmCi {
    fn name(&self) -> String {
        "npm ci".into()
    }

    fn key(&self, cx: &Context, key: CacheKey) -> Result<CacheKey> {
        let (allowed, _) = Self::scripts(cx);
        let lock = match cx.workspace {
            // Only the part of the lockfile the package needs: another package's change
            // leaves this layer a cache hit.
            Some(ws) => {
                let entries = cx.packages.lock.get("packages");
                let closure: serde_json::Map<String, serde_json::Value> = self
                    .closure(cx, ws)
                    .iter()
                    .chain(&ws.members)
                    .filter_map(|k| Some((k.clone(), entries?.get(k)?.clone())))
                    .collect();
                Digest::of(
                    serde_json::to_string(&closure)
                        .unwrap_or_default()
                        .as_bytes(),
                )
            }
            None => Digest::of(cx.packages.lock_bytes().unwrap_or_default()),
        };
        Ok(key
            .with("lockfile", lock.as_str())
            .with("manager", format!("npm@{}", npm::npm_version()))
            .with("flags", npm::NPM_CI_FLAGS.join(" "))
            .with("scripts", allowed.join(",")))
    }

    fn keeps(&self, cx: &Context, rel: &str, path: &Path) -> bool {
        let Some(ws) = cx.workspace else {
            return true;
        };
        let closure = self.closure(cx, ws);
        match workspace::owning_package(rel) {
            // A `.bin` link is kept when the package it points into is.
            Some(owner) if owner.ends_with("/.bin") => {
                let Ok(target) = std::fs::read_link(path) else {
                    return false;
                };
                let dir = Path::new(rel).parent().unwrap_or(Path::new(""));
                let mut parts: Vec<String> = Vec::new();
                for part in dir.join(target).components() {
                    match part {
                        std::path::Component::ParentDir => {
                            parts.pop();
                        }
                        std::path::Component::Normal(p) => {
                            parts.push(p.to_string_lossy().into_owned())
                        }
                        _ => {}
                    }
                }
                workspace::npm_owner(&cx.packages.lock, &parts.join("/"))
                    .is_some_and(|owner| closure.contains(&owner))
            }
            Some(_) => workspace::npm_owner(&cx.packages.lock, rel)
                .is_some_and(|owner| closure.contains(&owner)),
            // A scope directory (`node_modules/@s`) when a kept package is in it.
            None if rel.rsplit('/').next().is_some_and(|n| n.starts_with('@')) => {
                let inside = format!("{rel}/");
                closure.iter().any(|kept| kept.starts_with(&inside))
            }
            None => true,
        }
    }

    fn may_be_native(&self, cx: &Context) -> bool {
        native::lockfile_may_have_native_code(&cx.packages.lock)
    }

    fn install(&self, cx: &Context, scratch: &Path, deps: Deps) -> Result<PathBuf> {
        if deps == Deps::All {
            cx.progress.step(Step::Installing(format!(
                "build deps: npm ci {} (once per lockfile)",
                build_step::DEV_INSTALL_FLAGS.join(" ")
            )));
            copy_inputs(cx, scratch, &INPUTS)?;
            return npm::install_with(cx.root, scratch, &build_step::DEV_INSTALL_FLAGS);
        }
        let (allowed, skipped) = Self::scripts(cx);
        for name in &cx.config.allow_scripts {
            if !allowed.contains(name) {
                cx.progress.step(Step::Note(format!(
                    "deps: kiln.allowScripts names {name}, which is not a production dependency with an install script"
                )));
            }
        }
        if let Some(why) = &self.why {
            cx.progress
                .step(Step::Note(format!("deps: npm installs them: {why}")));
        }
        cx.progress.step(Step::Installing(
            "deps: npm ci --omit=dev --ignore-scripts".into(),
        ));
        copy_inputs(cx, scratch, &INPUTS)?;
        let modules = npm::install_with(cx.root, scratch, &npm::NPM_CI_FLAGS)?;
        if !modules.is_dir() {
            std::fs::create_dir_all(&modules)
                .map_err(kiln_layers::Error::io("create directory", &modules))?;
        }
        if !allowed.is_empty() {
            build_step::run_install_scripts(
                cx.source,
                scratch,
                &allowed,
                cx.config.script_timeout(),
                cx.progress,
            )?;
        }
        if !skipped.is_empty() {
            cx.progress.step(Step::Note(format!(
                "deps: install scripts not run (--ignore-scripts): {}",
                skipped.join(", ")
            )));
        }
        Ok(modules)
    }
}

/// The production packages of `lock` with install scripts: those `allow` names, and the
/// others.
pub(crate) fn allowed_scripts(
    lock: &serde_json::Value,
    allow: &[String],
) -> (Vec<String>, Vec<String>) {
    native::skipped_install_scripts(lock)
        .into_iter()
        .partition(|name| allow.contains(name))
}
