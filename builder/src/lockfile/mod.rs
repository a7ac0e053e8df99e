//! An npm lockfile (v2/v3) read as an install plan: every production package with its install
//! path, version, integrity and bins, for the platform the image runs on. What the plan cannot
//! express (git or file dependencies, links, entries with no integrity) is said as a reason,
//! and npm itself installs instead.

pub(crate) mod bins;
pub(crate) mod integrity;
pub(crate) mod tarball;

use std::collections::BTreeSet;

use serde_json::Value;

use integrity::Integrity;

/// The platform the tree is for: optional packages for another os, cpu or libc are left out,
/// as npm does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Platform {
    /// Node's `process.platform` (`linux`).
    pub os: String,
    /// Node's `process.arch` (`x64`, `arm64`).
    pub cpu: String,
    /// `glibc` or `musl`, when known.
    pub libc: Option<String>,
}

impl Platform {
    /// The platform of an image config's `os`/`architecture` and its libc label.
    pub fn of_image(os: &str, architecture: &str, libc: Option<&str>) -> Self {
        let cpu = match architecture {
            "amd64" => "x64",
            "386" => "ia32",
            "arm64" => "arm64",
            "arm" => "arm",
            other => other,
        };
        Platform {
            os: os.to_owned(),
            cpu: cpu.to_owned(),
            libc: libc.map(|l| if l.contains("musl") { "musl" } else { "glibc" }.to_owned()),
        }
    }

    /// Whether a lockfile entry's `os`, `cpu` and `libc` lists allow this platform (npm's
    /// rule: an allow-list, or `!`-negations).
    fn allows(&self, entry: &Value) -> bool {
        let fits = |key: &str, value: Option<&str>| -> bool {
            let Some(list) = entry.get(key).and_then(Value::as_array) else {
                return true;
            };
            let Some(value) = value else {
                return true;
            };
            let list: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
            if list.iter().any(|v| v.strip_prefix('!') == Some(value)) {
                return false;
            }
            let allowed: Vec<&&str> = list.iter().filter(|v| !v.starts_with('!')).collect();
            allowed.is_empty() || allowed.iter().any(|v| **v == value)
        };
        fits("os", Some(&self.os))
            && fits("cpu", Some(&self.cpu))
            && fits("libc", self.libc.as_deref())
    }
}

/// One package to lay out.
#[derive(Clone, Debug)]
pub(crate) struct LockedPackage {
    /// Its install path, relative to the app (`node_modules/a/node_modules/@s/b`).
    pub path: String,
    /// Its registry name (an alias's real name).
    pub name: String,
    /// Its version.
    pub version: String,
    /// The lockfile's hash of its tarball.
    pub integrity: Integrity,
    /// Where the lockfile says it came from, if it says.
    pub resolved: Option<String>,
    /// Its bins: link name, target path inside the package (normalized).
    pub bins: Vec<(String, String)>,
}

impl LockedPackage {
    /// `name@version`.
    pub fn spec(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// What `npm cache add` fetches: the tarball URL the lockfile names, else `name@version`.
    pub fn fetch_spec(&self) -> String {
        self.resolved.clone().unwrap_or_else(|| self.spec())
    }
}

/// What to lay out for an app: packages, and links to workspace packages.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The packages, in lockfile path order.
    pub packages: Vec<LockedPackage>,
    /// Workspace links: install path, and the relative symlink target npm writes there.
    pub links: Vec<(String, String)>,
}

