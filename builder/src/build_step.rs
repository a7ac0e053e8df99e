//! The build step: an app's `build` script (Heroku's and Google's buildpacks' convention) run
//! at build time, so that what ships is its output (`dist/`) next to production dependencies
//! only.
//!
//! All dependencies, dev ones included, are installed once per lockfile into the cache
//! (`npm ci --include=dev --ignore-scripts`), so a code change re-runs the script, not the
//! install. The script runs in [`crate::sandbox`] on a copy of the app's shipped files (never
//! `.npmrc`, `.env*` or ignored files), with those dependencies mounted read-only at
//! `node_modules` (a private, writable `node_modules/.cache`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_layers::{CacheKey, Digest, SourceKind, SourceTree};
use serde_json::Value;

use crate::error::BuildScriptError;
use crate::host_base::host_node_stamp;
use crate::installer::{Deps, Installer};
use crate::pipeline::Context;
use crate::project::BuildScript;
use crate::sandbox::{self, Script, WORK};
use crate::{BuildError, Progress, Result, Step};

/// Default time limit of a build script.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Flags of the install the build script runs with; part of its cache key.
pub const DEV_INSTALL_FLAGS: [&str; 5] = [
    "--include=dev",
    "--ignore-scripts",
    "--no-audit",
    "--no-fund",
    "--loglevel=error",
];

/// A build script to run.
#[derive(Clone, Debug)]
pub struct Chosen {
    /// Its name in `scripts`.
    pub name: String,
    /// Its command line.
    pub command: String,
}

/// The build script `choice` selects from `package`'s scripts, if any. As with `npm run`, its
/// `pre<name>` and `post<name>` scripts run before and after it (each must succeed).
pub fn choose(source: &Path, package: &Value, choice: &BuildScript) -> Result<Option<Chosen>> {
    let script = |name: &str| {
        package
            .get("scripts")
            .and_then(|s| s.get(name))
            .and_then(Value::as_str)
            .filter(|command| !command.trim().is_empty())
    };
    let with_hooks = |name: &str| {
        script(name).map(|command| {
            let (pre, post) = (
                script(&format!("pre{name}")),
                script(&format!("post{name}")),
            );
            let command = match (pre, post) {
                (None, None) => command.to_owned(),
                _ => [pre, Some(command), post]
                    .into_iter()
                    .flatten()
                    .map(|c| format!("({c})"))
                    .collect::<Vec<_>>()
                    .join(" && "),
            };
            Chosen {
                name: name.to_owned(),
                command,
            }
        })
    };
    match choice {
        BuildScript::Off => Ok(None),
        BuildScript::Auto => Ok(with_hooks("build")),
        BuildScript::Named(name) => {
            with_hooks(name)
                .map(Some)
                .ok_or_else(|| BuildError::PackageJson {
                    path: source.join("package.json"),
                    problem: format!("no script \"{name}\" to run as the build step"),
                })
        }
    }
}

/// The cache key of the app layer a build makes: the shipped files, the dependency inputs,
/// the node binary that runs the script and the script itself.
pub fn key(content: &Digest, lockfile: Option<&[u8]>, script: &Chosen) -> CacheKey {
    CacheKey::new("app-built")
        .with("content", content.as_str())
        .with(
            "lockfile",
            lockfile
                .map(|l| Digest::of(l).to_string())
                .unwrap_or_default(),
        )
        .with("node", host_node())
        .with("script", format!("{}={}", script.name, script.command))
}

/// Runs `script` on a copy of the app's shipped files (`cx.tree`) and returns the directory
/// holding the result; its `node_modules` is only a mount point. `installer` lays out every
/// dependency, dev ones included, once per lockfile.
pub(crate) fn run(
    cx: &Context,
    installer: Option<&dyn Installer>,
    script: &Chosen,
) -> Result<tempfile::TempDir> {
    let (tree, progress) = (cx.tree, cx.progress);
    let timeout = cx.config.script_timeout();
    let source = tree.root();
    let modules = match installer {
        Some(installer) => Some(dev_install(cx, installer)?),
        None => None,
    };
    let work = cx.scratch()?;
    copy_tree(tree, work.path())?;
    let (mut read_only, mut tmpfs) = (Vec::new(), Vec::new());
    if let Some(modules) = &modules {
        std::fs::create_dir_all(work.path().join("node_modules"))
            .map_err(kiln_layers::Error::io("create directory", work.path()))?;
        read_only.push((modules.clone(), format!("{WORK}/node_modules")));
        if modules.join(".cache").is_dir() {
            tmpfs.push(format!("{WORK}/node_modules/.cache"));
        }
    }
    progress.step(Step::BuildScript {
        name: script.name.clone(),
        command: script.command.clone(),
    });
    let env = vec![
        (
            "PATH".to_owned(),
            format!("{WORK}/node_modules/.bin:/usr/local/bin:/usr/bin:/bin"),
        ),
        ("NODE_ENV".to_owned(), "production".to_owned()),
        ("CI".to_owned(), "true".to_owned()),
        ("npm_lifecycle_event".to_owned(), script.name.clone()),
    ];
    let sandboxed = Script {
        command: &script.command,
        work: work.path(),
        read_only,
        tmpfs,
        env,
        timeout,
    };
    run_sandboxed(source, &script.name, &sandboxed, progress)?;
    let mount_point = work.path().join("node_modules");
    if modules.is_some() {
        let _ = std::fs::remove_dir(&mount_point);
    }
    Ok(work)
}

