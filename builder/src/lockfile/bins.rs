//! The `.bin` links npm makes for installed packages: for a package at
//! `…/node_modules/<name>`, `…/node_modules/.bin/<bin>` → `../<name>/<target>`.

use serde_json::Value;

use super::LockedPackage;

/// A lockfile entry's bins, normalized as npm does (a link name is its last path part; a
/// target is a path inside the package, `.` and `..` resolved, never above it).
pub(crate) fn of_entry(name: &str, entry: &Value) -> Vec<(String, String)> {
    let pairs: Vec<(String, String)> = match entry.get("bin") {
        Some(Value::String(target)) => vec![(name.to_owned(), target.clone())],
        Some(Value::Object(map)) => map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect(),
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(link, target)| {
            let link = link.replace(['\\', ':'], "/");
            let link = normalize(link.rsplit('/').find(|p| !p.is_empty())?)?;
            let target = normalize(&target.replace('\\', "/"))?;
            Some((link, target))
        })
        .collect()
}

/// `path` as a relative path below `/` (`path.join('/', p).slice(1)`), or `None` when empty.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Every `.bin` link of `packages`: (link path, link target), both relative to the app. When
/// two packages in one `node_modules` claim a name, the first in path order keeps it.
pub(crate) fn links(packages: &[LockedPackage]) -> Vec<(String, String)> {
    let mut links: Vec<(String, String)> = Vec::new();
    let mut taken = std::collections::HashSet::new();
    for package in packages {
        let Some((parent, name)) = package.path.rsplit_once("node_modules/") else {
            continue;
        };
        for (link, target) in &package.bins {
            let path = format!("{parent}node_modules/.bin/{link}");
            if taken.insert(path.clone()) {
                links.push((path, format!("../{name}/{target}")));
            }
        }
    }
    links.sort();
    links
}

/// The bin targets of `package`, as paths inside it.
pub(crate) fn targets(package: &LockedPackage) -> std::collections::HashSet<&str> {
    package.bins.iter().map(|(_, t)| t.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bins_are_normalized_and_linked_from_their_node_modules() {
        let bins = of_entry(
            "@s/tool",
            &json!({"bin": {"tool": "./bin/../cli.js", "@s/other": "bin\\other.js", "..": "x"}}),
        );
        assert_eq!(
            bins,
            [
                ("other".to_owned(), "bin/other.js".to_owned()),
                ("tool".to_owned(), "cli.js".to_owned())
            ]
        );
        assert_eq!(
            of_entry("x", &json!({"bin": "../../../etc/passwd"})),
            [("x".to_owned(), "etc/passwd".to_owned())]
        );
        let package = |path: &str, bins: Vec<(String, String)>| LockedPackage {
            path: path.into(),
            name: String::new(),
            version: String::new(),
            integrity: super::super::integrity::Integrity::parse("sha1-AAAA").unwrap(),
            resolved: None,
            bins,
        };
        let links = links(&[
            package("node_modules/@s/tool", bins.clone()),
            package(
                "node_modules/a/node_modules/b",
                vec![("b".into(), "b.js".into())],
            ),
            package("node_modules/z", vec![("tool".into(), "z.js".into())]),
        ]);
        assert_eq!(
            links,
            [
                (
                    "node_modules/.bin/other".to_owned(),
                    "../@s/tool/bin/other.js".to_owned()
                ),
                (
                    "node_modules/.bin/tool".to_owned(),
                    "../@s/tool/cli.js".to_owned()
                ),
                (
                    "node_modules/a/node_modules/.bin/b".to_owned(),
                    "../b/b.js".to_owned()
                ),
            ]
        );
    }
}
