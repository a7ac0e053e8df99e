//! Real apps made by the public generators (fixtures/real-apps/make.sh), built with the plain
//! `kiln build DIR`, unpacked with umoci, run as non-root and called over HTTP; and the
//! sandbox of the build step against a hostile build script.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::image::{self, App};
use common::*;

/// A copy of the generated app `name` in `tmp`.
fn app_copy(name: &str, tmp: &Path) -> PathBuf {
    let from = real_apps().join(name);
    let dest = tmp.join(name);
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&from)
        .arg(&dest)
        .status()
        .unwrap();
    assert!(ok.success(), "copy {}", from.display());
    dest
}

/// `kiln build DIR --layout OUT --tag app:test` with its own cache, npm offline on the
/// generated apps' cache.
fn build_app(dir: &Path, tmp: &Path, extra: &[&str]) -> Output {
    kiln_cmd(&tmp.join("cache"), &real_apps().join("npm-cache"))
        .arg("build")
        .arg(dir)
        .arg("--layout")
        .arg(tmp.join("out"))
        .args(["--tag", "app:test"])
        .args(extra)
        .output()
        .unwrap()
}

/// Rewrites `dir`'s package.json after `change`.
fn edit_package_json(dir: &Path, change: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("package.json");
    let mut pkg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    change(&mut pkg);
    std::fs::write(&path, serde_json::to_vec_pretty(&pkg).unwrap()).unwrap();
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the image `app:test` of `tmp/out` (see [`image::run_image`]).
fn run_image(tmp: &Path, wait: Duration) -> App {
    image::run_image(&tmp.join("out"), "app:test", tmp, wait)
}

/// Builds a generated app with no flags, runs it and checks that `path` answers 200 with a
/// body containing `expect`; returns the build's stderr.
fn builds_and_answers(name: &str, path: &str, expect: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = app_copy(name, tmp.path());
    let out = build_app(&dir, tmp.path(), &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "kiln build {name}:\n{err}");
    let app = run_image(tmp.path(), Duration::from_secs(60));
    let (status, body) = app.get(path);
    assert_eq!(status, 200, "{name} GET {path}: {body}\n{}", app.log());
    assert!(body.contains(expect), "{name} GET {path}: {body}");
    err
}

#[test]
fn express_generator_app_builds_and_answers() {
    builds_and_answers("express", "/users", "respond with a resource");
}

#[test]
fn koa_generator_app_builds_and_answers() {
    builds_and_answers("koa", "/string", "koa2 string");
}

#[test]
fn allowlisted_install_scripts_run_in_the_sandbox_and_the_rest_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = app_copy("koa", tmp.path());
    edit_package_json(&dir, |pkg| {
        pkg["kiln"] = serde_json::json!({"allowScripts": ["core-js", "left-pad"]});
    });
    let out = build_app(&dir, tmp.path(), &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("running the install scripts of core-js in the sandbox"),
        "{err}"
    );
    assert!(
        err.contains("build | "),
        "no script output streamed:\n{err}"
    );
    assert!(
        err.contains("kiln.allowScripts names left-pad, which is not"),
        "{err}"
    );
    assert!(!err.contains("install scripts not run"), "{err}");
    let app = run_image(tmp.path(), Duration::from_secs(60));
    let (status, body) = app.get("/string");
    assert_eq!(
        (status, body.as_str()),
        (200, "koa2 string"),
        "{}",
        app.log()
    );
}

#[test]
fn fastify_cli_app_starts_through_its_bin_and_answers() {
    let err = builds_and_answers("fastify", "/", "root");
    assert!(err.contains("runtime: app"), "{err}");
}

