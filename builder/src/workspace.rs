//! Monorepos: one package of an npm, pnpm or yarn workspace built on its own. The root is
//! where the lockfile is (`--workspace NAME` from the root, or found by walking up from the
//! package's directory); the image holds that package, the workspace packages it depends
//! on, and the production closure of their dependencies, laid out as in the monorepo
//! (`/app/<package>` is the working directory, `/app/node_modules` the hoisted modules).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::package_manager::LOCKFILES;
use crate::{BuildError, Result};

/// One package of a monorepo, and what of the monorepo it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workspace {
    /// The monorepo's root (its lockfile is there).
    pub root: PathBuf,
    /// The package's directory, relative to the root (`packages/api`).
    pub dir: String,
    /// The package's name.
    pub name: String,
    /// The workspace packages in the image: the package first, then those it depends on
    /// (transitively, production dependencies only), as directories relative to the root.
    pub members: Vec<String>,
    /// Every package of the monorepo, as directories relative to the root.
    pub all: Vec<String>,
}

/// A package of the monorepo: its directory (relative to the root), name and package.json.
struct Member {
    dir: String,
    name: String,
    package: Value,
}

/// The workspace `source` is (or, with `name`, the package `name` of the monorepo rooted at
/// `source`); `None` when `source` is an app of its own.
pub fn locate(source: &Path, name: Option<&str>) -> Result<Option<Workspace>> {
    if let Some(name) = name {
        let members = members(source)?;
        if members.is_empty() {
            return Err(BuildError::PackageJson {
                path: source.join("package.json"),
                problem: format!(
                    "--workspace {name}: this is not a workspace root (no \"workspaces\" in package.json, no pnpm-workspace.yaml)"
                ),
            });
        }
        let Some(found) = members.iter().find(|m| m.name == name) else {
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            return Err(BuildError::PackageJson {
                path: source.join("package.json"),
                problem: format!(
                    "--workspace {name}: no such package in the workspace (it has: {})",
                    names.join(", ")
                ),
            });
        };
        return Ok(Some(workspace(source, found, &members)));
    }
    let has_own_deps = LOCKFILES
        .iter()
        .chain(&["node_modules"])
        .any(|f| source.join(f).exists());
    if has_own_deps || !source.join("package.json").is_file() {
        return Ok(None);
    }
    let Ok(source) = source.canonicalize() else {
        return Ok(None);
    };
    for root in source.ancestors().skip(1) {
        let has_lock = LOCKFILES.iter().any(|f| root.join(f).is_file());
        if !has_lock {
            continue;
        }
        let members = members(root)?;
        let rel = source
            .strip_prefix(root)
            .unwrap_or(&source)
            .to_string_lossy();
        return Ok(members
            .iter()
            .find(|m| m.dir == rel)
            .map(|found| workspace(root, found, &members)));
    }
    Ok(None)
}

fn workspace(root: &Path, package: &Member, all: &[Member]) -> Workspace {
    let by_name: BTreeMap<&str, &Member> = all.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut members = vec![package.dir.clone()];
    let mut todo = vec![package];
    while let Some(member) = todo.pop() {
        for key in ["dependencies", "optionalDependencies"] {
            let Some(deps) = member.package.get(key).and_then(Value::as_object) else {
                continue;
            };
            for dep in deps.keys() {
                if let Some(found) = by_name.get(dep.as_str())
                    && !members.contains(&found.dir)
                {
                    members.push(found.dir.clone());
                    todo.push(found);
                }
            }
        }
    }
    Workspace {
        root: root.to_owned(),
        dir: package.dir.clone(),
        name: package.name.clone(),
        members,
        all: all.iter().map(|m| m.dir.clone()).collect(),
    }
}

/// The workspace patterns of the monorepo at `root`: package.json's `workspaces` (a list,
/// or `{ packages }`), else pnpm-workspace.yaml's `packages`.
fn patterns(root: &Path) -> Result<Vec<String>> {
    let list = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let package: Value = std::fs::read(root.join("package.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(ws) = package.get("workspaces") {
        return Ok(if ws.is_array() {
            list(Some(ws))
        } else {
            list(ws.get("packages"))
        });
    }
    let path = root.join("pnpm-workspace.yaml");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let doc: Value =
                yaml_serde::from_str(&text).map_err(|e| BuildError::ProjectConfig {
                    path: path.clone(),
                    problem: e.to_string(),
                })?;
            Ok(list(doc.get("packages")))
        }
        Err(_) => Ok(Vec::new()),
    }
}

