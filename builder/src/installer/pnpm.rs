//! pnpm from pnpm-lock.yaml: `pnpm install --frozen-lockfile --prod --ignore-scripts` with the
//! pnpm the app names (`packageManager`), fetched into kiln's cache. pnpm's store and config
//! (`~/.npmrc`, `npm_config_*`, `NPM_TOKEN`) apply as for any pnpm user; nothing of them
//! reaches a layer.

use std::path::{Path, PathBuf};

use kiln_layers::{CacheKey, Digest};

use super::{Deps, Installer, copy_inputs, report_skipped_scripts, run_tool};
use crate::package_manager::Tool;
use crate::pipeline::Context;
use crate::{BuildError, Result, Step, workspace};

/// Flags of every pnpm install kiln runs; part of the key.
const FLAGS: [&str; 4] = [
    "--frozen-lockfile",
    "--ignore-scripts",
    "--config.confirmModulesPurge=false",
    "--reporter=append-only",
];

pub(crate) struct Pnpm {
    pub(crate) tool: Tool,
}

impl Installer for Pnpm {
    fn name(&self) -> String {
        format!("{} install", self.tool.label())
    }

    fn key(&self, cx: &Context, key: CacheKey) -> Result<CacheKey> {
        let bytes = cx.packages.lock_bytes().unwrap_or_default();
        let lock = match cx.workspace {
            // Only the part of the lockfile the package needs.
            Some(ws) => {
                let path = cx.root.join("pnpm-lock.yaml");
                let doc: serde_json::Value =
                    yaml_serde::from_slice(bytes).map_err(|e| BuildError::Lockfile {
                        path,
                        problem: e.to_string(),
                    })?;
                let part = workspace::pnpm_closure(&doc, ws);
                Digest::of(serde_json::to_string(&part).unwrap_or_default().as_bytes())
            }
            None => Digest::of(bytes),
        };
        Ok(key
            .with("lockfile", lock.as_str())
            .with("manager", self.tool.label())
            .with("flags", FLAGS.join(" ")))
    }

    fn may_be_native(&self, cx: &Context) -> bool {
        let lock = String::from_utf8_lossy(cx.packages.lock_bytes().unwrap_or_default());
        ["requiresBuild: true", "os: [", "cpu: [", "libc: ["]
            .iter()
            .any(|marker| lock.contains(marker))
    }

    fn install(&self, cx: &Context, scratch: &Path, deps: Deps) -> Result<PathBuf> {
        copy_inputs(
            cx,
            scratch,
            &[
                "package.json",
                "pnpm-lock.yaml",
                ".npmrc",
                "pnpm-workspace.yaml",
            ],
        )?;
        let mut args = vec!["install".to_owned()];
        args.extend(FLAGS.map(str::to_owned));
        if let Some(ws) = cx.workspace {
            // The package and the workspace packages it depends on.
            args.extend(["--filter".to_owned(), format!("{}...", ws.name)]);
        }
        let what = match deps {
            Deps::Production => {
                args.push("--prod".to_owned());
                "deps"
            }
            Deps::All => "build deps",
        };
        cx.progress.step(Step::Installing(format!(
            "{what}: {} {}",
            self.tool.label(),
            args.join(" ")
        )));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_tool(cx, &self.tool, &args, scratch, &[])?;
        let modules = scratch.join("node_modules");
        if deps == Deps::Production {
            report_skipped_scripts(cx, &modules, "pnpm");
        }
        Ok(modules)
    }
}
