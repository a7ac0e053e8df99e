//! End-to-end tests of `kiln build`: every image is validated, read by skopeo, unpacked by
//! umoci, run as its non-root user and called over HTTP.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use kiln_layers::{BlobStore, validate::validate_layout};
#[test]
fn faas_image_runs_functions_and_leaves_ignored_and_secret_files_out() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let layout = tmp.path().join("out");
    build(&root().join("fixtures/faas-hello"), &layout, "dev", &npm);
    let bundle = unpack(&layout, "dev", tmp.path());
    let files = layer_paths(&bundle).join("\n");
    for never in [".env", ".npmrc", "notes.log", "scratch"] {
        assert!(!files.contains(never), "{never} shipped:\n{files}");
    }
    assert!(files.contains("functions/hello.js"));
    let app = run(&bundle);
    let (status, body) = http(&app, "GET", "/hello?name=kiln", None);
    assert_eq!(status, 200);
    assert!(body.contains("hello kiln"), "{body}");
    let (status, body) = http(&app, "POST", "/echo", Some(r#"{"a":1}"#));
    assert_eq!(status, 200);
    assert!(body.contains(r#""a":1"#) && body.contains("POST"), "{body}");
    let (status, body) = http(&app, "GET", "/fail", None);
    assert_eq!(status, 500);
    assert!(body.contains("boom"), "{body}");
    assert_eq!(http(&app, "GET", "/nope", None).0, 404);
}

#[test]
fn sma_image_serves_pages_rpc_and_browser_client() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let layout = tmp.path().join("out");
    build(&root().join("fixtures/sma-deps"), &layout, "dev", &npm);
    let app = run(&unpack(&layout, "dev", tmp.path()));
    let (status, page) = http(&app, "GET", "/", None);
    assert!(
        status == 200 && page.contains("/kiln/client.js"),
        "{status} {page}"
    );
    let (status, client) = http(&app, "GET", "/kiln/client.js", None);
    assert!(status == 200 && client.contains("service"), "{client}");
    let (status, list) = http(&app, "POST", "/rpc/list", Some("{}"));
    assert!(status == 200 && list.starts_with('['), "{status} {list}");
    assert_eq!(http(&app, "POST", "/rpc/nope", Some("{}")).0, 404);
}

#[test]
fn express_app_installs_deps_from_lockfile_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let layout = tmp.path().join("out");
    build(&root().join("fixtures/app-express"), &layout, "dev", &npm);
    let bundle = unpack(&layout, "dev", tmp.path());
    assert!(
        bundle
            .join("rootfs/app/node_modules/express/package.json")
            .is_file()
    );
    let app = run(&bundle);
    let (status, body) = http(&app, "GET", "/users/7", None);
    assert_eq!((status, body.as_str()), (200, r#"{"id":"7"}"#));
}

#[test]
fn vendored_node_modules_and_plain_app_run() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    for fixture in ["app-vendored", "app-plain"] {
        let layout = tmp.path().join(fixture);
        build(&root().join("fixtures").join(fixture), &layout, "dev", &npm);
        let work = tmp.path().join(format!("{fixture}-run"));
        let app = run(&unpack(&layout, "dev", &work));
        let (status, body) = http(&app, "GET", "/", None);
        assert_eq!(status, 200, "{fixture}: {body}");
    }
}

/// A build of `dir` into `layout` with `cache`, which must not exist yet: every layer,
/// the host base included, is made for this build and none comes from an earlier run.
/// Returns the image digest and kiln's progress (stderr).
fn fresh_build(dir: &Path, layout: &Path, cache: &Path, npm: &Path) -> (String, String) {
    assert!(!cache.exists(), "{} is not a fresh cache", cache.display());
    let out = kiln_cmd(cache, npm)
        .args(["build", dir.to_str().unwrap(), "--layout"])
        .arg(layout)
        .args(["--tag", "x"])
        .output()
        .unwrap();
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kiln build failed: {progress}");
    // Nothing was served from a cache: the base and every layer were made by this build.
    assert!(
        !progress.contains("(cached)") && !progress.contains("cache hit"),
        "a fresh cache had a hit:\n{progress}"
    );
    assert!(progress.contains("(built)"), "base not built:\n{progress}");
    let digest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(digest.starts_with("sha256:"), "stdout {digest:?}");
    validate_layout(&BlobStore::open(layout).unwrap()).expect("image validates");
    (digest, progress)
}

/// Gives every file and directory under `dir` (and `dir`) its own mtime, none of them the
/// checkout's: a different day per path, in 2001.
fn scramble_mtimes(dir: &Path) -> usize {
    let mut paths = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < paths.len() {
        if paths[i].is_dir() && !paths[i].is_symlink() {
            let mut entries: Vec<_> = std::fs::read_dir(&paths[i])
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            paths.extend(entries);
        }
        i += 1;
    }
    // Deepest first, so setting a file's mtime does not disturb its directory's afterwards.
    for (n, path) in paths.iter().enumerate().rev() {
        let date = format!("2001-01-01 +{} days", n % 360);
        let ok = Command::new("touch")
            .args(["-h", "-d", &date])
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success(), "touch {}", path.display());
    }
    paths.len()
}

fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::symlink_metadata(path).unwrap().modified().unwrap()
}