/// Every package the patterns of `root` match (`dir`, `dir/*`, `dir/**`; `!dir` excludes).
fn members(root: &Path) -> Result<Vec<Member>> {
    let patterns = patterns(root)?;
    let mut dirs = BTreeSet::new();
    for pattern in patterns.iter().filter(|p| !p.starts_with('!')) {
        let pattern = pattern.trim_start_matches("./").trim_end_matches('/');
        if let Some(parent) = pattern.strip_suffix("/**") {
            walk(root, parent, &mut dirs);
        } else if let Some(parent) = pattern.strip_suffix("/*") {
            for entry in std::fs::read_dir(root.join(parent))
                .into_iter()
                .flatten()
                .flatten()
            {
                dirs.insert(format!("{parent}/{}", entry.file_name().to_string_lossy()));
            }
        } else {
            dirs.insert(pattern.to_owned());
        }
    }
    for excluded in patterns.iter().filter_map(|p| p.strip_prefix('!')) {
        dirs.remove(excluded.trim_start_matches("./").trim_end_matches('/'));
    }
    let mut found = Vec::new();
    for dir in dirs {
        let path = root.join(&dir).join("package.json");
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let package: Value =
            serde_json::from_slice(&bytes).map_err(|e| BuildError::PackageJson {
                path: path.clone(),
                problem: e.to_string(),
            })?;
        let name = package
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        found.push(Member { dir, name, package });
    }
    Ok(found)
}

fn walk(root: &Path, rel: &str, dirs: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(root.join(rel))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "node_modules" || name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let child = format!("{rel}/{name}");
        dirs.insert(child.clone());
        walk(root, &child, dirs);
    }
}

/// Whether `rel` (a path relative to the monorepo root) lies in a `node_modules` directory
/// of the root or of one of the workspace's members.
pub fn in_members_modules(workspace: &Workspace, rel: &str) -> bool {
    let under = |dir: &str| rel == dir || rel.starts_with(&format!("{dir}/"));
    under("node_modules")
        || workspace
            .members
            .iter()
            .any(|m| under(&format!("{m}/node_modules")))
}

/// The lockfile key of the package that owns `rel` (a path in an installed monorepo), e.g.
/// `node_modules/a/node_modules/@s/b` for `node_modules/a/node_modules/@s/b/lib/x.js`.
pub fn owning_package(rel: &str) -> Option<String> {
    owner_at(rel, rel.rfind("node_modules/")?)
}

/// The package directory named right after the `node_modules/` at byte `i` of `rel`.
fn owner_at(rel: &str, i: usize) -> Option<String> {
    let (base, rest) = rel.split_at(i + "node_modules/".len());
    let mut parts = rest.split('/');
    let first = parts.next().filter(|p| !p.is_empty())?;
    if first.starts_with('@') {
        let second = parts.next().filter(|p| !p.is_empty())?;
        Some(format!("{base}{first}/{second}"))
    } else {
        Some(format!("{base}{first}"))
    }
}

/// The lockfile entry (`packages` key) of the installed package `rel` is in: the nearest
/// enclosing `node_modules/<name>` that the lockfile names, so that a package's own directory
/// called `node_modules` (test fixtures) stays with the package.
pub fn npm_owner(lock: &Value, rel: &str) -> Option<String> {
    let packages = lock.get("packages")?.as_object()?;
    let mut end = rel.len();
    while let Some(i) = rel[..end].rfind("node_modules/") {
        if let Some(owner) = owner_at(rel, i)
            && packages.contains_key(&owner)
        {
            return Some(owner);
        }
        end = i;
    }
    None
}

/// The entries of an npm lockfile (v2/v3 `packages` keys) the workspace needs at run time:
/// the production dependencies of its members, resolved the way Node does from each
/// package's place, and the workspace links among them.
pub fn npm_closure(lock: &Value, workspace: &Workspace) -> BTreeSet<String> {
    let empty = serde_json::Map::new();
    let packages = lock
        .get("packages")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut needed = BTreeSet::new();
    let walked: std::result::Result<(), std::convert::Infallible> =
        walk_npm(packages, &workspace.members, |path, _| {
            needed.insert(path.to_owned());
            Ok(true)
        });
    walked.unwrap_or_else(|never| match never {});
    needed
}

