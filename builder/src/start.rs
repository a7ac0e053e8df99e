//! The start command of an `app` image, chosen and checked at build time so that a command
//! that cannot work fails the build, not the first start of the image. The launcher in the
//! image (`runtimes/app/server.js`) runs it the way `npm start` would.
//!
//! Choice, first match wins: `--start`, the project config's `start`, `scripts.start`, else
//! the launcher's fallback (`main`, index.js, server.js, app.js). When `scripts.start` needs a
//! program that only a devDependency provides (`nest start`) and a `start:prod` script works,
//! `start:prod` is used instead (NestJS's convention).

use std::path::Path;

use serde_json::Value;

use crate::error::StartError;
use crate::{BuildError, Result};

/// Image environment variable holding a start command other than `scripts.start`.
pub const ENV_START: &str = "KILN_START";

/// The start command chosen for an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    /// The command line.
    pub command: String,
    /// Where it came from: `--start`, `kiln.start`, `scripts.start`, `scripts.start:prod`.
    pub from: String,
}

impl Start {
    /// True when the launcher must be told the command (it reads `scripts.start` itself).
    pub fn needs_env(&self) -> bool {
        self.from != "scripts.start"
    }
}

/// Where a program named by a start command comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Program {
    /// `node`, or a bin of a production dependency: in the image.
    InImage,
    /// Only a devDependency (named) provides it.
    DevOnly(String),
    /// Nothing the image has provides it.
    Missing,
    /// Cannot tell (no v2/v3 lockfile): left to the launcher.
    Unknown,
}

/// The files an image's `/app` will hold.
pub struct AppFiles<'a> {
    /// The app's source directory (a `node_modules` in it ships as it is).
    pub source_dir: &'a Path,
    /// Whether a file, by `/`-separated path relative to `/app`, ships.
    pub has: &'a dyn Fn(&str) -> bool,
}

/// Chooses and checks the start command of an app that ships `files`.
/// `flag` is `--start`, `configured` the project config's `start`; `lock` the parsed
/// package-lock.json, null without one (for the bins of production dependencies).
pub fn choose(
    files: &AppFiles,
    package: &Value,
    flag: Option<&str>,
    configured: Option<&str>,
    lock: &Value,
) -> Result<Option<Start>> {
    let script = |name: &str| {
        package
            .get("scripts")
            .and_then(|s| s.get(name))
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    };
    let lock = Some(lock).filter(|l| !l.is_null());
    let check = |start: &Start| check(files, start, lock);
    let given = flag
        .map(|c| ("--start", c))
        .or(configured.map(|c| ("kiln.start", c)));
    if let Some((from, command)) = given {
        let start = Start {
            command: command.to_owned(),
            from: from.to_owned(),
        };
        check(&start)?;
        return Ok(Some(start));
    }
    let Some(command) = script("start") else {
        return Ok(None);
    };
    let start = Start {
        command: command.to_owned(),
        from: "scripts.start".to_owned(),
    };
    match check(&start) {
        Ok(()) => Ok(Some(start)),
        Err(err) => {
            if let Some(prod) = script("start:prod") {
                let prod = Start {
                    command: prod.to_owned(),
                    from: "scripts.start:prod".to_owned(),
                };
                if check(&prod).is_ok() {
                    return Ok(Some(prod));
                }
            }
            Err(err)
        }
    }
}

/// The words of a command without shell syntax (`None` when it has some).
pub fn words(command: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = command.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            match c {
                '\'' | '"' => {
                    let quoted: String = chars.by_ref().take_while(|&q| q != c).collect();
                    if c == '"' && quoted.contains(['$', '`']) {
                        return None;
                    }
                    word.push_str(&quoted);
                }
                ';' | '&' | '|' | '<' | '>' | '`' | '$' | '(' | ')' | '*' | '?' => return None,
                _ => word.push(c),
            }
        }
        words.push(word);
    }
    Some(words)
}

fn check(files: &AppFiles, start: &Start, lock: Option<&Value>) -> Result<()> {
    let app_dir = files.source_dir;
    let fail = |problem: String, fix: String| {
        BuildError::Start(Box::new(StartError {
            source_dir: app_dir.to_owned(),
            from: start.from.clone(),
            command: start.command.clone(),
            problem,
            fix,
        }))
    };
    // Shell syntax runs under /bin/sh, which the launcher checks for when it starts.
    let Some(words) = words(&start.command) else {
        return Ok(());
    };
    let mut words = words
        .into_iter()
        .skip_while(|w| is_assignment(w))
        .peekable();
    let Some(program) = words.next() else {
        return Err(fail(
            "names no program".into(),
            "give it a program to run".into(),
        ));
    };
    if program == "node" {
        let Some(file) = words.find(|w| !w.starts_with('-')) else {
            return Ok(());
        };
        if resolves(files, &file) {
            return Ok(());
        }
        return Err(fail(
            format!("runs {file}, which is not among the app's files"),
            "fix the path, or add a build script that makes it".into(),
        ));
    }
    if program.contains('/') {
        return match (files.has)(program.trim_start_matches("./")) {
            true => Ok(()),
            false => Err(fail(
                format!("runs {program}, which is not among the app's files"),
                "fix the path".into(),
            )),
        };
    }
    match program_source(app_dir, &program, lock) {
        Program::InImage | Program::Unknown => Ok(()),
        Program::DevOnly(package) => Err(fail(
            format!(
                "needs \"{program}\" from {package}, a devDependency, which is not in the image"
            ),
            format!(
                "move {package} to dependencies, add a \"start:prod\" script that runs the built app with node, or pass --start"
            ),
        )),
        Program::Missing => Err(fail(
            format!("runs \"{program}\", which no dependency provides"),
            "add the package that provides it to dependencies, or pass --start".into(),
        )),
    }
}

