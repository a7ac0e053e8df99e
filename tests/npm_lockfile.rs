//! kiln's own layout of npm lockfiles: the deps layer it streams from package tarballs holds
//! the tree `npm ci --omit=dev --ignore-scripts` lays out, file for file (paths, contents,
//! executable bits, `.bin` links), on real lockfiles; a tampered tarball is refused naming the
//! package; a tarball missing from npm's cache is fetched with npm's own config.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{kiln_cmd, real_apps, root};
use kiln_layers::Digest;

/// What a path in a tree is.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { executable: bool, digest: String },
    Link(String),
}

fn copy(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success(), "copy {}", from.display());
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `kiln build --json` of `app` into `out`; the build's output and the deps layer's tree
/// (below `app/node_modules/`, or with `all`, below `app/`).
fn kiln_deps_tree(app: &Path, npm_cache: &Path, tmp: &Path) -> (String, BTreeMap<String, Node>) {
    kiln_layer_tree(app, npm_cache, tmp, &[], "app/node_modules/")
}

fn kiln_layer_tree(
    app: &Path,
    npm_cache: &Path,
    tmp: &Path,
    env: &[(&str, &str)],
    under: &str,
) -> (String, BTreeMap<String, Node>) {
    let out_dir = tmp.join("out");
    let output = kiln_cmd(&tmp.join("cache"), npm_cache)
        .envs(env.iter().copied())
        .arg("build")
        .arg(app)
        // Only the deps layer is compared: no build script, and a start that needs no built file.
        .args([
            "--no-build",
            "--start",
            "node package.json",
            "--json",
            "--tag",
            "t",
            "--layout",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}\n{}", stderr(&output));
    let built: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let deps = built["built"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "deps")
        .unwrap_or_else(|| panic!("no deps layer: {stdout}"));
    let digest: Digest = deps["descriptor"]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let store = kiln_layers::BlobStore::open(&out_dir).unwrap();
    let blob = std::fs::File::open(store.blob_path(&digest)).unwrap();
    let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(blob));
    let mut tree = BTreeMap::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let Some(rel) = path.strip_prefix(under) else {
            continue;
        };
        let rel = rel.trim_end_matches('/').to_owned();
        if rel.is_empty() {
            continue;
        }
        let node = match entry.header().entry_type() {
            tar::EntryType::Directory => Node::Dir,
            tar::EntryType::Symlink => Node::Link(
                entry
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => {
                let executable = entry.header().mode().unwrap() & 0o111 != 0;
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                Node::File {
                    executable,
                    digest: Digest::of(&bytes).to_string(),
                }
            }
        };
        assert!(
            tree.insert(rel.clone(), node).is_none(),
            "{rel} twice in the layer"
        );
    }
    (stdout, tree)
}

/// `npm ci --omit=dev --ignore-scripts` of `app` offline on a copy of `npm_cache`, as a tree.
fn npm_tree(app: &Path, npm_cache: &Path, tmp: &Path) -> BTreeMap<String, Node> {
    let cache = tmp.join("npm-cache-copy");
    if !cache.exists() {
        copy(npm_cache, &cache);
    }
    let out = Command::new("npm")
        .args([
            "ci",
            "--omit=dev",
            "--ignore-scripts",
            "--offline",
            "--no-audit",
            "--no-fund",
        ])
        .arg("--cache")
        .arg(&cache)
        .current_dir(app)
        .output()
        .unwrap();
    assert!(out.status.success(), "npm ci: {}", stderr(&out));
    let mut tree = BTreeMap::new();
    walk(&app.join("node_modules"), "", &mut tree);
    tree.remove(".package-lock.json");
    tree
}

