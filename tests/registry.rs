//! End-to-end tests of kiln against a real registry (Debian's docker-registry on loopback):
//! push, pull back with skopeo, unpack with umoci, run and call over HTTP; uploads counted
//! in the registry's access log; auth, faults and bad input.

mod common;

use std::path::Path;
use std::process::Output;

use common::proxy::Proxy;
use common::registry::TestRegistry;
use common::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Neither stdout nor stderr of `out` holds `secret`, in any encoding.
fn no_secret(secret: &str, out: &Output, what: &str) {
    common::secrets::assert_absent(
        secret,
        &[
            (&format!("{what}: stdout"), &out.stdout),
            (&format!("{what}: stderr"), &out.stderr),
        ],
        &[],
    );
}

fn ok(out: Output, what: &str) -> String {
    pushed_digest(&out, what)
}

/// `kiln build <fixture> --base <base> --image <image> --insecure-registry <addr>`.
fn build_push(fixture: &str, base: &str, image: &str, addr: &str, npm: &Path) -> Output {
    assert!(
        image.starts_with(&format!("{addr}/")),
        "{image} not on {addr}"
    );
    push_dir(
        &root().join("fixtures").join(fixture),
        base,
        image,
        npm,
        &[],
    )
}

#[test]
fn pushed_images_of_each_runtime_pull_back_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);

    let image = format!("{}/apps/faas-hello:v1", reg.addr);
    let digest = ok(
        build_push("faas-hello", &base, &image, &reg.addr, &npm),
        "faas build",
    );
    let inspect = skopeo_inspect(&image, false);
    assert_eq!(inspect["Digest"], digest.as_str());
    let raw = skopeo_inspect(&image, true);
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.base.name"],
        base.as_str()
    );
    let app = run(&pull_and_unpack(&image, None, &tmp.path().join("faas")));
    let (status, body) = http(&app, "GET", "/hello?name=kiln", None);
    assert_eq!(status, 200);
    assert!(body.contains("hello kiln"), "{body}");
    drop(app);

    let image = format!("{}/apps/sma-deps:v1", reg.addr);
    ok(
        build_push("sma-deps", &base, &image, &reg.addr, &npm),
        "sma build",
    );
    let app = run(&pull_and_unpack(&image, None, &tmp.path().join("sma")));
    let (status, list) = http(&app, "POST", "/rpc/list", Some("{}"));
    assert!(status == 200 && list.starts_with('['), "{status} {list}");
    drop(app);

    let image = format!("{}/apps/express:v1", reg.addr);
    ok(
        build_push("app-express", &base, &image, &reg.addr, &npm),
        "app build",
    );
    let app = run(&pull_and_unpack(&image, None, &tmp.path().join("app")));
    let (status, body) = http(&app, "GET", "/users/7", None);
    assert_eq!((status, body.as_str()), (200, r#"{"id":"7"}"#));
}

#[test]
fn second_push_uploads_no_layer_and_other_repositories_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);

    let before = reg.log().len();
    let first = format!("{}/team-a/hello:v1", reg.addr);
    let out = build_push("faas-hello", &base, &first, &reg.addr, &npm);
    let first_err = stderr(&out);
    ok(out, "first push");
    let log = reg.log()[before..].to_owned();
    // The base layer came by mount from base/node (the pull recorded where it was).
    assert!(
        TestRegistry::requests(&log, "POST", "mount=", Some(201)) >= 1,
        "no mount from the base repository:\n{log}"
    );
    // Uploaded: exactly the blobs the base does not have (runtime layer, app layer, config),
    // each once.
    let raw = skopeo_inspect(&first, true);
    let base_layers: Vec<String> = skopeo_inspect(&base, true)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: Vec<String> = raw["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .filter(|d| !base_layers.contains(d))
        .collect();
    expected.push(raw["config"]["digest"].as_str().unwrap().to_owned());
    expected.sort();
    assert_eq!(expected.len(), 3, "runtime layer, app layer, config: {raw}");
    let mut uploaded = TestRegistry::uploaded_digests(&log);
    uploaded.sort();
    assert_eq!(
        uploaded, expected,
        "blobs uploaded by the first push (left) and the blobs new to the registry (right):\n{log}"
    );
    assert_eq!(
        TestRegistry::requests(&log, "PUT", "/blobs/uploads/", None),
        expected.len(),
        "blob upload PUTs, answered or not:\n{log}"
    );
    assert_eq!(
        TestRegistry::requests(&log, "POST", "mount=", Some(201)),
        base_layers.len(),
        "base layers mounted:\n{log}"
    );
    assert!(
        first_err.contains(&format!("{} uploaded", expected.len())),
        "{first_err}"
    );

    // The same app again, new tag: every blob is already there; nothing is uploaded.
    let before = reg.log().len();
    let again = format!("{}/team-a/hello:v2", reg.addr);
    let out = build_push("faas-hello", &base, &again, &reg.addr, &npm);
    assert!(
        stderr(&out).contains("0 uploaded (0 bytes)"),
        "{}",
        stderr(&out)
    );
    ok(out, "second push");
    let log = reg.log()[before..].to_owned();
    assert_eq!(
        TestRegistry::requests(&log, "PUT", "/blobs/uploads/", None),
        0,
        "second push uploaded a blob:\n{log}"
    );
    assert_eq!(
        TestRegistry::requests(&log, "POST", "/blobs/uploads/", None),
        0
    );
    assert_eq!(
        TestRegistry::requests(&log, "PUT", "/manifests/v2", Some(201)),
        1
    );

    // Another repository: every blob is mounted from where it was seen, none uploaded.
    let before = reg.log().len();
    let other = format!("{}/team-b/hello:v1", reg.addr);
    let out = build_push("faas-hello", &base, &other, &reg.addr, &npm);
    let err = stderr(&out);
    ok(out, "push to another repository");
    let log = reg.log()[before..].to_owned();
    assert_eq!(
        TestRegistry::requests(&log, "PUT", "/blobs/uploads/", None),
        0,
        "cross-repository push uploaded a blob:\n{log}"
    );
    assert!(err.contains("4 mounted, 0 uploaded"), "{err}");
    assert_eq!(
        skopeo_inspect(&other, false)["Digest"],
        skopeo_inspect(&first, false)["Digest"]
    );
}