/// Walks an npm lockfile's `packages` from `roots` (lockfile locations: `""` for the root,
/// members' directories) along production dependency edges (`dependencies`, optional and
/// peer ones), each resolved the way Node does from the package's place. `visit(path, entry)`
/// sees each entry reached once and says whether to go on from it; from a workspace link the
/// walk goes on at the link's target.
pub(crate) fn walk_npm<E>(
    packages: &serde_json::Map<String, Value>,
    roots: &[String],
    mut visit: impl FnMut(&str, &Value) -> std::result::Result<bool, E>,
) -> std::result::Result<(), E> {
    let mut todo = roots.to_vec();
    let mut seen: BTreeSet<String> = roots.iter().cloned().collect();
    while let Some(at) = todo.pop() {
        let Some(entry) = packages.get(&at) else {
            continue;
        };
        for key in ["dependencies", "optionalDependencies", "peerDependencies"] {
            let names = entry.get(key).and_then(Value::as_object);
            for name in names.into_iter().flat_map(|m| m.keys()) {
                let Some(found) = resolve(packages, &at, name) else {
                    continue;
                };
                if !seen.insert(found.clone()) {
                    continue;
                }
                let dep = &packages[&found];
                if !visit(&found, dep)? {
                    continue;
                }
                if dep.get("link").and_then(Value::as_bool) != Some(true) {
                    todo.push(found);
                } else if let Some(target) = dep.get("resolved").and_then(Value::as_str)
                    && seen.insert(target.to_owned())
                {
                    todo.push(target.to_owned());
                }
            }
        }
    }
    Ok(())
}

/// Where Node finds `name` required from the lockfile location `from`: `from/node_modules`,
/// then each enclosing `node_modules` up to the root's.
pub(crate) fn resolve(
    packages: &serde_json::Map<String, Value>,
    from: &str,
    name: &str,
) -> Option<String> {
    let mut base = from.to_owned();
    loop {
        let candidate = if base.is_empty() {
            format!("node_modules/{name}")
        } else {
            format!("{base}/node_modules/{name}")
        };
        if packages.contains_key(&candidate) {
            return Some(candidate);
        }
        if base.is_empty() {
            return None;
        }
        base = match base.rfind("/node_modules/") {
            Some(i) => base[..i].to_owned(),
            None => String::new(),
        };
    }
}

