//! The Node version an app asks for: `engines.node` in package.json, else `.nvmrc`, else
//! `.node-version` (nvm, fnm and volta conventions), checked against the base's Node at
//! build time instead of failing, or misbehaving, at run time.

use std::path::Path;

use node_semver::{Range, Version};
use serde_json::Value;

use crate::{BuildError, Result};

/// Checks that `have` (the base's `node --version`, e.g. `v20.11.0`) satisfies what the app
/// in `source` asks for. Names such as `lts/*` or `node` in `.nvmrc` ask for nothing checkable.
pub fn check(source: &Path, package: &Value, have: &str) -> Result<()> {
    let Some((from, wanted)) = wanted(source, package) else {
        return Ok(());
    };
    let range = match Range::parse(&wanted) {
        Ok(range) => range,
        Err(_) if from != "engines.node" => return Ok(()),
        Err(e) => {
            return Err(BuildError::PackageJson {
                path: source.join("package.json"),
                problem: format!("engines.node {wanted:?} is not a version range: {e}"),
            });
        }
    };
    let Ok(version) = Version::parse(have.trim_start_matches('v')) else {
        return Ok(());
    };
    if range.satisfies(&version) {
        return Ok(());
    }
    Err(BuildError::NodeVersion {
        source_dir: source.to_owned(),
        from: from.to_owned(),
        wanted,
        have: have.to_owned(),
    })
}

fn wanted(source: &Path, package: &Value) -> Option<(&'static str, String)> {
    if let Some(range) = package
        .get("engines")
        .and_then(|e| e.get("node"))
        .and_then(Value::as_str)
    {
        return Some(("engines.node", range.trim().to_owned()));
    }
    for file in [".nvmrc", ".node-version"] {
        if let Ok(text) = std::fs::read_to_string(source.join(file)) {
            let first = text.lines().next().unwrap_or("").trim();
            let version = first.trim_start_matches('v');
            if !version.is_empty() && version.starts_with(|c: char| c.is_ascii_digit()) {
                let from = if file == ".nvmrc" {
                    ".nvmrc"
                } else {
                    ".node-version"
                };
                return Some((from, version.to_owned()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn engines_ranges_and_version_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = |r: &str| json!({"engines": {"node": r}});
        for ok in [">=18.0.0", "^20", "18.x || 20.x", "20"] {
            check(dir.path(), &pkg(ok), "v20.11.1").unwrap();
        }
        let err = check(dir.path(), &pkg(">=22"), "v20.11.1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engines.node asks for Node >=22") && err.contains("v20.11.1"),
            "{err}"
        );
        std::fs::write(dir.path().join(".nvmrc"), "v18.19.0\n").unwrap();
        let err = check(dir.path(), &json!({}), "v20.11.1")
            .unwrap_err()
            .to_string();
        assert!(err.contains(".nvmrc asks for Node 18.19.0"), "{err}");
        std::fs::write(dir.path().join(".nvmrc"), "lts/*\n").unwrap();
        check(dir.path(), &json!({}), "v20.11.1").unwrap();
    }
}