fn walk(dir: &Path, prefix: &str, tree: &mut BTreeMap<String, Node>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let rel = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let meta = entry.path().symlink_metadata().unwrap();
        let node = if meta.file_type().is_symlink() {
            Node::Link(
                std::fs::read_link(entry.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            )
        } else if meta.is_dir() {
            walk(&entry.path(), &format!("{rel}/"), tree);
            Node::Dir
        } else {
            Node::File {
                executable: meta.permissions().mode() & 0o111 != 0,
                digest: Digest::of(&std::fs::read(entry.path()).unwrap()).to_string(),
            }
        };
        tree.insert(rel, node);
    }
}

/// Asserts two trees are equal, naming the first differences.
fn assert_same(app: &str, kiln: &BTreeMap<String, Node>, npm: &BTreeMap<String, Node>) {
    let mut differences = Vec::new();
    for (path, node) in npm {
        match kiln.get(path) {
            None => differences.push(format!("only npm has {path} ({node:?})")),
            Some(mine) if mine != node => {
                differences.push(format!("{path}: kiln {mine:?}, npm {node:?}"))
            }
            _ => {}
        }
    }
    for (path, node) in kiln {
        if !npm.contains_key(path) {
            differences.push(format!("only kiln has {path} ({node:?})"));
        }
    }
    assert!(
        differences.is_empty(),
        "{app}: {} differences, first: {:#?}",
        differences.len(),
        &differences[..differences.len().min(12)]
    );
}

/// The deps layer of `app` equals npm's tree, and kiln said it streamed it.
fn conforms(name: &str, app: &Path, npm_cache: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let (kiln_app, npm_app) = (tmp.path().join("k"), tmp.path().join("n"));
    copy(app, &kiln_app);
    copy(app, &npm_app);
    let (out, kiln) = kiln_deps_tree(&kiln_app, npm_cache, tmp.path());
    assert!(out.contains("streamed from npm's cache"), "{name}: {out}");
    let npm = npm_tree(&npm_app, npm_cache, tmp.path());
    assert!(npm.len() > 10, "{name}: npm laid out only {npm:?}");
    assert_same(name, &kiln, &npm);
}

#[test]
fn a_workspace_package_gets_the_same_layer_as_npm_ci_and_its_closure() {
    let fixtures = common::lockfiles();
    let cache = fixtures.join("npm-cache");
    for service in ["api", "web"] {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        copy(&fixtures.join("npm-workspaces"), &repo);
        let app = repo.join("packages").join(service);
        let (streamed_dir, npm_dir) = (tmp.path().join("s"), tmp.path().join("n"));
        std::fs::create_dir_all(&streamed_dir).unwrap();
        std::fs::create_dir_all(&npm_dir).unwrap();
        let (out, streamed) = kiln_layer_tree(&app, &cache, &streamed_dir, &[], "app/");
        assert!(out.contains("streamed from npm's cache"), "{out}");
        let npm_cache = tmp.path().join("npm-cache-copy");
        copy(&cache, &npm_cache);
        let (out, npm) =
            kiln_layer_tree(&app, &npm_cache, &npm_dir, &[("KILN_NPM_CI", "1")], "app/");
        assert!(
            out.contains("npm installs them: KILN_NPM_CI is set"),
            "{out}"
        );
        assert!(npm.len() > 10, "{service}: {npm:?}");
        assert_same(service, &streamed, &npm);
    }
}

#[test]
fn the_streamed_layer_is_npm_ci_file_for_file_on_real_lockfiles() {
    let apps = real_apps();
    // The generators' apps: bins (fastify, egg-scripts), scoped and nested packages, sharp's
    // platform-specific optional packages.
    for name in ["express", "koa", "egg", "fastify", "nest", "sharp"] {
        conforms(name, &apps.join(name), &apps.join("npm-cache"));
    }
    conforms(
        "express-app (bench)",
        &root().join("bench/fixtures/express-app"),
        &root().join("bench/npm-cache"),
    );
    conforms(
        "app-express",
        &root().join("fixtures/app-express"),
        &root().join("fixtures/npm-cache"),
    );
}

