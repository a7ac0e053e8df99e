//! npm's own install from package-lock.json: `npm ci --omit=dev --ignore-scripts`, then the
//! install scripts of the packages the app allows (`kiln.allowScripts`), in the sandbox.

use std::path::{Path, PathBuf};

use kiln_layers::{CacheKey, Digest};

use super::Installer;
use crate::pipeline::Context;
use crate::{Result, Step, build_step, native, npm};

pub(crate) struct NpmCi;

impl NpmCi {
    /// The production packages with install scripts: those the app allows, and the others.
    fn scripts(cx: &Context) -> (Vec<String>, Vec<String>) {
        native::skipped_install_scripts(&cx.packages.lock)
            .into_iter()
            .partition(|name| cx.config.allow_scripts.contains(name))
    }
}

impl Installer for NpmCi {
    fn name(&self) -> &'static str {
        "npm ci"
    }

    fn key(&self, cx: &Context, key: CacheKey) -> Result<CacheKey> {
        let lock = cx.packages.lockfile.as_deref().unwrap_or_default();
        let (allowed, _) = Self::scripts(cx);
        Ok(key
            .with("lockfile", Digest::of(lock).as_str())
            .with("flags", npm::NPM_CI_FLAGS.join(" "))
            .with("scripts", allowed.join(",")))
    }

    fn may_be_native(&self, cx: &Context) -> bool {
        native::lockfile_may_have_native_code(&cx.packages.lock)
    }

    fn install(&self, cx: &Context, scratch: &Path) -> Result<PathBuf> {
        let (allowed, skipped) = Self::scripts(cx);
        for name in &cx.config.allow_scripts {
            if !allowed.contains(name) {
                cx.progress.step(Step::Note(format!(
                    "deps: kiln.allowScripts names {name}, which is not a production dependency with an install script"
                )));
            }
        }
        cx.progress.step(Step::Installing(
            "deps: npm ci --omit=dev --ignore-scripts".into(),
        ));
        let modules = npm::install(cx.source, scratch)?;
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