#[test]
fn runtime_base_is_published_and_apps_build_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let runtime_base = format!("{}/kiln/runtime-faas:20", reg.addr);
    ok(
        kiln(
            &[
                "runtime",
                "publish",
                "faas",
                "--base",
                &base,
                "--to",
                &runtime_base,
                "--insecure-registry",
                &reg.addr,
            ],
            &npm,
        ),
        "runtime publish",
    );
    let published = skopeo_inspect(&runtime_base, false);
    assert_eq!(published["Labels"]["dev.kiln.runtime"], "faas");
    let base_layers = skopeo_inspect(&base, false)["Layers"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        published["Layers"].as_array().unwrap().len(),
        base_layers + 1
    );

    let image = format!("{}/apps/on-runtime:v1", reg.addr);
    ok(
        build_push("faas-hello", &runtime_base, &image, &reg.addr, &npm),
        "build on runtime base",
    );
    let layers = skopeo_inspect(&image, false)["Layers"].clone();
    assert_eq!(
        layers.as_array().unwrap().len(),
        base_layers + 2,
        "runtime layer added twice? {layers}"
    );
    let app = run(&pull_and_unpack(&image, None, tmp.path()));
    let (status, body) = http(&app, "GET", "/hello?name=rt", None);
    assert!(
        status == 200 && body.contains("hello rt"),
        "{status} {body}"
    );

    // An sma app cannot sit on the faas runtime base.
    let out = build_push(
        "sma-todo",
        &runtime_base,
        &format!("{}/apps/wrong:v1", reg.addr),
        &reg.addr,
        &npm,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("runtime-faas:20")
            && err.contains("runtime base of faas")
            && err.contains("sma"),
        "{err}"
    );
}