/// The parts of a pnpm lockfile (v9) the workspace needs: its members' importers and every
/// package and snapshot their production dependencies reach. What the deps layer is keyed on.
pub fn pnpm_closure(lock: &Value, workspace: &Workspace) -> Value {
    let mut out = serde_json::Map::new();
    let mut todo: Vec<String> = Vec::new();
    let importers = lock.get("importers");
    for member in &workspace.members {
        let Some(importer) = importers.and_then(|i| i.get(member)) else {
            continue;
        };
        out.insert(format!("importer {member}"), importer.clone());
        for key in ["dependencies", "optionalDependencies"] {
            for (name, dep) in importer
                .get(key)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if let Some(version) = dep.get("version").and_then(Value::as_str)
                    && !version.starts_with("link:")
                {
                    todo.push(format!("{name}@{version}"));
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let base = id.split('(').next().unwrap_or(&id).to_owned();
        if let Some(package) = lock.get("packages").and_then(|p| p.get(&base)) {
            out.insert(format!("package {base}"), package.clone());
        }
        let Some(snapshot) = lock.get("snapshots").and_then(|s| s.get(&id)) else {
            continue;
        };
        out.insert(format!("snapshot {id}"), snapshot.clone());
        for key in ["dependencies", "optionalDependencies"] {
            for (name, version) in snapshot
                .get(key)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if let Some(version) = version.as_str() {
                    todo.push(format!("{name}@{version}"));
                }
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(root: &Path, rel: &str, body: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }

    fn monorepo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            r,
            "package.json",
            r#"{"name":"mono","workspaces":["packages/*"]}"#,
        );
        write(r, "package-lock.json", "{}");
        write(
            r,
            "packages/api/package.json",
            r#"{"name":"api","dependencies":{"shared":"*","express":"^4"}}"#,
        );
        write(
            r,
            "packages/web/package.json",
            r#"{"name":"web","dependencies":{"shared":"*"}}"#,
        );
        write(
            r,
            "packages/shared/package.json",
            r#"{"name":"shared","dependencies":{"camelcase":"^6"}}"#,
        );
        dir
    }

    #[test]
    fn finds_the_package_by_name_or_by_walking_up() {
        let repo = monorepo();
        let root = repo.path().canonicalize().unwrap();
        let by_name = locate(&root, Some("api")).unwrap().unwrap();
        assert_eq!(by_name.dir, "packages/api");
        assert_eq!(by_name.members, ["packages/api", "packages/shared"]);
        let walked = locate(&root.join("packages/web"), None).unwrap().unwrap();
        assert_eq!(
            (walked.root.as_path(), walked.name.as_str()),
            (root.as_path(), "web")
        );
        let err = locate(&root, Some("nope")).unwrap_err().to_string();
        assert!(err.contains("it has: api, shared, web"), "{err}");
        assert!(
            locate(&root, None).unwrap().is_none(),
            "the root is an app of its own"
        );
    }

    #[test]
    fn the_npm_closure_is_what_node_resolves_from_the_members() {
        let lock = json!({"packages": {
            "": {"workspaces": ["packages/*"]},
            "node_modules/api": {"resolved": "packages/api", "link": true},
            "node_modules/shared": {"resolved": "packages/shared", "link": true},
            "packages/api": {"dependencies": {"shared": "*", "express": "^4"}},
            "packages/shared": {"dependencies": {"camelcase": "^6"}},
            "packages/web": {"dependencies": {"shared": "*", "koa": "^2"}},
            "node_modules/express": {"dependencies": {"debug": "2"}},
            "node_modules/express/node_modules/debug": {},
            "node_modules/debug": {},
            "node_modules/camelcase": {},
            "node_modules/koa": {"dependencies": {"debug": "4"}},
            "packages/api/node_modules/camelcase": {}
        }});
        let ws = Workspace {
            root: PathBuf::from("/r"),
            dir: "packages/api".into(),
            name: "api".into(),
            members: vec!["packages/api".into(), "packages/shared".into()],
            all: Vec::new(),
        };
        let closure: Vec<String> = npm_closure(&lock, &ws).into_iter().collect();
        assert_eq!(
            closure,
            [
                "node_modules/camelcase",
                "node_modules/express",
                "node_modules/express/node_modules/debug",
                "node_modules/shared",
            ]
        );
    }

    #[test]
    fn the_pnpm_closure_follows_importers_and_snapshots() {
        let lock: Value = yaml_serde::from_str(
            "lockfileVersion: '9.0'
importers:
  packages/api:
    dependencies:
      shared: {specifier: 'workspace:*', version: 'link:../shared'}
      express: {specifier: ^4, version: 4.21.2}
  packages/shared:
    dependencies:
      camelcase: {specifier: ^6, version: 6.3.0}
    devDependencies:
      is-number: {specifier: ^7, version: 7.0.0}
  packages/web:
    dependencies:
      fastify: {specifier: ^5, version: 5.1.0}
packages:
  express@4.21.2: {resolution: {integrity: a}}
  debug@2.6.9: {resolution: {integrity: b}}
  camelcase@6.3.0: {resolution: {integrity: c}}
  is-number@7.0.0: {resolution: {integrity: d}}
  fastify@5.1.0: {resolution: {integrity: e}}
snapshots:
  express@4.21.2:
    dependencies:
      debug: 2.6.9
  debug@2.6.9: {}
  camelcase@6.3.0: {}
  is-number@7.0.0: {}
  fastify@5.1.0: {}
",
        )
        .unwrap();
        let ws = Workspace {
            root: PathBuf::from("/r"),
            dir: "packages/api".into(),
            name: "api".into(),
            members: vec!["packages/api".into(), "packages/shared".into()],
            all: Vec::new(),
        };
        let part = pnpm_closure(&lock, &ws);
        let keys: Vec<&String> = part.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "importer packages/api",
                "importer packages/shared",
                "package camelcase@6.3.0",
                "package debug@2.6.9",
                "package express@4.21.2",
                "snapshot camelcase@6.3.0",
                "snapshot debug@2.6.9",
                "snapshot express@4.21.2",
            ]
        );
    }
}