/// The production packages of `lock` for `platform` that the packages at `roots` (lockfile
/// locations: `""` for an app, the members' directories in a monorepo) need; `Err` says why
/// the lockfile needs npm itself. They are those reached from the roots' dependencies as Node
/// resolves them (nearest `node_modules` first), as npm does: an optional package for another
/// platform is left out, and with it what only it needed; a link to a workspace package is a
/// symlink, and that package's dependencies are followed.
pub(crate) fn production_packages(
    lock: &Value,
    platform: &Platform,
    roots: &[String],
) -> Result<Plan, String> {
    let Some(packages) = lock.get("packages").and_then(Value::as_object) else {
        return Err("the lockfile has no `packages` map".into());
    };
    let flag = |entry: &Value, key: &str| entry.get(key).and_then(Value::as_bool) == Some(true);
    let in_workspace = roots.iter().any(|r| !r.is_empty());
    let mut reached: BTreeSet<String> = BTreeSet::new();
    let mut links: Vec<(String, String)> = Vec::new();
    crate::workspace::walk_npm(packages, roots, |path, dep| {
        if flag(dep, "dev") {
            return Ok(false);
        }
        if flag(dep, "link") {
            // Only a monorepo's own packages ship beside the app.
            let target = dep.get("resolved").and_then(Value::as_str);
            let Some(target) = target.filter(|_| in_workspace) else {
                return Err(format!("{path} is a link"));
            };
            let up = "../".repeat(path.matches('/').count());
            links.push((path.to_owned(), format!("{up}{target}")));
            return Ok(true);
        }
        if !platform.allows(dep) {
            if flag(dep, "optional") || flag(dep, "devOptional") {
                return Ok(false);
            }
            return Err(format!(
                "{path} is not for {}/{}",
                platform.os, platform.cpu
            ));
        }
        reached.insert(path.to_owned());
        Ok(true)
    })?;
    let mut out = Vec::new();
    for path in reached {
        let entry = &packages[&path];
        // Bundled packages come in their parent's tarball.
        if flag(entry, "inBundle") {
            continue;
        }
        let name_from_path = path.rsplit_once("node_modules/").map_or("", |(_, n)| n);
        let resolved = entry.get("resolved").and_then(Value::as_str);
        if let Some(url) = resolved
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(format!("{path} comes from {url}"));
        }
        let integrity = entry
            .get("integrity")
            .and_then(Value::as_str)
            .and_then(Integrity::parse)
            .ok_or_else(|| format!("{path} has no integrity"))?;
        let version = entry
            .get("version")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{path} has no version"))?;
        out.push(LockedPackage {
            name: entry
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(name_from_path)
                .to_owned(),
            version: version.to_owned(),
            integrity,
            resolved: resolved.map(str::to_owned),
            bins: bins::of_entry(name_from_path, entry),
            path,
        });
    }
    links.sort();
    Ok(Plan {
        packages: out,
        links,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SRI: &str = "sha512-PYAthTa2m2VKxuvSD3DPC/Gy+U+sOA1LAuT8mkmRuvw+NACSaeXEQ+NHcVF7rONl6qcaxV3Uuemwawk+7+SJLw==";

    fn linux() -> Platform {
        Platform::of_image("linux", "amd64", Some("glibc"))
    }

    #[test]
    fn dev_bundled_and_other_platform_optional_packages_are_left_out() {
        let lock = json!({"packages": {
            "": {"name": "app", "dependencies": {"a": "1", "alias": "npm:real@3"},
                "optionalDependencies": {"@esbuild/darwin-arm64": "0.1", "@esbuild/linux-x64": "0.1"},
                "devDependencies": {"dev": "1"}},
            "node_modules/unreached": {"version": "1.0.0", "integrity": SRI},
            "node_modules/a": {"version": "1.0.0", "integrity": SRI, "bin": {"a": "./cli.js"},
                "dependencies": {"b": "2", "bundled": "1"}},
            "node_modules/a/node_modules/b": {"version": "2.0.0", "integrity": SRI},
            "node_modules/dev": {"version": "1.0.0", "integrity": SRI, "dev": true},
            "node_modules/a/node_modules/bundled": {"version": "1.0.0", "inBundle": true},
            "node_modules/@esbuild/darwin-arm64": {"version": "0.1.0", "integrity": SRI,
                "optional": true, "os": ["darwin"], "cpu": ["arm64"], "dependencies": {"x": "1"}},
            "node_modules/x": {"version": "1.0.0", "integrity": SRI, "optional": true},
            "node_modules/@esbuild/linux-x64": {"version": "0.1.0", "integrity": SRI,
                "optional": true, "os": ["linux"], "cpu": ["x64"]},
            "node_modules/alias": {"name": "real", "version": "3.0.0", "integrity": SRI},
        }});
        let packages = production_packages(&lock, &linux(), &[String::new()])
            .unwrap()
            .packages;
        let paths: Vec<&str> = packages.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "node_modules/@esbuild/linux-x64",
                "node_modules/a",
                "node_modules/a/node_modules/b",
                "node_modules/alias"
            ]
        );
        assert_eq!(packages[1].bins, [("a".to_owned(), "cli.js".to_owned())]);
        assert_eq!(packages[3].spec(), "real@3.0.0");
    }

    #[test]
    fn what_needs_npm_itself_is_named() {
        let cases = [
            (
                json!({"version": "1.0.0", "resolved": "git+ssh://git@github.com/x/y.git#abc"}),
                "comes from git+ssh",
            ),
            (json!({"version": "1.0.0"}), "has no integrity"),
            (json!({"resolved": "packages/x", "link": true}), "is a link"),
            (
                json!({"version": "1.0.0", "integrity": SRI, "os": ["darwin"]}),
                "is not for linux/x64",
            ),
        ];
        for (entry, reason) in cases {
            let lock =
                json!({"packages": {"": {"dependencies": {"x": "1"}}, "node_modules/x": entry}});
            let why = production_packages(&lock, &linux(), &[String::new()]).unwrap_err();
            assert!(why.contains(reason), "{why}");
        }
    }

    #[test]
    fn a_workspace_package_links_its_sibling_and_gets_the_siblings_dependencies() {
        let lock = json!({"packages": {
            "": {"workspaces": ["packages/*"]},
            "packages/api": {"name": "@x/api", "dependencies": {"@x/shared": "*", "a": "1"}},
            "packages/shared": {"name": "@x/shared", "dependencies": {"b": "1"}},
            "packages/web": {"name": "@x/web", "dependencies": {"c": "1"}},
            "node_modules/@x/api": {"resolved": "packages/api", "link": true},
            "node_modules/@x/shared": {"resolved": "packages/shared", "link": true},
            "node_modules/a": {"version": "1.0.0", "integrity": SRI},
            "packages/shared/node_modules/b": {"version": "1.0.0", "integrity": SRI},
            "node_modules/c": {"version": "1.0.0", "integrity": SRI},
        }});
        let plan = production_packages(&lock, &linux(), &["packages/api".into()]).unwrap();
        let paths: Vec<&str> = plan.packages.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["node_modules/a", "packages/shared/node_modules/b"]);
        assert_eq!(
            plan.links,
            [(
                "node_modules/@x/shared".to_owned(),
                "../../packages/shared".to_owned()
            )]
        );
    }

    #[test]
    fn platform_lists_follow_npm() {
        let p = linux();
        assert!(p.allows(&json!({"os": ["!win32"]})));
        assert!(!p.allows(&json!({"os": ["!linux"]})));
        assert!(p.allows(&json!({"cpu": ["x64", "arm64"], "libc": ["glibc"]})));
        assert!(!p.allows(&json!({"libc": ["musl"]})));
    }
}