#[test]
fn basic_auth_from_env_and_docker_config_and_clear_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let password = "s3cret-Pa55word";
    let reg = TestRegistry::start_with_auth("builder", password);
    let image = format!("{}/apps/private:v1", reg.addr);
    // Its own cache, so that the cache searched for the password below is what these pushes
    // wrote.
    let cache = tmp.path().join("cache");
    let fixture = root().join("fixtures/faas-hello");
    let push = |configure: &dyn Fn(&mut std::process::Command)| {
        let mut cmd = kiln_cmd(&cache, &npm);
        cmd.args(["build", fixture.to_str().unwrap(), "--image", &image])
            .args(["--insecure-registry", &reg.addr])
            .env("DOCKER_CONFIG", tmp.path().join("no-docker-config"))
            .env_remove("KILN_REGISTRY_USER")
            .env_remove("KILN_REGISTRY_PASSWORD");
        configure(&mut cmd);
        cmd.output().unwrap()
    };

    // Anonymous: refused, and the error says so.
    let out = push(&|_| {});
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&image) && err.contains("401"),
        "anonymous push: {err}"
    );

    // Wrong password: refused, the password is not in the message.
    let out = push(&|c| {
        c.env("KILN_REGISTRY_USER", "builder")
            .env("KILN_REGISTRY_PASSWORD", "wrong-Pa55");
    });
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("401") && err.contains(&reg.addr), "{err}");
    no_secret("wrong-Pa55", &out, "wrong password");

    // Right password from the environment.
    let out = push(&|c| {
        c.env("KILN_REGISTRY_USER", "builder")
            .env("KILN_REGISTRY_PASSWORD", password);
    });
    no_secret(password, &out, "env credentials");
    let digest = ok(out, "push with env credentials");

    // Right password from a docker config.json `auths` entry.
    let docker = tmp.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64(format!("builder:{password}").as_bytes(), false);
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let out = push(&|c| {
        c.env("DOCKER_CONFIG", &docker);
    });
    no_secret(password, &out, "docker config");
    assert_eq!(ok(out, "push with docker config"), digest);

    // From a credential helper named in `credHelpers` (docker-credential-<name> on PATH,
    // speaking the helper protocol: the server on stdin, JSON on stdout).
    let helpers = tmp.path().join("helpers");
    std::fs::create_dir_all(&helpers).unwrap();
    let helper = helpers.join("docker-credential-kilntest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" > {}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"builder\",\"Secret\":\"{password}\"}}' \"$server\"\n",
            helpers.join("asked").display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", helper.to_str().unwrap()])
        .status()
        .unwrap();
    let docker_helper = tmp.path().join("docker-helper");
    std::fs::create_dir_all(&docker_helper).unwrap();
    std::fs::write(
        docker_helper.join("config.json"),
        format!(r#"{{"credHelpers":{{"{}":"kilntest"}}}}"#, reg.addr),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        helpers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = push(&|c| {
        c.env("DOCKER_CONFIG", &docker_helper).env("PATH", &path);
    });
    no_secret(password, &out, "credential helper");
    assert_eq!(ok(out, "push with a credential helper"), digest);
    assert_eq!(
        std::fs::read_to_string(helpers.join("asked"))
            .unwrap()
            .trim(),
        reg.addr
    );

    // skopeo with the same credentials reads it back and the image runs.
    let bundle = pull_and_unpack(&image, Some(&format!("builder:{password}")), tmp.path());
    let app = run(&bundle);
    assert_eq!(http(&app, "GET", "/hello", None).0, 200);
    // Neither the image (unpacked) nor kiln's cache (layers, gzipped and inflated, base
    // records, key files) carries the password in any encoding.
    common::secrets::assert_absent(password, &[], &[&bundle, &cache]);
}