/// The tarball npm's cache holds for `integrity` under `cache`.
fn cached_tarball(cache: &Path, integrity: &str) -> PathBuf {
    use base64::Engine;
    let (algorithm, b64) = integrity.split_once('-').unwrap();
    let hex = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    cache
        .join("_cacache/content-v2")
        .join(algorithm)
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex[4..])
}

/// `kiln build APP --layout TMP/out` with its cache in `tmp`, npm on `npm_cache` (offline
/// unless `online`), `env` added.
fn build_layout(
    tmp: &Path,
    app: &Path,
    npm_cache: &Path,
    online: bool,
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = kiln_cmd(&tmp.join("cache"), npm_cache);
    if online {
        cmd.env_remove("npm_config_offline");
    }
    cmd.envs(env.iter().copied())
        .arg("build")
        .arg(app)
        .arg("--layout")
        .arg(tmp.join("out"))
        .output()
        .unwrap()
}

/// An app in `dir/app` that depends on `name` alone, its lockfile entry `entry`.
fn one_dependency_app(dir: &Path, name: &str, entry: serde_json::Value) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    let version = entry["version"].clone();
    let package = serde_json::json!({"name": "one", "version": "1.0.0",
        "dependencies": {name: version}, "scripts": {"start": "node index.js"}});
    let lock = serde_json::json!({"name": "one", "version": "1.0.0", "lockfileVersion": 3,
        "requires": true, "packages": {
            "": {"name": "one", "version": "1.0.0", "dependencies": {name: version}},
            format!("node_modules/{name}"): entry}});
    std::fs::write(app.join("package.json"), package.to_string()).unwrap();
    std::fs::write(app.join("package-lock.json"), lock.to_string()).unwrap();
    std::fs::write(app.join("index.js"), format!("require('{name}');\n")).unwrap();
    app
}

fn lock_entry(app: &Path, path: &str) -> serde_json::Value {
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(app.join("package-lock.json")).unwrap()).unwrap();
    lock["packages"][path].clone()
}

#[test]
fn a_tarball_that_does_not_match_the_lockfile_is_refused_naming_the_package() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    copy(&root().join("fixtures/app-express"), &app);
    let cache = tmp.path().join("npm-cache");
    copy(&root().join("fixtures/npm-cache"), &cache);
    let entry = lock_entry(&app, "node_modules/ms");
    let tarball = cached_tarball(&cache, entry["integrity"].as_str().unwrap());
    let mut bytes = std::fs::read(&tarball).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0xff;
    std::fs::write(&tarball, bytes).unwrap();

    let out = build_layout(tmp.path(), &app, &cache, false, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let version = entry["version"].as_str().unwrap();
    assert!(
        err.contains(&format!("package ms@{version} (node_modules/ms)"))
            && err.contains("does not match the lockfile's integrity"),
        "{err}"
    );
}

#[test]
fn a_tarball_missing_from_npms_cache_is_fetched_from_where_the_lockfile_says() {
    let tmp = tempfile::tempdir().unwrap();
    // A registry of one tarball on loopback: ms, taken from the fixtures' cache.
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let entry = lock_entry(&root().join("fixtures/app-express"), "node_modules/ms");
    let integrity = entry["integrity"].as_str().unwrap();
    let version = entry["version"].as_str().unwrap();
    std::fs::copy(
        cached_tarball(&root().join("fixtures/npm-cache"), integrity),
        served.join("ms.tgz"),
    )
    .unwrap();
    let port = common::free_port();
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .current_dir(&served)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/ms.tgz");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let app = one_dependency_app(
        tmp.path(),
        "ms",
        serde_json::json!({"version": version, "resolved": url, "integrity": integrity}),
    );

    let cache = tmp.path().join("empty-npm-cache");
    let out = build_layout(tmp.path(), &app, &cache, true, &[]);
    server.kill().ok();
    server.wait().ok();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("fetching 1 packages into npm's cache"),
        "{err}"
    );
    assert!(cached_tarball(&cache, integrity).is_file(), "{err}");
}

