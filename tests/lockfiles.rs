//! Every lockfile and monorepo: apps with pnpm, yarn classic and yarn berry lockfiles, and one
//! service of an npm and of a pnpm workspaces monorepo, each built with the plain command,
//! run as non-root and answering HTTP; the package managers come from kiln's cache, fetched
//! with `npm pack` from the fixtures' npm cache, and every install runs offline.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::image::run_image;
use common::*;

/// Private copies of fixture `name` and of the caches (installs write to them) in `tmp`.
fn setup(name: &str, tmp: &Path) -> PathBuf {
    let from = lockfiles();
    for dir in [
        name,
        "npm-cache",
        "pnpm-store",
        "yarn-cache",
        "yarn-berry-cache",
    ] {
        let ok = Command::new("cp")
            .arg("-a")
            .arg(from.join(dir))
            .arg(tmp.join(dir))
            .status()
            .unwrap();
        assert!(ok.success(), "copy {dir}");
    }
    tmp.join(name)
}

/// `kiln build DIR --layout tmp/out --tag app:test ARGS`, every package manager offline on
/// the copied caches.
fn build(dir: &Path, tmp: &Path, args: &[&str]) -> Output {
    let berry = dir.join(".yarnrc.yml").is_file();
    kiln_cmd(&tmp.join("cache"), &tmp.join("npm-cache"))
        .env("npm_config_store_dir", tmp.join("pnpm-store"))
        .env(
            "YARN_CACHE_FOLDER",
            tmp.join(if berry {
                "yarn-berry-cache"
            } else {
                "yarn-cache"
            }),
        )
        .env("YARN_ENABLE_GLOBAL_CACHE", "0")
        .env("YARN_ENABLE_NETWORK", "0")
        .arg("build")
        .arg(dir)
        .args(["--layout"])
        .arg(tmp.join("out"))
        .args(["--tag", "app:test"])
        .args(args)
        .output()
        .unwrap()
}

fn built(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kiln build failed:\n{err}");
    err
}

/// Runs the built image and returns the body of `GET /`.
fn answer(tmp: &Path) -> String {
    let _ = std::fs::remove_dir_all(tmp.join("bundle"));
    let app = run_image(&tmp.join("out"), "app:test", tmp, Duration::from_secs(60));
    let (status, body) = app.get("/");
    assert_eq!(status, 200, "GET /: {body}\n{}", app.log());
    body
}

/// Paths under /app of the image last built into `tmp/out`.
fn image_paths(tmp: &Path) -> Vec<String> {
    let bundle = unpack(&tmp.join("out"), "app:test", &tmp.join("paths"));
    layer_paths(&bundle)
        .into_iter()
        .map(|p| {
            p.split_once("/rootfs/app")
                .map_or(p.clone(), |(_, rel)| rel.to_owned())
        })
        .collect()
}

#[test]
fn pnpm_app_builds_and_runs_and_a_pnpm_bin_starts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let app = setup("pnpm-app", tmp.path());
    let err = built(&build(&app, tmp.path(), &[]));
    assert!(err.contains("deps: pnpm@9.15.9 install"), "{err}");
    assert!(answer(tmp.path()).contains("\"root\":true"));
    // node_modules/.bin/fastify is a pnpm shell shim; the image has no shell.
    let err = built(&build(
        &app,
        tmp.path(),
        &["--start", "fastify start -l info app.js"],
    ));
    assert!(
        err.contains("deps layer") && err.contains("cache hit"),
        "{err}"
    );
    assert!(answer(tmp.path()).contains("\"root\":true"));
}

#[test]
fn yarn_classic_app_builds_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let app = setup("yarn-classic-app", tmp.path());
    let pkg = app.join("package.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pkg).unwrap()).unwrap();
    json["kiln"] = serde_json::json!({"allowScripts": ["debug"]});
    std::fs::write(&pkg, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let err = built(&build(&app, tmp.path(), &[]));
    assert!(err.contains("deps: yarn@1.22.22 install"), "{err}");
    assert!(
        err.contains("kiln.allowScripts (debug) is run for npm installs only"),
        "{err}"
    );
    assert!(answer(tmp.path()).contains("Welcome to Express"));
}

#[test]
fn yarn_berry_app_builds_and_answers_and_plug_n_play_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let app = setup("yarn-berry-app", tmp.path());
    let err = built(&build(&app, tmp.path(), &[]));
    assert!(err.contains("yarn@4.18.1 workspaces focus"), "{err}");
    assert!(answer(tmp.path()).contains("Welcome to Express"));

    let rc = app.join(".yarnrc.yml");
    let text = std::fs::read_to_string(&rc).unwrap();
    std::fs::write(&rc, text.replace("nodeLinker: node-modules", "")).unwrap();
    let out = build(&app, tmp.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Plug'n'Play") && err.contains("nodeLinker: node-modules"),
        "{err}"
    );
}