#[test]
fn egg_app_starts_in_the_foreground_and_drains_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = app_copy("egg", tmp.path());
    let out = build_app(&dir, tmp.path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut app = run_image(tmp.path(), Duration::from_secs(90));
    let (status, body) = app.get("/");
    assert_eq!((status, body.as_str()), (200, "hi, egg"), "{}", app.log());
    assert!(app.log().contains("dropping --daemon"), "{}", app.log());
    // SIGTERM to the launcher (PID 1 in the image's PID namespace) reaches egg, whose
    // processes exit, and the launcher with them.
    let launcher = Command::new("pgrep")
        .args(["-P", &app.child.id().to_string()])
        .output()
        .unwrap();
    let launcher = String::from_utf8_lossy(&launcher.stdout).trim().to_owned();
    assert!(!launcher.is_empty(), "no launcher process");
    unsafe_kill(launcher.parse().unwrap(), "TERM");
    let status = wait_exit(&mut app.child, Duration::from_secs(30));
    assert!(
        status.is_some(),
        "egg did not exit on SIGTERM:\n{}",
        app.log()
    );
}

#[test]
fn nest_app_runs_its_build_script_and_ships_dist_without_dev_dependencies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = app_copy("nest", tmp.path());
    let out = build_app(&dir, tmp.path(), &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("running script \"build\""), "{err}");
    assert!(err.contains("scripts.start:prod"), "{err}");
    let app = run_image(tmp.path(), Duration::from_secs(60));
    let (status, body) = app.get("/");
    assert_eq!(
        (status, body.as_str()),
        (200, "Hello World!"),
        "{}",
        app.log()
    );
    let app_root = tmp.path().join("bundle/rootfs/app");
    assert!(app_root.join("dist/main.js").is_file(), "no dist/main.js");
    assert!(
        app_root.join("node_modules/@nestjs/core").is_dir(),
        "no production dependency"
    );
    assert!(
        !app_root.join("node_modules/@nestjs/cli").exists(),
        "a devDependency shipped"
    );
    // A code-only change re-runs the script, not the install.
    let main = dir.join("src/app.service.ts");
    let text = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, text.replace("Hello World!", "Hello again!")).unwrap();
    let out = build_app(&dir, tmp.path(), &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("running script \"build\""), "{err}");
    assert!(
        !err.contains("build deps: npm ci"),
        "dev install ran again:\n{err}"
    );
    // The same source again: the built layer comes from the cache, no script runs.
    let out = build_app(&dir, tmp.path(), &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("running script"), "{err}");
}