/// Runs the install scripts of the dependencies `names` (the app's allowlist) in the
/// sandbox, on the production install in `scratch` (`npm rebuild`), with the same limits as
/// a build script; the source's `.npmrc` is removed first so no token is within reach.
pub fn run_install_scripts(
    source: &Path,
    scratch: &Path,
    names: &[String],
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<()> {
    let _ = std::fs::remove_file(scratch.join(".npmrc"));
    progress.step(Step::Note(format!(
        "deps: running the install scripts of {} in the sandbox (kiln.allowScripts)",
        names.join(", ")
    )));
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    let command = format!(
        "npm rebuild --foreground-scripts --no-audit --no-fund {}",
        quoted.join(" ")
    );
    let script = Script {
        command: &command,
        work: scratch,
        read_only: Vec::new(),
        tmpfs: Vec::new(),
        env: vec![
            ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ("npm_config_cache".to_owned(), "/tmp/npm-cache".to_owned()),
            ("npm_config_update_notifier".to_owned(), "false".to_owned()),
        ],
        timeout,
    };
    run_sandboxed(
        source,
        "install scripts (kiln.allowScripts)",
        &script,
        progress,
    )
}

/// All dependencies, installed once per installer key into the cache; returns their
/// node_modules (a vendored one is used as it is).
fn dev_install(cx: &Context, installer: &dyn Installer) -> Result<PathBuf> {
    if !installer.installs() {
        return installer.install(cx, cx.source, Deps::All);
    }
    let key = installer.key(
        cx,
        CacheKey::new("dev-install")
            .with("node", host_node())
            .with("deps", "all"),
    )?;
    let home = cx.cache.store().root().join("dev-deps");
    let done = home.join(key.digest().hex());
    let modules = done.join("node_modules");
    if modules.is_dir() {
        return Ok(modules);
    }
    std::fs::create_dir_all(&home).map_err(kiln_layers::Error::io("create directory", &home))?;
    let scratch = tempfile::tempdir_in(&home)
        .map_err(kiln_layers::Error::io("create scratch directory in", &home))?;
    let made = installer.install(cx, scratch.path(), Deps::All)?;
    std::fs::create_dir_all(made.join(".cache"))
        .map_err(kiln_layers::Error::io("create directory", &made))?;
    // Only the tree stays: no lockfile, config or `.npmrc` beside it.
    for entry in std::fs::read_dir(scratch.path())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name() != "node_modules" {
            let path = entry.path();
            let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
        }
    }
    // Whole or not at all: a concurrent build that got there first wins.
    let kept = scratch.keep();
    if std::fs::rename(&kept, &done).is_err() {
        let _ = std::fs::remove_dir_all(&kept);
    }
    Ok(modules)
}

fn copy_tree(tree: &SourceTree, dest: &Path) -> Result<()> {
    for entry in tree.entries() {
        let to = dest.join(&entry.rel);
        let io = |what: &'static str| kiln_layers::Error::io(what, &to);
        match &entry.kind {
            SourceKind::Dir => std::fs::create_dir_all(&to).map_err(io("create directory"))?,
            SourceKind::File { .. } => {
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(io("create directory"))?;
                }
                std::fs::copy(&entry.path, &to).map_err(io("copy"))?;
            }
            SourceKind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &to).map_err(io("create symlink"))?
            }
        }
    }
    Ok(())
}

/// The node on PATH, which runs the scripts, as a cache-key part: its path and stamp.
fn host_node() -> String {
    host_node_stamp()
        .map(|(path, stamp)| format!("{}:{stamp}", path.display()))
        .unwrap_or_default()
}

/// Runs `script` in the sandbox, its output streamed as progress; a failure names `name`.
fn run_sandboxed(
    source: &Path,
    name: &str,
    script: &Script,
    progress: &dyn Progress,
) -> Result<()> {
    sandbox::run(script, &mut |line| {
        progress.step(Step::BuildOutput(line.to_owned()))
    })
    .map_err(|failure| {
        BuildError::BuildScript(Box::new(BuildScriptError {
            source_dir: source.to_owned(),
            script: name.to_owned(),
            command: script.command.to_owned(),
            problem: failure.problem,
            output: failure.output,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_and_post_scripts_run_around_the_build_script() {
        let pkg = serde_json::json!({"scripts": {
            "prebuild": "rimraf dist", "build": "tsc || exit 1", "postbuild": "cp a dist/",
            "bundle": "esbuild x"}});
        let chosen = choose(Path::new("/s"), &pkg, &BuildScript::Auto)
            .unwrap()
            .unwrap();
        assert_eq!(
            chosen.command,
            "(rimraf dist) && (tsc || exit 1) && (cp a dist/)"
        );
        let named = choose(Path::new("/s"), &pkg, &BuildScript::Named("bundle".into()))
            .unwrap()
            .unwrap();
        assert_eq!(named.command, "esbuild x");
        assert!(choose(Path::new("/s"), &pkg, &BuildScript::Named("nope".into())).is_err());
        let blank = serde_json::json!({"scripts": {"build": " "}});
        assert!(
            choose(Path::new("/s"), &blank, &BuildScript::Auto)
                .unwrap()
                .is_none()
        );
    }
}