/// Bearer-token auth (distribution's `auth: token:` with a token server on loopback): a base
/// pushed and pulled, an app built on it and pushed, all with tokens; wrong or missing
/// credentials refused by the token server, named, and never echoed.
#[test]
fn bearer_token_auth_pushes_pulls_and_refuses_wrong_credentials() {
    let password = "T0ken-Pa55word";
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let tokens = common::token::TokenServer::start("builder", password);
    let reg = TestRegistry::start_with_tokens(&tokens);
    let creds = [
        ("KILN_REGISTRY_USER", "builder"),
        ("KILN_REGISTRY_PASSWORD", password),
    ];
    let base = push_host_base(&reg.addr, &npm, &creds);
    let image = format!("{}/apps/bearer:v1", reg.addr);
    let fixture = root().join("fixtures/faas-hello");
    let cache = tmp.path().join("cache");
    let build = |env: &[(&str, &str)]| {
        let mut cmd = kiln_cmd(&cache, &npm);
        cmd.args(["build", fixture.to_str().unwrap(), "--image", &image])
            .args(["--base", &base, "--insecure-registry", &reg.addr])
            .env("DOCKER_CONFIG", tmp.path().join("no-docker-config"))
            .env_remove("KILN_REGISTRY_USER")
            .env_remove("KILN_REGISTRY_PASSWORD");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };

    // No credentials: the registry's 401 and the image are named.
    let out = build(&[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&base) && err.contains("401"),
        "anonymous: {err}"
    );

    // Wrong password: refused by the token server, the password not echoed.
    let out = build(&[
        ("KILN_REGISTRY_USER", "builder"),
        ("KILN_REGISTRY_PASSWORD", "wrong-T0ken"),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&base) && err.contains("401"),
        "wrong password: {err}"
    );
    assert!(
        err.contains("token server refused") && err.contains("wrong user name or password"),
        "the token server's answer is not shown: {err}"
    );
    no_secret("wrong-T0ken", &out, "wrong password");

    // Right password: the base is pulled and the app pushed with tokens.
    let out = build(&creds);
    no_secret(password, &out, "bearer tokens");
    let digest = ok(out, "build with bearer tokens");
    let answered = tokens.answered.lock().unwrap().clone();
    let granted = |scope: &str| {
        answered
            .iter()
            .any(|(s, status)| *status == 200 && s.contains(scope))
    };
    assert!(granted("repository:base/node:pull"), "{answered:?}");
    assert!(granted("repository:apps/bearer:pull,push"), "{answered:?}");
    assert!(
        answered.iter().any(|(_, status)| *status == 401),
        "{answered:?}"
    );
    // The base layers were mounted from base/node with a token granting both repositories,
    // not uploaded again.
    assert!(
        granted("repository:apps/bearer:pull,push repository:base/node:pull"),
        "{answered:?}"
    );
    let log = reg.log();
    let mounted =
        TestRegistry::requests(&log, "POST", "/v2/apps/bearer/blobs/uploads/?", Some(201));
    let base_layers =
        skopeo_inspect_as(&base, false, Some(&format!("builder:{password}")))["Layers"]
            .as_array()
            .unwrap()
            .len();
    assert_eq!(mounted, base_layers, "mounts into apps/bearer:\n{log}");

    // skopeo, with the same credentials, pulls it back through the same tokens; it runs.
    let pulled = format!("{}@{digest}", image.trim_end_matches(":v1"));
    let bundle = pull_and_unpack(&pulled, Some(&format!("builder:{password}")), tmp.path());
    let app = run(&bundle);
    assert_eq!(http(&app, "GET", "/hello", None).0, 200);
    drop(app);
    common::secrets::assert_absent(password, &[], &[&bundle, &cache]);
}

#[test]
fn push_survives_dropped_connections_and_a_registry_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let mut reg = TestRegistry::start();
    let proxy = Proxy::start(&reg.addr);
    let base = push_host_base(&proxy.addr, &npm, &[]);

    // The next connections are cut mid-request: kiln retries and the push completes.
    proxy.drop_next(3);
    let image = format!("{}/apps/flaky:v1", proxy.addr);
    let mut cmd = kiln_cmd(
        &std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-cache"),
        &npm,
    );
    let fixture = root().join("fixtures/faas-deps");
    let out = cmd
        .args(["build", fixture.to_str().unwrap(), "--base", &base])
        .args(["--image", &image, "--insecure-registry", &proxy.addr])
        .env("KILN_REGISTRY_BACKOFF_MS", "20")
        .output()
        .unwrap();
    let err = stderr(&out);
    let digest = ok(out, "push through a flaky proxy");
    assert_eq!(proxy.dropped(), 3);
    assert!(err.contains("retrying"), "{err}");
    assert_eq!(skopeo_inspect(&image, false)["Digest"], digest.as_str());

    // The registry is down when the push starts and comes back a moment later.
    reg.down();
    let image = format!("{}/apps/restarted:v1", proxy.addr);
    let mut cmd = kiln_cmd(
        &std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-cache"),
        &npm,
    );
    let fixture = root().join("fixtures/faas-hello");
    let child = cmd
        .args(["build", fixture.to_str().unwrap(), "--base", &base])
        .args(["--image", &image, "--insecure-registry", &proxy.addr])
        .env("KILN_REGISTRY_BACKOFF_MS", "100")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    reg.up();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    let digest = ok(out, "push across a registry restart");
    assert!(err.contains("retrying"), "{err}");
    assert_eq!(skopeo_inspect(&image, false)["Digest"], digest.as_str());
    let app = run(&pull_and_unpack(&image, None, tmp.path()));
    assert_eq!(http(&app, "GET", "/hello", None).0, 200);
}

