//! yarn from yarn.lock, with the yarn the app names (`packageManager`), fetched into kiln's
//! cache. Classic (v1): `yarn install --frozen-lockfile --production --ignore-scripts`. Berry
//! (2+): `yarn workspaces focus --all --production` with scripts off and the lockfile
//! immutable, on the `node-modules` linker; Plug'n'Play is refused with how to switch.

use std::path::{Path, PathBuf};

use kiln_layers::{CacheKey, Digest};

use super::{Deps, Installer, copy_inputs, report_skipped_scripts, run_tool};
use crate::package_manager::Tool;
use crate::pipeline::Context;
use crate::{BuildError, Result, Step};

/// Flags of every yarn classic install kiln runs; part of the key.
const CLASSIC_FLAGS: [&str; 5] = [
    "--frozen-lockfile",
    "--ignore-scripts",
    "--non-interactive",
    "--no-progress",
    "--ignore-engines",
];

pub(crate) struct Yarn {
    pub(crate) tool: Tool,
    pub(crate) berry: bool,
}

impl Yarn {
    /// Berry's linker must be `node-modules`: a Plug'n'Play app needs `.pnp.cjs` and a zip
    /// cache kiln does not ship.
    fn check_linker(cx: &Context) -> Result<()> {
        let path = cx.source.join(".yarnrc.yml");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let linker = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nodeLinker:"))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\''))
            .next_back();
        match linker {
            Some("node-modules") => Ok(()),
            other => Err(BuildError::PackageJson {
                path,
                problem: format!(
                    "yarn's nodeLinker is {} (Plug'n'Play), which kiln does not ship: add `nodeLinker: node-modules` to .yarnrc.yml",
                    other.unwrap_or("not set")
                ),
            }),
        }
    }
}

impl Installer for Yarn {
    fn name(&self) -> String {
        format!("{} install", self.tool.label())
    }

    fn key(&self, cx: &Context, key: CacheKey) -> Result<CacheKey> {
        let lock = cx.packages.lock_bytes().unwrap_or_default();
        let rc = std::fs::read(cx.source.join(".yarnrc.yml")).unwrap_or_default();
        Ok(key
            .with("lockfile", Digest::of(lock).as_str())
            .with("manager", self.tool.label())
            .with("yarnrc", Digest::of(&rc).as_str())
            .with("flags", CLASSIC_FLAGS.join(" ")))
    }

    fn may_be_native(&self, cx: &Context) -> bool {
        if !self.berry {
            // A v1 lockfile records neither install scripts nor platforms.
            return true;
        }
        let lock = String::from_utf8_lossy(cx.packages.lock_bytes().unwrap_or_default());
        lock.contains("conditions:") || lock.contains("built: true")
    }

    fn install(&self, cx: &Context, scratch: &Path, deps: Deps) -> Result<PathBuf> {
        if self.berry {
            Self::check_linker(cx)?;
        }
        copy_inputs(
            cx,
            scratch,
            &[
                "package.json",
                "yarn.lock",
                ".npmrc",
                ".yarnrc",
                ".yarnrc.yml",
            ],
        )?;
        let what = match deps {
            Deps::Production => "deps",
            Deps::All => "build deps",
        };
        let focus = cx.workspace.map_or("--all", |ws| ws.name.as_str());
        let (args, env): (Vec<&str>, Vec<(&str, String)>) = if self.berry {
            let args = match deps {
                Deps::Production => vec!["workspaces", "focus", focus, "--production"],
                Deps::All => vec!["install", "--immutable"],
            };
            let env = vec![
                ("YARN_ENABLE_SCRIPTS", "false".to_owned()),
                ("YARN_ENABLE_IMMUTABLE_INSTALLS", "true".to_owned()),
                ("YARN_ENABLE_TELEMETRY", "false".to_owned()),
                ("YARN_ENABLE_PROGRESS_BARS", "false".to_owned()),
                ("YARN_IGNORE_PATH", "true".to_owned()),
                ("YARN_NODE_LINKER", "node-modules".to_owned()),
            ];
            (args, env)
        } else {
            let mut args = vec!["install"];
            args.extend(CLASSIC_FLAGS);
            if deps == Deps::Production {
                args.push("--production");
            }
            (args, Vec::new())
        };
        cx.progress.step(Step::Installing(format!(
            "{what}: {} {}",
            self.tool.label(),
            args.join(" ")
        )));
        run_tool(cx, &self.tool, &args, scratch, &env)?;
        let modules = scratch.join("node_modules");
        if deps == Deps::Production {
            report_skipped_scripts(cx, &modules, "yarn");
        }
        Ok(modules)
    }
}
