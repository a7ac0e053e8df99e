//! What a dependency install leaves to be known: which packages carry native code (`.node`
//! binaries or a `binding.gyp`), and which install scripts did not run (kiln installs with
//! `--ignore-scripts`), so a build says so instead of an image failing when it loads them.

use std::path::Path;

use serde_json::Value;

/// Production packages of a v2/v3 lockfile whose install scripts were skipped, by name.
pub fn skipped_install_scripts(lock: &Value) -> Vec<String> {
    let Some(packages) = lock.get("packages").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut names: Vec<String> = packages
        .iter()
        .filter(|(_, p)| p.get("hasInstallScript").and_then(Value::as_bool) == Some(true))
        .filter(|(_, p)| p.get("dev").and_then(Value::as_bool) != Some(true))
        .filter_map(|(path, _)| path.rsplit_once("node_modules/").map(|(_, n)| n.to_owned()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether a v2/v3 lockfile's production packages may carry native code: an install script
/// (a `binding.gyp` counts as one) or os/cpu/libc constraints (platform-specific prebuilds).
pub fn lockfile_may_have_native_code(lock: &Value) -> bool {
    let Some(packages) = lock.get("packages").and_then(Value::as_object) else {
        return false;
    };
    packages
        .iter()
        .filter(|(path, p)| !path.is_empty() && p.get("dev").and_then(Value::as_bool) != Some(true))
        .any(|(_, p)| {
            p.get("hasInstallScript").and_then(Value::as_bool) == Some(true)
                || ["os", "cpu", "libc"].iter().any(|k| p.get(k).is_some())
        })
}

/// Installed packages under `modules` with install scripts (`preinstall`, `install`,
/// `postinstall`, or a `binding.gyp`, which npm builds), by name; for any package manager's
/// layout (symlinked entries, as pnpm's, are not followed twice).
pub fn packages_with_install_scripts(modules: &Path) -> Vec<String> {
    let mut found = Vec::new();
    scripted(modules, &mut found, 0);
    found.sort();
    found.dedup();
    found
}

fn scripted(dir: &Path, found: &mut Vec<String>, depth: usize) {
    if depth > 12 {
        return;
    }
    let in_pnpm_store = dir.file_name().is_some_and(|n| n == ".pnpm");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_type().is_ok_and(|k| k.is_dir()) {
            continue;
        }
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // pnpm's virtual store: .pnpm/<id>/node_modules/<name>
        if name.starts_with('@') || name == ".pnpm" || name == "node_modules" || in_pnpm_store {
            scripted(&path, found, depth + 1);
            continue;
        }
        if let Ok(bytes) = std::fs::read(path.join("package.json"))
            && let Ok(package) = serde_json::from_slice::<Value>(&bytes)
        {
            let scripts = package.get("scripts");
            let has_script = ["preinstall", "install", "postinstall"]
                .iter()
                .any(|s| scripts.and_then(|m| m.get(s)).is_some());
            if (has_script || path.join("binding.gyp").is_file())
                && let Some(own) = package.get("name").and_then(Value::as_str)
            {
                found.push(own.to_owned());
            }
        }
        let nested = path.join("node_modules");
        if nested.is_dir() {
            scripted(&nested, found, depth + 1);
        }
    }
}

/// Packages under `modules` (a `node_modules`) holding native code, by name.
pub fn packages_with_native_code(modules: &Path) -> Vec<String> {
    let mut found = Vec::new();
    visit(modules, modules, &mut found);
    found.sort();
    found.dedup();
    found
}

fn visit(modules: &Path, dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            visit(modules, &path, found);
        } else if kind.is_file() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if (name.ends_with(".node") || name == "binding.gyp")
                && let Some(package) = package_of(modules, &path)
            {
                found.push(package);
            }
        }
    }
}

/// The package name a file under `modules` belongs to (the innermost `node_modules/<name>`).
fn package_of(modules: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(modules).ok()?.to_str()?.to_owned();
    let inner = rel
        .rsplit_once("node_modules/")
        .map_or(rel.as_str(), |(_, r)| r);
    let mut parts = inner.split('/');
    let first = parts.next()?;
    if first.starts_with('@') {
        Some(format!("{first}/{}", parts.next()?))
    } else {
        Some(first.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_native_packages_and_skipped_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        for (file, body) in [
            ("@img/sharp-linux-x64/lib/sharp.node", "x"),
            ("plain/index.js", "x"),
            ("a/node_modules/gyp-thing/binding.gyp", "{}"),
        ] {
            std::fs::create_dir_all(m.join(file).parent().unwrap()).unwrap();
            std::fs::write(m.join(file), body).unwrap();
        }
        assert_eq!(
            packages_with_native_code(m),
            ["@img/sharp-linux-x64", "gyp-thing"]
        );
        let lock: Value = serde_json::from_str(
            r#"{"lockfileVersion":3,"packages":{"":{},
            "node_modules/sharp":{"hasInstallScript":true},
            "node_modules/nodemon":{"hasInstallScript":true,"dev":true},
            "node_modules/a/node_modules/@x/y":{"hasInstallScript":true}}}"#,
        )
        .unwrap();
        assert_eq!(skipped_install_scripts(&lock), ["@x/y", "sharp"]);
        assert!(lockfile_may_have_native_code(&lock));
    }

    #[test]
    fn a_lockfile_marks_native_code_by_scripts_and_platform_constraints() {
        let lock = |packages: &str| -> Value {
            serde_json::from_str(&format!(r#"{{"lockfileVersion":3,"packages":{packages}}}"#))
                .unwrap()
        };
        let portable = lock(
            r#"{"":{},"node_modules/express":{"version":"4.21.2"},
            "node_modules/esbuild":{"hasInstallScript":true,"dev":true}}"#,
        );
        assert!(!lockfile_may_have_native_code(&portable));
        let prebuilt =
            lock(r#"{"":{},"node_modules/@img/sharp-linux-x64":{"os":["linux"],"cpu":["x64"]}}"#);
        assert!(lockfile_may_have_native_code(&prebuilt));
    }

    #[test]
    fn finds_install_scripts_in_flat_and_pnpm_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        for (file, body) in [
            ("plain/package.json", r#"{"name":"plain"}"#),
            (
                "@s/hooked/package.json",
                r#"{"name":"@s/hooked","scripts":{"postinstall":"x"}}"#,
            ),
            (
                ".pnpm/gyp@1.0.0/node_modules/gyp/package.json",
                r#"{"name":"gyp"}"#,
            ),
            (".pnpm/gyp@1.0.0/node_modules/gyp/binding.gyp", "{}"),
            (
                "a/node_modules/deep/package.json",
                r#"{"name":"deep","scripts":{"install":"y"}}"#,
            ),
        ] {
            std::fs::create_dir_all(m.join(file).parent().unwrap()).unwrap();
            std::fs::write(m.join(file), body).unwrap();
        }
        assert_eq!(
            packages_with_install_scripts(m),
            ["@s/hooked", "deep", "gyp"]
        );
    }
}