/// Runs `curl` with `args`; returns stdout.
fn curl(args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-f"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn docker_v2s2_and_oci_index_bases_work_and_platforms_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let reg = TestRegistry::start();
    let layout = tmp.path().join("base");
    ok(
        kiln(
            &["base", "from-host", "--layout", layout.to_str().unwrap()],
            &npm,
        ),
        "base from-host --layout",
    );
    let copy = |format: &str, dest: &str| {
        let out = std::process::Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--format", format])
            .arg(format!("oci:{}:node", layout.display()))
            .arg(format!("docker://{dest}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
    };

    // A Docker v2 schema 2 base.
    let docker_base = format!("{}/base/docker:20", reg.addr);
    copy("v2s2", &docker_base);
    assert_eq!(
        skopeo_inspect(&docker_base, true)["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let image = format!("{}/apps/on-docker:v1", reg.addr);
    ok(
        build_push("faas-hello", &docker_base, &image, &reg.addr, &npm),
        "build on a v2s2 base",
    );
    let raw = skopeo_inspect(&image, true);
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    for layer in raw["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
            "{raw}"
        );
    }
    let app = run(&pull_and_unpack(&image, None, &tmp.path().join("docker")));
    assert_eq!(http(&app, "GET", "/hello", None).0, 200);
    drop(app);

    // An OCI index with an arm64 and an amd64 entry (both point at the amd64 manifest).
    let single = format!("{}/base/multi:single", reg.addr);
    copy("oci", &single);
    let manifest = curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{}/v2/base/multi/manifests/single", reg.addr),
    ]);
    let digest = skopeo_inspect(&single, false)["Digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let entry = |arch: &str| {
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
            manifest.len()
        )
    };
    let put_index = |tag: &str, entries: &[String]| {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
            entries.join(",")
        );
        curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.index.v1+json",
            "--data-binary",
            &index,
            &format!("http://{}/v2/base/multi/manifests/{tag}", reg.addr),
        ]);
        format!("{}/base/multi:{tag}", reg.addr)
    };
    let both = put_index("both", &[entry("arm64"), entry("amd64")]);
    let image = format!("{}/apps/on-index:v1", reg.addr);
    ok(
        build_push("faas-hello", &both, &image, &reg.addr, &npm),
        "build on an index base",
    );
    let app = run(&pull_and_unpack(&image, None, &tmp.path().join("index")));
    assert_eq!(http(&app, "GET", "/hello", None).0, 200);
    drop(app);

    // --platform picks the arm64 entry, whose config says amd64: refused.
    let dir = root().join("fixtures/faas-hello");
    let out = kiln(
        &[
            "build",
            dir.to_str().unwrap(),
            "--base",
            &both,
            "--platform",
            "linux/arm64",
            "--layout",
            tmp.path().join("x").to_str().unwrap(),
            "--insecure-registry",
            &reg.addr,
        ],
        &npm,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&both) && err.contains("linux/amd64, not linux/arm64"),
        "{err}"
    );

    // An index without linux/amd64.
    let arm_only = put_index("arm", &[entry("arm64")]);
    let out = build_push(
        "faas-hello",
        &arm_only,
        &format!("{}/apps/none:v1", reg.addr),
        &reg.addr,
        &npm,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&arm_only) && err.contains("no linux/amd64 entry (it has: linux/arm64)"),
        "{err}"
    );
}

/// A server on loopback that answers every connection with `answer`; returns its address.
fn fake_server(answer: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 8192];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(answer);
        }
    });
    addr
}

/// `kiln build fixtures/faas-hello --image <image>` to the plain-HTTP `registry`.
fn push_faas_hello(image: &str, registry: &str, npm: &Path) -> Output {
    let fixture = root().join("fixtures/faas-hello");
    kiln(
        &[
            "build",
            fixture.to_str().unwrap(),
            "--image",
            image,
            "--insecure-registry",
            registry,
        ],
        npm,
    )
}

/// A registry that has every blob and answers manifest PUTs with 400 `code` (the first
/// `rejections` of them; 201 after); returns its address and the number of manifest PUTs.
fn registry_rejecting_manifests(
    code: &'static str,
    rejections: usize,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let puts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = puts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let _ = reader
                .by_ref()
                .take(length as u64)
                .read_to_end(&mut Vec::new());
            let rejected = format!(
                r#"{{"errors":[{{"code":"{code}","message":"refused","detail":"rejected by test"}}]}}"#
            );
            let mut location = String::new();
            let (status, body) = if request.starts_with("PUT ") && request.contains("/manifests/") {
                if counter.fetch_add(1, Ordering::SeqCst) < rejections {
                    ("400 Bad Request", rejected)
                } else {
                    let path = request.split(' ').nth(1).unwrap_or("/");
                    location = format!("location: {path}\r\n");
                    ("201 Created", String::new())
                }
            } else if request.starts_with("GET /v2/ ") || request.starts_with("HEAD ") {
                ("200 OK", String::new())
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{location}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, puts)
}