#[test]
fn a_lockfile_out_of_sync_or_a_wrong_package_manager_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let app = setup("pnpm-app", tmp.path());
    let pkg = app.join("package.json");
    let text = std::fs::read_to_string(&pkg).unwrap();
    std::fs::write(&pkg, text.replace("\"pnpm@", "\"yarn@")).unwrap();
    let out = build(&app, tmp.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("names yarn, but the lockfile is pnpm-lock.yaml"),
        "{err}"
    );
    // A dependency added to package.json but not to the lockfile: pnpm's frozen lockfile.
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["dependencies"]["left-pad"] = "^1.3.0".into();
    std::fs::write(&pkg, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let out = build(&app, tmp.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("pnpm@9.15.9 install") && err.contains("frozen"),
        "{err}"
    );
}

/// Builds `args` of the monorepo copy and returns (progress, body, paths under /app).
fn service(dir: &Path, tmp: &Path, args: &[&str]) -> (String, String, Vec<String>) {
    let err = built(&build(dir, tmp, args));
    let body = answer(tmp);
    let _ = std::fs::remove_dir_all(tmp.join("paths"));
    (err, body, image_paths(tmp))
}

fn has(paths: &[String], path: &str) -> bool {
    paths.iter().any(|p| p == path)
}

/// A monorepo `name` (npm or pnpm workspaces): api built from its own directory, web by
/// name from the root; each image holds its service, the shared library and their
/// production closure, nothing of the other service; a change to web leaves api's layers
/// cache hits.
fn monorepo(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = setup(name, tmp.path());
    let (err, body, paths) = service(&repo.join("packages/api"), tmp.path(), &[]);
    assert!(err.contains("workspace: @kiln-fixtures/api"), "{err}");
    assert!(
        body.contains("\"service\":\"api\"") && body.contains("kilnFixturesShared"),
        "{body}"
    );
    assert!(has(&paths, "/packages/api/app.js"), "{paths:?}");
    assert!(has(&paths, "/packages/shared/index.js"), "{paths:?}");
    assert!(!has(&paths, "/packages/web/app.js"), "web shipped with api");
    let names: Vec<&str> = paths.iter().filter_map(|p| p.rsplit('/').next()).collect();
    assert!(names.contains(&"express"), "no express in api's image");
    assert!(!names.contains(&"fastify"), "web's fastify in api's image");
    assert!(
        !names.contains(&"is-number"),
        "shared's dev dependency shipped"
    );
    assert!(names.contains(&"camelcase"), "shared's dependency missing");

    let (err, body, paths) = service(&repo, tmp.path(), &["--workspace", "@kiln-fixtures/web"]);
    assert!(err.contains("workspace: @kiln-fixtures/web"), "{err}");
    assert!(body.contains("\"service\":\"web\""), "{body}");
    assert!(!has(&paths, "/packages/api/app.js"), "api shipped with web");

    // A change to web: api's deps and app layers are cache hits.
    let web = repo.join("packages/web/app.js");
    let mut code = std::fs::read_to_string(&web).unwrap();
    code.push_str("\n// changed\n");
    std::fs::write(&web, code).unwrap();
    let out = build(&repo.join("packages/api"), tmp.path(), &["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let result: serde_json::Value = serde_json::from_str(&last).unwrap();
    for layer in result["built"]["layers"].as_array().unwrap() {
        assert_eq!(layer["cache_hit"], true, "after a change to web: {layer}");
    }
}

#[test]
fn npm_workspaces_service_ships_its_closure_only() {
    monorepo("npm-workspaces");
}

#[test]
fn pnpm_workspaces_service_ships_its_closure_only() {
    monorepo("pnpm-workspaces");
}