#[test]
fn a_tarball_nobody_serves_fails_the_build_with_npms_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let entry = lock_entry(&root().join("fixtures/app-express"), "node_modules/ms");
    let (integrity, version) = (
        entry["integrity"].as_str().unwrap(),
        entry["version"].as_str().unwrap(),
    );
    let url = format!("http://127.0.0.1:{}/ms.tgz", common::free_port());
    let app = one_dependency_app(
        tmp.path(),
        "ms",
        serde_json::json!({"version": version, "resolved": url, "integrity": integrity}),
    );
    let out = build_layout(
        tmp.path(),
        &app,
        &tmp.path().join("empty-npm-cache"),
        true,
        &[("npm_config_fetch_retries", "0")],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("npm cache add: exit status"), "{err}");
    assert!(
        err.contains("ECONNREFUSED") || err.contains("127.0.0.1"),
        "{err}"
    );
}

#[test]
fn a_hostile_tarball_cannot_climb_out_or_plant_links_or_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let tgz = tmp.path().join("evil.tgz");
    // Made by Python's tarfile, which writes any name and any entry type.
    let script = r##"
import io, sys, tarfile
def add(t, name, data=b"", kind=tarfile.REGTYPE, link="", mode=0o644):
    info = tarfile.TarInfo(name); info.type = kind; info.linkname = link; info.mode = mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
with tarfile.open(sys.argv[1], "w:gz") as t:
    add(t, "package/package.json", b'{"name":"evil","version":"1.0.0","bin":"cli.js"}')
    add(t, "package/index.js", b"module.exports = 1;\n")
    add(t, "package/cli.js", b"#!/usr/bin/env node\r\nconsole.log(1)\r\n")
    add(t, "package/../../../../escape.js", b"owned")
    add(t, "package/lib/../../../escape2.js", b"owned")
    add(t, "package/passwd", kind=tarfile.SYMTYPE, link="/etc/passwd")
    add(t, "package/hard", kind=tarfile.LNKTYPE, link="/etc/shadow")
    add(t, "package/null", kind=tarfile.CHRTYPE)
    add(t, "package/.gitignore", b"secret\n")
    add(t, "package/run.sh", b"#!/bin/sh\n", mode=0o4755)
"##;
    let made = Command::new("python3")
        .args(["-c", script])
        .arg(&tgz)
        .status()
        .unwrap();
    assert!(made.success());
    let bytes = std::fs::read(&tgz).unwrap();
    let integrity = {
        use base64::Engine;
        use sha2::Digest as _;
        format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&bytes))
        )
    };
    let cache = tmp.path().join("npm-cache");
    let at = cached_tarball(&cache, &integrity);
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::write(&at, &bytes).unwrap();

    let app = one_dependency_app(
        tmp.path(),
        "evil",
        serde_json::json!({"version": "1.0.0", "integrity": integrity, "bin": {"evil": "cli.js"}}),
    );
    let (out, tree) = kiln_layer_tree(&app, &cache, tmp.path(), &[], "");
    assert!(out.contains("streamed from npm's cache"), "{out}");
    let paths: Vec<&str> = tree.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "app",
            "app/node_modules",
            "app/node_modules/.bin",
            "app/node_modules/.bin/evil",
            "app/node_modules/evil",
            "app/node_modules/evil/.npmignore",
            "app/node_modules/evil/cli.js",
            "app/node_modules/evil/index.js",
            "app/node_modules/evil/package.json",
            "app/node_modules/evil/run.sh",
        ]
    );
    assert_eq!(
        tree["app/node_modules/.bin/evil"],
        Node::Link("../evil/cli.js".into())
    );
    // The bin is executable and its `#!` line lost its `\r`, as npm's bin-links does.
    let cli = b"#!/usr/bin/env node\nconsole.log(1)\r\n";
    assert_eq!(
        tree["app/node_modules/evil/cli.js"],
        Node::File {
            executable: true,
            digest: Digest::of(cli).to_string()
        }
    );
}