#[test]
fn a_start_needing_a_dev_dependency_fails_the_build_naming_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = app_copy("nest", tmp.path());
    edit_package_json(&dir, |pkg| {
        pkg["scripts"].as_object_mut().unwrap().remove("start:prod");
    });
    let out = build_app(&dir, tmp.path(), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("scripts.start \"nest start\"")
            && err.contains("@nestjs/cli, a devDependency")
            && err.contains("--start"),
        "{err}"
    );
    // The fix the message names works.
    let out = build_app(&dir, tmp.path(), &["--start", "node dist/main"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn sharp_app_loads_its_prebuilt_native_library_in_the_image() {
    let err = builds_and_answers("sharp", "/resize", "\"width\":16");
    assert!(
        err.contains("deps: native code in @img/sharp-linux-x64"),
        "{err}"
    );
    assert!(
        err.contains("install scripts not run (--ignore-scripts): sharp"),
        "{err}"
    );
}

fn unsafe_kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_hostile_build_script_gets_no_secret_network_or_escape_and_is_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(root().join("fixtures/build-hostile"))
        .arg(&app)
        .status()
        .unwrap();
    assert!(ok.success());
    let (npm_token, password) = ("npm-Secret-4417", "reg-Secret-9020");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    std::fs::write(
        home.join(".npmrc"),
        format!("//registry.npmjs.org/:_authToken={npm_token}\n"),
    )
    .unwrap();
    std::fs::write(
        home.join(".docker/config.json"),
        format!(
            r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#,
            base64(format!("u:{password}").as_bytes(), false)
        ),
    )
    .unwrap();
    std::fs::write(
        app.join(".npmrc"),
        format!("//r.example/:_authToken={npm_token}\n"),
    )
    .unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if conn.is_ok() {
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    let token = format!("kiln-hostile-{}-{}", std::process::id(), free_port());
    let outside = tmp.path().join(format!("outside-{token}"));
    let targets = serde_json::json!({
        "secrets": [
            home.join(".npmrc"), home.join(".docker/config.json"), "/root/.npmrc",
            "/root/.docker/config.json", "/etc/passwd", "/app/.npmrc", app.join(".npmrc"),
        ],
        "writes": [
            format!("/escape-{token}"), format!("/usr/escape-{token}"),
            format!("../escape-{token}"), outside.to_str().unwrap(),
            format!("/app/node_modules/escape-{token}"),
        ],
        "port": port,
        "alive": token,
    });
    std::fs::write(app.join("targets.json"), targets.to_string()).unwrap();

    let npm = npm_cache(tmp.path());
    let started = std::time::Instant::now();
    let out = kiln_cmd(&tmp.path().join("cache"), &npm)
        .arg("build")
        .arg(&app)
        .arg("--layout")
        .arg(tmp.path().join("out"))
        .env("NPM_TOKEN", npm_token)
        .env("KILN_REGISTRY_PASSWORD", password)
        .env("HOME", &home)
        .env("DOCKER_CONFIG", home.join(".docker"))
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("build script \"build\" (node build.js) did not finish within 4 s"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(60),
        "stopped only after {took:?}"
    );
    for secret in [npm_token, password] {
        assert!(!err.contains(secret), "{secret} reached the script:\n{err}");
    }
    let line = |name: &str| {
        let prefix = format!("probe: {name}=");
        err.lines()
            .find_map(|l| l.split_once(&prefix).map(|(_, v)| v.to_owned()))
            .unwrap_or_else(|| panic!("no probe {name}:\n{err}"))
    };
    for key in [
        "NPM_TOKEN",
        "KILN_REGISTRY_PASSWORD",
        "KILN_REGISTRY_TOKEN",
        "DOCKER_CONFIG",
    ] {
        assert_eq!(line(&format!("env {key}")), "absent");
    }
    for file in targets["secrets"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        let result = line(&format!("read {file}"));
        assert!(!result.starts_with("read:"), "the script read {file}");
    }
    for file in targets["writes"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        assert_ne!(
            line(&format!("write {file}")),
            "written",
            "the script wrote {file}"
        );
    }
    assert!(!outside.exists(), "a file was written outside the sandbox");
    assert!(!Path::new(&format!("/escape-{token}")).exists());
    assert_eq!(line("uid"), "65534");
    let connect = line("connect");
    assert_ne!(connect, "connected");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the script reached the loopback listener"
    );
    // Its forked child died with it.
    std::thread::sleep(Duration::from_millis(500));
    let alive = Command::new("pgrep").args(["-f", &token]).output().unwrap();
    let mut pids = String::new();
    alive.stdout.as_slice().read_to_string(&mut pids).unwrap();
    assert!(pids.trim().is_empty(), "processes left running: {pids}");
    assert!(
        !tmp.path().join("out").exists(),
        "a failed build wrote an image"
    );

    // The next build with the same cache works.
    let out = kiln_cmd(&tmp.path().join("cache"), &npm)
        .arg("build")
        .arg(root().join("fixtures/app-plain"))
        .arg("--layout")
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `kiln build --json` of `dir` on the base `oci:LAYOUT:TAG` with cache `cache`: the final
/// `built` object, after checking it against the image the layout holds.
fn build_json(dir: &Path, base: &str, cache: &Path, out: &Path) -> serde_json::Value {
    let output = kiln_cmd(cache, &real_apps().join("npm-cache"))
        .arg("build")
        .arg(dir)
        .args(["--base", base, "--json", "--tag", "app:test", "--layout"])
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", stderr(&output));
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let (built, events) = lines.split_last().unwrap();
    assert!(
        events.iter().all(|e| e["event"]["step"].is_string()),
        "{stdout}"
    );
    let built = built["built"].clone();
    // The records are the image's layers, in order.
    let store = kiln_layers::BlobStore::open(out).unwrap();
    let manifest = store.resolve("app:test").unwrap();
    assert_eq!(built["digest"], manifest.digest.to_string());
    let image: kiln_layers::ImageManifest =
        serde_json::from_slice(&store.read_blob(&manifest.digest).unwrap()).unwrap();
    let recorded: Vec<&str> = built["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["descriptor"]["digest"].as_str().unwrap())
        .collect();
    let layers: Vec<String> = image.layers.iter().map(|l| l.digest.to_string()).collect();
    assert_eq!(recorded, layers);
    built
}

/// The record of the layer of `kind` in a `built` object.
fn layer_of<'a>(built: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    built["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} layer in {built}"))
}

#[test]
fn deps_are_keyed_by_node_abi_only_when_native_code_may_be_there() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // Base A: from this machine. Base B: the same with another Node ABI on its label.
    let bases = tmp.path().join("bases");
    let made = kiln_cmd(&cache, &real_apps().join("npm-cache"))
        .args(["base", "from-host", "--tag", "a", "--layout"])
        .arg(&bases)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let store = kiln_layers::BlobStore::open(&bases).unwrap();
    let a = store.resolve("a").unwrap();
    let image: kiln_layers::ImageManifest =
        serde_json::from_slice(&store.read_blob(&a.digest).unwrap()).unwrap();
    let mut config: kiln_layers::ImageConfig =
        serde_json::from_slice(&store.read_blob(&image.config.digest).unwrap()).unwrap();
    let labels = config.config.labels.as_mut().unwrap();
    assert!(labels.contains_key("dev.kiln.node.abi"), "{labels:?}");
    labels.insert("dev.kiln.node.abi".into(), "999".into());
    let (b, _) = store
        .write_image(&config, image.layers.clone(), image.annotations.clone())
        .unwrap();
    store.tag("b", &b).unwrap();
    let base = |tag: &str| format!("oci:{}:{tag}", bases.display());

    // express: no install script, no os/cpu constraint: one deps layer for both ABIs.
    let express = app_copy("express", tmp.path());
    let on_a = build_json(&express, &base("a"), &cache, &tmp.path().join("ea"));
    let on_b = build_json(&express, &base("b"), &cache, &tmp.path().join("eb"));
    let (deps_a, deps_b) = (layer_of(&on_a, "deps"), layer_of(&on_b, "deps"));
    assert_eq!(deps_a["cache_hit"], false, "{on_a}");
    assert_eq!(deps_b["cache_hit"], true, "{on_b}");
    assert_eq!(deps_a["cache_key"], deps_b["cache_key"]);
    assert_eq!(layer_of(&on_b, "app")["cache_hit"], true, "{on_b}");
    assert_eq!(layer_of(&on_a, "base")["cache_hit"], true);

    // sharp: platform-specific prebuilds: a deps layer per ABI.
    let sharp = app_copy("sharp", tmp.path());
    let on_a = build_json(&sharp, &base("a"), &cache, &tmp.path().join("sa"));
    let on_b = build_json(&sharp, &base("b"), &cache, &tmp.path().join("sb"));
    let (deps_a, deps_b) = (layer_of(&on_a, "deps"), layer_of(&on_b, "deps"));
    assert_eq!(deps_a["cache_hit"], false, "{on_a}");
    assert_eq!(deps_b["cache_hit"], false, "{on_b}");
    assert_ne!(deps_a["cache_key"], deps_b["cache_key"]);
    let again = build_json(&sharp, &base("a"), &cache, &tmp.path().join("sa2"));
    assert_eq!(layer_of(&again, "deps")["cache_key"], deps_a["cache_key"]);
    assert_eq!(layer_of(&again, "deps")["cache_hit"], true, "{again}");
}
