//! Rebase against real servers: apps built on runtime base v1 move to v2 (a new stack layer)
//! by manifest and config only; the rebased images are pulled, unpacked, run and called; no
//! app-layer byte is uploaded; forged or mismatched bases are refused.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::nats::TestNats;
use common::registry::TestRegistry;
use common::*;
use kiln_layers::oci::History;
use kiln_layers::{BlobStore, Entry, ImageConfig, ImageManifest, LayerBuilder};
use serde_json::Value;

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Base v1 (the host base) and v2 (v1 plus a stack layer `/etc/kiln-stack`), each with a faas
/// runtime base; returns (base v1, runtime base v1, runtime base v2).
fn stacks(reg: &TestRegistry, tmp: &Path, npm: &Path) -> (String, String, String) {
    let layout = tmp.join("bases");
    let l = layout.to_str().unwrap();
    ok(
        kiln(&["base", "from-host", "--layout", l], npm),
        "base layout",
    );
    let store = BlobStore::open(&layout).unwrap();
    let v1 = store.resolve("node").unwrap();
    let manifest: ImageManifest =
        serde_json::from_slice(&store.read_blob(&v1.digest).unwrap()).unwrap();
    let mut config: ImageConfig =
        serde_json::from_slice(&store.read_blob(&manifest.config.digest).unwrap()).unwrap();
    let mut stack = LayerBuilder::new(0);
    stack
        .add("etc", Entry::dir())
        .add("etc/kiln-stack", Entry::bytes(&b"v2\n"[..]));
    let layer = stack.write_to(&store).unwrap();
    config.rootfs.diff_ids.push(layer.diff_id.clone());
    config.history.push(History {
        created_by: Some("stack v2".into()),
        ..History::default()
    });
    let mut layers = manifest.layers.clone();
    layers.push(layer.descriptor.clone());
    let (v2, _) = store
        .write_image(&config, layers, Default::default())
        .unwrap();
    store.tag("node-v2", &v2).unwrap();

    let push = |tag: &str, dest: &str| {
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{l}:{tag}"))
            .arg(format!("docker://{dest}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let base1 = format!("{}/base/node:20", reg.addr);
    let base2 = format!("{}/base/node:20-v2", reg.addr);
    push("node", &base1);
    push("node-v2", &base2);
    let mut runtime_bases = Vec::new();
    for (base, tag) in [(&base1, "v1"), (&base2, "v2")] {
        let to = format!("{}/kiln/runtime-faas:{tag}", reg.addr);
        ok(
            kiln(
                &[
                    "runtime",
                    "publish",
                    "faas",
                    "--base",
                    base,
                    "--to",
                    &to,
                    "--insecure-registry",
                    &reg.addr,
                ],
                npm,
            ),
            "runtime publish",
        );
        runtime_bases.push(to);
    }
    let v2 = runtime_bases.pop().unwrap();
    (base1, runtime_bases.pop().unwrap(), v2)
}

fn submit(
    nats: &TestNats,
    dir: &Path,
    app: &str,
    base: Option<&str>,
    npm: &Path,
    tmp: &Path,
) -> Value {
    let mut cmd = kiln_cmd(&tmp.join("submit-cache"), npm);
    cmd.args(["submit", dir.to_str().unwrap(), "--app", app])
        .args(["--nats", &nats.url, "--wait", "--json"]);
    if let Some(base) = base {
        cmd.args(["--base", base]);
    }
    serde_json::from_str(&ok(cmd.output().unwrap(), "submit")).unwrap()
}

fn layer_digests(revision: &Value, kinds: &[&str]) -> Vec<String> {
    revision["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| kinds.contains(&l["kind"].as_str().unwrap()))
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn rebase_moves_apps_to_a_new_runtime_base_without_touching_app_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let (base1, rt1, rt2) = stacks(&reg, tmp.path(), &npm);
    let worker = |name: &str| {
        kiln_cmd(&tmp.path().join(name), &npm)
            .args(["worker", "--nats", &nats.url, "--registry", &reg.addr])
            .args(["--insecure-registry", &reg.addr, "--base", &rt1])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut workers = vec![worker("w1"), worker("w2")];

    let mut old = Vec::new();
    for app in ["a1", "a2", "a3"] {
        old.push(submit(
            &nats,
            &faas_variant(tmp.path(), app, "who", "app", app),
            app,
            None,
            &npm,
            tmp.path(),
        ));
    }
    let sma = submit(
        &nats,
        &root().join("fixtures/sma-todo"),
        "todo",
        Some(&base1),
        &npm,
        tmp.path(),
    );
    assert_eq!(sma["runtime"], "sma");

    // One app, directly: a new revision, no layer bytes uploaded (only the new config).
    let before = reg.log().len();
    let out = kiln_cmd(&shared_cache(), &npm)
        .args(["rebase", "a1", "--runtime-base", &rt2, "--json"])
        .args(["--nats", &nats.url, "--insecure-registry", &reg.addr])
        .output()
        .unwrap();
    let rebased: Value = serde_json::from_str(&ok(out, "rebase a1")).unwrap();
    let log = reg.log()[before..].to_owned();
    assert_eq!(rebased["name"], "a1-00002");
    assert_eq!(rebased["runtime"], "faas");
    assert_eq!(
        TestRegistry::requests(&log, "PUT", "/blobs/uploads/", Some(201)),
        1,
        "more than the config was uploaded:\n{log}"
    );
    assert_eq!(
        layer_digests(&rebased, &["app", "deps"]),
        layer_digests(&old[0], &["app", "deps"])
    );
    assert_ne!(rebased["digest"], old[0]["digest"]);
    let v2_layers = skopeo_inspect(&rt2, false)["Layers"].clone();
    let new_layers = skopeo_inspect(rebased["image"].as_str().unwrap(), false)["Layers"].clone();
    let v2_layers = v2_layers.as_array().unwrap();
    assert_eq!(
        &new_layers.as_array().unwrap()[..v2_layers.len()],
        &v2_layers[..]
    );
    let bundle = pull_and_unpack(
        rebased["image"].as_str().unwrap(),
        None,
        &tmp.path().join("a1"),
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/etc/kiln-stack")).unwrap(),
        "v2\n"
    );
    let app = run(&bundle);
    let (status, body) = http(&app, "GET", "/who", None);
    assert!(status == 200 && body.contains("a1"), "{status} {body}");
    drop(app);

    // Every faas app through the queue; the sma app is left alone.
    let out = kiln_cmd(&shared_cache(), &npm)
        .args(["rebase", "--runtime", "faas", "--to", &rt2, "--json"])
        .args(["--nats", &nats.url, "--insecure-registry", &reg.addr])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    let all: Vec<Value> = serde_json::from_str(&ok(out, "rebase --runtime")).unwrap();
    assert!(
        summary.contains("1 apps already on") && summary.contains("a1-00002"),
        "{summary}"
    );
    assert!(summary.contains("rebased 2 of 2 apps on faas"), "{summary}");
    let mut names: Vec<&str> = all.iter().map(|r| r["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a2-00002", "a3-00002"]);
    let a3 = all.iter().find(|r| r["app"] == "a3").unwrap();
    let app = run(&pull_and_unpack(
        a3["image"].as_str().unwrap(),
        None,
        &tmp.path().join("a3"),
    ));
    let (status, body) = http(&app, "GET", "/who", None);
    assert!(status == 200 && body.contains("a3"), "{status} {body}");
    drop(app);
    let todo = ok(
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["revisions", "todo", "--json", "--nats", &nats.url])
            .output()
            .unwrap(),
        "revisions todo",
    );
    let todo: Value = serde_json::from_str(&todo).unwrap();
    assert_eq!(todo["revisions"].as_array().unwrap().len(), 1);

    // Refusals: an sma app onto the faas runtime base; an image that lies about its base.
    let out = kiln_cmd(&shared_cache(), &npm)
        .args(["rebase", "todo", "--runtime-base", &rt2])
        .args(["--nats", &nats.url, "--insecure-registry", &reg.addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runs on runtime sma") && err.contains("runtime base of faas"),
        "{err}"
    );

    let a2 = all.iter().find(|r| r["app"] == "a2").unwrap();
    let image = a2["image"].as_str().unwrap();
    let (repo, _) = image.split_once('@').unwrap();
    let path = repo.split_once('/').unwrap().1;
    let raw = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!(
            "http://{}/v2/{path}/manifests/{}",
            reg.addr,
            a2["digest"].as_str().unwrap()
        ))
        .output()
        .unwrap();
    let mut forged: Value = serde_json::from_slice(&raw.stdout).unwrap();
    let rt1_digest = skopeo_inspect(&rt1, false)["Digest"].clone();
    forged["annotations"]["org.opencontainers.image.base.name"] = Value::String(rt1.clone());
    forged["annotations"]["org.opencontainers.image.base.digest"] = rt1_digest;
    let put = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg("--data-binary")
        .arg(serde_json::to_string(&forged).unwrap())
        .arg(format!("http://{}/v2/{path}/manifests/forged", reg.addr))
        .status()
        .unwrap();
    assert!(put.success());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let registry = kiln_builder::registry::Registry::new(kiln_builder::registry::RegistryOptions {
        insecure: vec![reg.addr.clone()],
        ..Default::default()
    });
    let store = BlobStore::open_or_create(tmp.path().join("forge-cache")).unwrap();
    let err = rt
        .block_on(kiln_builder::rebase::rebase(
            &registry,
            &format!("{repo}:forged"),
            &rt2,
            &kiln_builder::pull::host_platform(),
            &store,
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("was not built on the base it claims"), "{err}");

    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}