/// Directories under `/app` an app's framework needs at run time, with their modes. The
/// image runs as a non-root user and `/app` belongs to root, so what the framework writes to is
/// world-writable (sticky, like `/tmp`), and what it creates when missing exists already:
/// egg writes `run/` (its resolved config) and, outside `prod`, `logs/`; egg-static creates
/// `app/public` at start.
pub fn framework_dirs(package: &Value) -> &'static [(&'static str, u32)] {
    let depends_on = |name: &str| {
        package
            .get("dependencies")
            .and_then(|d| d.get(name))
            .is_some()
    };
    if depends_on("egg") {
        &[("run", 0o1777), ("logs", 0o1777), ("app/public", 0o755)]
    } else {
        &[]
    }
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(k, _)| {
        !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Whether `node FILE` finds FILE the way `require` would.
fn resolves(files: &AppFiles, file: &str) -> bool {
    let mut rel = file
        .trim_start_matches("./")
        .trim_end_matches('/')
        .to_owned();
    if let Some(abs) = file.strip_prefix("/app/") {
        rel = abs.to_owned();
    }
    ["", ".js", ".cjs", ".mjs", ".json", "/index.js"]
        .iter()
        .any(|ext| (files.has)(&format!("{rel}{ext}")))
}

/// Where `program` comes from: a vendored `node_modules/.bin`, else the lockfile's
/// top-level packages and their `bin` maps.
pub fn program_source(app_dir: &Path, program: &str, lock: Option<&Value>) -> Program {
    if program == "node" {
        return Program::InImage;
    }
    if app_dir.join("node_modules/.bin").join(program).exists() {
        return Program::InImage;
    }
    let Some(packages) = lock
        .and_then(|l| l.get("packages"))
        .and_then(Value::as_object)
    else {
        return if app_dir.join("node_modules").is_dir() {
            Program::Missing
        } else {
            Program::Unknown
        };
    };
    let mut dev_only = None;
    for (path, entry) in packages {
        let Some(name) = path.strip_prefix("node_modules/") else {
            continue;
        };
        if name.contains("/node_modules/") {
            continue;
        }
        let provides = match entry.get("bin") {
            Some(Value::Object(bins)) => bins.contains_key(program),
            Some(Value::String(_)) => name.rsplit('/').next() == Some(program),
            _ => false,
        };
        if !provides {
            continue;
        }
        if entry.get("dev").and_then(Value::as_bool) == Some(true) {
            dev_only = Some(name.to_owned());
        } else {
            return Program::InImage;
        }
    }
    dev_only.map_or(Program::Missing, Program::DevOnly)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lock() -> Value {
        json!({"lockfileVersion": 3, "packages": {
            "": {},
            "node_modules/@nestjs/cli": {"dev": true, "bin": {"nest": "bin/nest.js"}},
            "node_modules/fastify-cli": {"bin": {"fastify": "cli.js"}},
            "node_modules/a/node_modules/hidden": {"bin": {"hidden": "x.js"}}
        }})
    }

    #[test]
    fn words_refuse_shell_syntax() {
        assert_eq!(
            words("NODE_ENV=x node 'a b.js' --p=1").unwrap(),
            ["NODE_ENV=x", "node", "a b.js", "--p=1"]
        );
        for cmd in ["a && b", "a | b", "echo $HOME", "a > f", "echo \"$X\""] {
            assert!(words(cmd).is_none(), "{cmd}");
        }
    }

    #[test]
    fn programs_come_from_production_bins_only() {
        let dir = tempfile::tempdir().unwrap();
        let lock = lock();
        let at = |p| program_source(dir.path(), p, Some(&lock));
        assert_eq!(at("fastify"), Program::InImage);
        assert_eq!(at("nest"), Program::DevOnly("@nestjs/cli".into()));
        assert_eq!(at("hidden"), Program::Missing);
        assert_eq!(at("node"), Program::InImage);
    }

    #[test]
    fn a_dev_only_start_falls_back_to_start_prod_or_fails_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let has = |f: &str| f == "dist/main.js";
        let files = AppFiles {
            source_dir: dir.path(),
            has: &has,
        };
        let lock = lock();
        let pkg = json!({"scripts": {"start": "nest start", "start:prod": "node dist/main"}});
        let start = choose(&files, &pkg, None, None, &lock).unwrap().unwrap();
        assert_eq!(start.from, "scripts.start:prod");
        assert!(start.needs_env());

        let pkg = json!({"scripts": {"start": "nest start"}});
        let err = choose(&files, &pkg, None, None, &lock)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("scripts.start \"nest start\"")
                && err.contains("@nestjs/cli, a devDependency")
                && err.contains("--start"),
            "{err}"
        );
        let err = choose(&files, &pkg, Some("node dist/nope"), None, &lock)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--start") && err.contains("dist/nope"),
            "{err}"
        );
    }
}