#[test]
fn a_manifest_the_registry_rejects_is_a_clear_error_not_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let (rejecting, puts) = registry_rejecting_manifests("MANIFEST_INVALID", usize::MAX);
    let image = format!("{rejecting}/apps/rejected:v1");
    let out = push_faas_hello(&image, &rejecting, &npm);
    assert!(!out.status.success());
    let err = stderr(&out);
    for part in [image.as_str(), "push manifest", "400", "MANIFEST_INVALID"] {
        assert!(err.contains(part), "expected {part:?} in:\n{err}");
    }
    assert_eq!(
        puts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a rejected manifest was sent again"
    );
}

/// A registry that lost a blob it had confirmed (a storage race between two pushes of one
/// blob) refuses the manifest with MANIFEST_BLOB_UNKNOWN: the push checks the blobs again
/// and sends the manifest again.
#[test]
fn a_manifest_refused_for_an_unknown_blob_is_pushed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let (registry, puts) = registry_rejecting_manifests("MANIFEST_BLOB_UNKNOWN", 1);
    let out = push_faas_hello(&format!("{registry}/apps/racy:v1"), &registry, &npm);
    ok(out, "push after a blob-unknown refusal");
    assert_eq!(puts.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Refused every time: a clear error after three rounds.
    let (registry, puts) = registry_rejecting_manifests("MANIFEST_BLOB_UNKNOWN", usize::MAX);
    let image = format!("{registry}/apps/racy:v1");
    let out = push_faas_hello(&image, &registry, &npm);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&image) && err.contains("MANIFEST_BLOB_UNKNOWN"),
        "{err}"
    );
    assert_eq!(puts.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn bad_references_and_registries_fail_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let reg = TestRegistry::start();
    let garbage = fake_server(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world");
    let busy = fake_server(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy",
    );
    let dir = root().join("fixtures/faas-hello");
    let insecure = format!("{},{garbage},{busy}", reg.addr);
    let layout = tmp.path().join("out");
    let attempt = |base: &str, image: Option<&str>| {
        let mut cmd = kiln_cmd(
            &std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-cache"),
            &npm,
        );
        cmd.args(["build", dir.to_str().unwrap(), "--base", base])
            .args(["--layout", layout.to_str().unwrap()])
            .args(["--insecure-registry", &insecure])
            .env("KILN_REGISTRY_RETRIES", "3")
            .env("KILN_REGISTRY_BACKOFF_MS", "10");
        if let Some(image) = image {
            cmd.args(["--image", image]);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{base} should fail");
        stderr(&out)
    };
    let cases = [
        (
            "127.0.0.1:1/Bad Name:x".to_owned(),
            vec!["127.0.0.1:1/Bad Name:x", "invalid reference"],
        ),
        (
            "no-such-host.invalid/base/node:20".to_owned(),
            vec!["no-such-host.invalid/base/node:20", "unknown host"],
        ),
        (
            format!("{}/base/missing:20", reg.addr),
            vec!["base/missing:20", "MANIFEST_UNKNOWN"],
        ),
        (
            format!("{garbage}/base/node:20"),
            vec!["not JSON", "hello world"],
        ),
        (
            format!("{busy}/base/node:20"),
            vec!["HTTP 503", "busy", "after 3 attempts"],
        ),
        // The plain-HTTP registry under a name not in --insecure-registry: TLS to HTTP.
        (
            format!(
                "{}/base/node:20",
                reg.addr.replace("127.0.0.1", "localhost")
            ),
            vec!["TLS handshake failed", "--insecure-registry"],
        ),
    ];
    for (base, expected) in cases {
        let err = attempt(&base, None);
        for part in expected {
            assert!(err.contains(part), "{base}: expected {part:?} in:\n{err}");
        }
        if base.starts_with("localhost") {
            assert!(
                !err.contains("attempts"),
                "a TLS failure was retried: {err}"
            );
        }
    }
    assert!(!layout.exists(), "a failed build wrote a layout");
    // A bad target reference is refused before anything is built.
    let out = kiln(
        &[
            "build",
            dir.to_str().unwrap(),
            "--image",
            "127.0.0.1:5000/UPPER/case",
        ],
        &npm,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("127.0.0.1:5000/UPPER/case") && err.contains("invalid reference"),
        "{err}"
    );
    assert!(
        !err.contains("app layer"),
        "built before checking --image: {err}"
    );
}