#[test]
fn same_source_elsewhere_with_other_mtimes_gives_same_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let src = root().join("fixtures/faas-deps");
    let (first, progress) = fresh_build(
        &src,
        &tmp.path().join("a"),
        &tmp.path().join("cache-a"),
        &npm,
    );
    for kind in ["runtime layer:", "deps layer:", "app layer:"] {
        assert!(progress.contains(kind), "no {kind}\n{progress}");
    }

    // Elsewhere, deeper, every path with another mtime; built with a cache of its own.
    let copy = tmp.path().join("elsewhere/deeper/faas-deps");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(&src)
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    let touched = scramble_mtimes(&copy);
    assert!(touched >= 5, "only {touched} paths in the copy");
    for rel in ["", "functions", "functions/duration.js", "package.json"] {
        assert_ne!(
            mtime(&copy.join(rel)),
            mtime(&src.join(rel)),
            "{rel:?} kept its mtime"
        );
    }
    assert_ne!(
        mtime(&copy.join("functions")),
        mtime(&copy.join("functions/duration.js"))
    );
    let (second, _) = fresh_build(
        &copy,
        &tmp.path().join("b"),
        &tmp.path().join("cache-b"),
        &npm,
    );
    assert_eq!(first, second);
}

/// `tests/golden-digests.txt` as a map: `name digest` per line, `#` comments and blank lines
/// skipped; a malformed or repeated line fails.
fn golden_digests() -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join("tests/golden-digests.txt")).unwrap();
    let mut golden = std::collections::BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, digest) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("golden-digests.txt: malformed line {line:?}"));
        assert!(
            golden.insert(name.to_owned(), digest.to_owned()).is_none(),
            "golden-digests.txt: {name} twice"
        );
    }
    golden
}

#[test]
fn runtime_layers_match_golden_digests() {
    // A change here means every app's runtime layer changed: bump it on purpose only.
    // Built from an empty cache, so a change in tar or gzip output cannot hide behind a
    // cached layer keyed by content alone.
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let layout = tmp.path().join("out");
    fresh_build(
        &root().join("fixtures/faas-hello"),
        &layout,
        &tmp.path().join("cache"),
        &npm,
    );
    let images = validate_layout(&BlobStore::open(&layout).unwrap()).unwrap();
    let layers = &images[0].manifest.layers;
    let built: std::collections::BTreeMap<String, String> = [
        ("faas-hello-app", &layers[layers.len() - 1].digest),
        ("faas-runtime", &layers[layers.len() - 2].digest),
    ]
    .into_iter()
    .map(|(name, digest)| (name.to_owned(), digest.to_string()))
    .collect();
    assert_eq!(
        golden_digests(),
        built,
        "tests/golden-digests.txt (left) and the layers built now (right) differ"
    );
}

#[test]
fn archive_is_read_by_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let tar = tmp.path().join("img.tar");
    let out = kiln(
        &[
            "build",
            root().join("fixtures/app-plain").to_str().unwrap(),
            "--tarball",
            tar.to_str().unwrap(),
            "--tag",
            "plain",
        ],
        &npm,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = String::from_utf8(out.stdout).unwrap();
    let dest = tmp.path().join("copied");
    let copy = Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}:plain", tar.display()))
        .arg(format!("oci:{}:plain", dest.display()))
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let images = validate_layout(&BlobStore::open(&dest).unwrap()).unwrap();
    assert_eq!(images.len(), 1);
    assert!(digest.starts_with("sha256:"));
}

#[test]
fn bad_inputs_fail_with_a_clear_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let bad = root().join("fixtures/bad");
    let cases: [(&str, Vec<&str>, &str); 7] = [
        (
            "bad-package-json",
            vec![],
            "package.json: invalid package.json",
        ),
        (
            "bad-lockfile",
            vec![],
            "package-lock.json: invalid lockfile",
        ),
        ("lock-out-of-sync", vec![], "lockfile out of sync"),
        (
            "symlink-escape",
            vec![],
            "leak.js points outside the source",
        ),
        ("npm-ci-fails", vec![], "npm ci for"),
        ("missing-dir", vec![], "does not exist"),
        (
            "faas-hello",
            vec!["--runtime", "lambda"],
            "unknown runtime \"lambda\"",
        ),
    ];
    for (fixture, extra, expected) in cases {
        let dir = if fixture == "faas-hello" {
            root().join("fixtures/faas-hello")
        } else {
            bad.join(fixture)
        };
        let layout = tmp.path().join(fixture);
        let mut args = vec![
            "build",
            dir.to_str().unwrap(),
            "--layout",
            layout.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = kiln(&args, &npm);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{fixture} succeeded");
        assert!(stderr.contains(expected), "{fixture}: {stderr}");
        assert!(
            !layout.join("index.json").exists(),
            "{fixture} left a layout behind"
        );
    }
}

#[test]
fn npm_token_and_source_npmrc_never_reach_a_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let src = tmp.path().join("faas-deps");
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(root().join("fixtures/faas-deps"))
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(
        src.join(".npmrc"),
        "//registry.invalid/:_authToken=${NPM_TOKEN}\n",
    )
    .unwrap();
    let layout = tmp.path().join("out");
    let cache = tmp.path().join("cache");
    let out = kiln_cmd(&cache, &npm)
        .args([
            "build",
            src.to_str().unwrap(),
            "--layout",
            layout.to_str().unwrap(),
        ])
        .env("NPM_TOKEN", "tok-3f9a-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = BlobStore::open(&layout).unwrap();
    let images = validate_layout(&store).unwrap();
    for layer in &images[0].manifest.layers {
        let mut tar = Vec::new();
        let file = std::fs::File::open(store.blob_path(&layer.digest)).unwrap();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(file), &mut tar).unwrap();
        assert!(
            !String::from_utf8_lossy(&tar).contains("registry.invalid"),
            "the source .npmrc is in layer {}",
            layer.digest
        );
    }
    // The token in any encoding: not in kiln's output, the image (every blob, inflated too)
    // or the cache (blobs, key files, npm's scratch directories).
    common::secrets::assert_absent(
        "tok-3f9a-secret",
        &[("stdout", &out.stdout), ("stderr", &out.stderr)],
        &[&layout, &cache],
    );
}

#[test]
fn a_cache_left_by_a_crash_mid_write_still_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let cache = tmp.path().join("cache");
    let src = root().join("fixtures/faas-deps");
    let build_into = |layout: &Path| {
        kiln_cmd(&cache, &npm)
            .args([
                "build",
                src.to_str().unwrap(),
                "--layout",
                layout.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let first = build_into(&tmp.path().join("a"));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // What a kill -9 can leave: a partial temp blob, and a layer whose blob was cut short.
    let blobs = cache.join("blobs/sha256");
    std::fs::write(blobs.join(".tmp-partial"), b"half a layer").unwrap();
    let images = validate_layout(&BlobStore::open(tmp.path().join("a")).unwrap()).unwrap();
    let deps = &images[0].manifest.layers[images[0].manifest.layers.len() - 2];
    let blob = blobs.join(deps.digest.hex());
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
    let second = build_into(&tmp.path().join("b"));
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(first.stdout, second.stdout, "same image after recovery");
    validate_layout(&BlobStore::open(tmp.path().join("b")).unwrap()).unwrap();
}

#[test]
fn kiln_toml_gives_the_base_and_environment_and_flags_win() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let cache = tmp.path().join("cache");
    let bases = tmp.path().join("bases");
    let made = kiln_cmd(&cache, &npm)
        .args(["base", "from-host", "--tag", "node", "--layout"])
        .arg(&bases)
        .output()
        .unwrap();
    assert!(made.status.success());
    let app = tmp.path().join("app");
    std::fs::create_dir(&app).unwrap();
    for file in ["index.js", "package.json"] {
        std::fs::copy(root().join("fixtures/app-plain").join(file), app.join(file)).unwrap();
    }
    let base = format!("oci:{}:node", bases.display());
    std::fs::write(
        app.join("kiln.toml"),
        format!("base = \"{base}\"\n[env]\nGREETING = \"from kiln.toml\"\n"),
    )
    .unwrap();
    let build = |extra: &[&str]| {
        let out = kiln_cmd(&cache, &npm)
            .arg("build")
            .arg(&app)
            .args(["--tag", "x", "--layout"])
            .arg(tmp.path().join("out"))
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    };
    let err = build(&[]);
    assert!(err.contains(&format!("base: {base} ")), "{err}");
    // The environment of the image tagged `x` in the layout.
    let image_env = || {
        let store = BlobStore::open(tmp.path().join("out")).unwrap();
        let manifest = store.resolve("x").unwrap();
        let image: kiln_layers::ImageManifest =
            serde_json::from_slice(&store.read_blob(&manifest.digest).unwrap()).unwrap();
        let config: kiln_layers::ImageConfig =
            serde_json::from_slice(&store.read_blob(&image.config.digest).unwrap()).unwrap();
        config.config.env.unwrap_or_default()
    };
    let env = image_env();
    assert!(
        env.contains(&"GREETING=from kiln.toml".to_owned()),
        "{env:?}"
    );
    // A flag wins over the file.
    let err = build(&["--env", "GREETING=flag"]);
    assert!(err.contains(&format!("base: {base} ")), "{err}");
    let env = image_env();
    assert!(env.contains(&"GREETING=flag".to_owned()), "{env:?}");
    assert!(
        !env.iter().any(|e| e == "GREETING=from kiln.toml"),
        "{env:?}"
    );

    // Settings in two places, or a misspelt one, fail naming the file.
    std::fs::write(app.join("kiln.toml"), "strat = \"node index.js\"\n").unwrap();
    let out = kiln_cmd(&cache, &npm)
        .arg("build")
        .arg(&app)
        .args(["--layout"])
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("kiln.toml") && err.contains("unknown setting `strat`"),
        "{err}"
    );
}
