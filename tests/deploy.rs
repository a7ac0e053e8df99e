//! Revisions to deployment: revisions built by a real worker, traffic operations through the
//! `kiln` binary, every rendered Knative Service validated against the Knative Service CRD
//! schema (strict: unknown fields are errors).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::nats::TestNats;
use common::registry::TestRegistry;
use common::*;
use serde_json::{Value, json};

/// The CRD's OpenAPI v3 schema as JSON Schema: `x-kubernetes-*` dropped, and objects with
/// listed properties closed to others (as `kubectl --validate=strict` does).
fn service_schema() -> Value {
    let crd: Value = yaml_serde::from_str(
        &std::fs::read_to_string(root().join("fixtures/schemas/knative-serving-service-crd.yaml"))
            .unwrap(),
    )
    .unwrap();
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    fn strict(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.retain(|k, _| !k.starts_with("x-kubernetes-"));
                if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                    map.insert("additionalProperties".into(), Value::Bool(false));
                }
                map.values_mut().for_each(strict);
            }
            Value::Array(items) => items.iter_mut().for_each(strict),
            _ => {}
        }
    }
    strict(&mut schema);
    schema
}

fn assert_valid_service(yaml: &str) -> Value {
    let service: Value = yaml_serde::from_str(yaml).unwrap();
    let validator = jsonschema::validator_for(&service_schema()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&service)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "invalid Service:\n{}\n{yaml}",
        errors.join("\n")
    );
    assert_eq!(service["apiVersion"], "serving.knative.dev/v1");
    assert_eq!(service["kind"], "Service");
    service
}

fn kiln_nats(nats: &TestNats, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .args(["--nats", &nats.url])
        .output()
        .unwrap()
}

fn ok_yaml(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn traffic(service: &Value) -> Vec<(String, u64, String)> {
    service["spec"]["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["latestRevision"], false);
            (
                t["revisionName"].as_str().unwrap().to_owned(),
                t["percent"].as_u64().unwrap(),
                t["tag"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Builds three revisions of app `hello` through a real worker; returns their images.
fn three_revisions(nats: &TestNats, reg: &TestRegistry, tmp: &Path, npm: &Path) -> Vec<String> {
    let base = push_host_base(&reg.addr, npm, &[]);
    let mut worker = kiln_cmd(&tmp.join("worker-cache"), npm);
    worker
        .args(["worker", "--nats", &nats.url, "--registry", &reg.addr])
        .args(["--insecure-registry", &reg.addr, "--base", &base])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut worker = worker.spawn().unwrap();
    let mut images = Vec::new();
    for i in 1..=3 {
        let dir = faas_variant(tmp, &format!("v{i}"), "version", "version", &i.to_string());
        let out = kiln_cmd(&tmp.join("submit-cache"), npm)
            .args(["submit", dir.to_str().unwrap(), "--app", "hello"])
            .args(["--nats", &nats.url, "--wait", "--json"])
            .args([
                "--concurrency",
                "50",
                "--max-scale",
                "5",
                "--memory",
                "256Mi",
            ])
            .args(["--env", &format!("BUILD={i}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["name"], format!("hello-0000{i}"));
        images.push(r["image"].as_str().unwrap().to_owned());
    }
    let _ = worker.kill();
    let _ = worker.wait();
    images
}

#[test]
fn deploy_canary_promote_and_rollback_render_valid_services() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let images = three_revisions(&nats, &reg, tmp.path(), &npm);

    // Deploy revision 1: all traffic, template pinned by digest with the job's settings.
    let service = assert_valid_service(&ok_yaml(kiln_nats(
        &nats,
        &["deploy", "hello", "--revision", "hello-00001"],
    )));
    assert_eq!(
        traffic(&service),
        [("hello-00001".into(), 100, "current".into())]
    );
    let template = &service["spec"]["template"];
    assert_eq!(template["metadata"]["name"], "hello-00001");
    let container = &template["spec"]["containers"][0];
    assert_eq!(container["image"], images[0].as_str());
    assert!(images[0].contains("@sha256:"));
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(container["env"], json!([{"name": "BUILD", "value": "1"}]));
    assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(template["spec"]["containerConcurrency"], 50);
    assert_eq!(
        template["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"],
        "5"
    );
    assert_eq!(service["metadata"]["labels"]["kiln.dev/runtime"], "faas");

    // Deploy 2, then a canary of 3 at 10 %.
    ok_yaml(kiln_nats(
        &nats,
        &["deploy", "hello", "--revision", "hello-00002"],
    ));
    let out = tmp.path().join("canary.yaml");
    let printed = ok_yaml(kiln_nats(
        &nats,
        &[
            "deploy",
            "hello",
            "--canary",
            "hello-00003=10",
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert!(printed.is_empty(), "--out still printed the Service");
    let service = assert_valid_service(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(
        traffic(&service),
        [
            ("hello-00002".into(), 90, "current".into()),
            ("hello-00003".into(), 10, "candidate".into())
        ]
    );
    assert_eq!(
        service["spec"]["template"]["metadata"]["name"],
        "hello-00003"
    );

    // Promote: all to 3. Rollback: back to 2, then to 1.
    let service = assert_valid_service(&ok_yaml(kiln_nats(
        &nats,
        &["deploy", "hello", "--promote"],
    )));
    assert_eq!(
        traffic(&service),
        [("hello-00003".into(), 100, "current".into())]
    );
    let service = assert_valid_service(&ok_yaml(kiln_nats(&nats, &["rollback", "hello"])));
    assert_eq!(
        traffic(&service),
        [("hello-00002".into(), 100, "current".into())]
    );
    assert_eq!(
        service["spec"]["template"]["spec"]["containers"][0]["image"],
        images[1].as_str()
    );
    let service = assert_valid_service(&ok_yaml(kiln_nats(&nats, &["rollback", "hello"])));
    assert_eq!(
        traffic(&service),
        [("hello-00001".into(), 100, "current".into())]
    );
    let out = kiln_nats(&nats, &["rollback", "hello"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no earlier deployed revision"));

    // A rollback while a canary is in flight aborts the canary: the revision it was split
    // from gets all traffic.
    ok_yaml(kiln_nats(
        &nats,
        &["deploy", "hello", "--canary", "hello-00002=10"],
    ));
    let service = assert_valid_service(&ok_yaml(kiln_nats(&nats, &["rollback", "hello"])));
    assert_eq!(
        traffic(&service),
        [("hello-00001".into(), 100, "current".into())]
    );

    // The revisions table shows the traffic.
    let table = ok_yaml(kiln_nats(&nats, &["revisions", "hello"]));
    let line = table
        .lines()
        .find(|l| l.starts_with("hello-00001"))
        .unwrap();
    assert!(
        line.contains("100% (current)") && line.contains("faas"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 4, "{table}");

    // Unknown app or revision: clear errors; nothing changes.
    for (args, expected) in [
        (
            vec!["deploy", "nope", "--revision", "nope-00001"],
            "app \"nope\" has no revisions",
        ),
        (
            vec!["deploy", "hello", "--revision", "hello-00009"],
            "has no revision \"hello-00009\" (latest: hello-00003)",
        ),
        (
            vec!["deploy", "hello", "--canary", "hello-00002=150"],
            "percent",
        ),
        (vec!["rollback", "nope"], "nothing deployed"),
    ] {
        let out = kiln_nats(&nats, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }

    // Every operation reached the deployer's subject.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let queue = kiln_queue::Queue::connect(&nats.url).await.unwrap();
        let mut stream = queue.js.get_stream("KILN_REVISIONS").await.unwrap();
        let info = stream.info().await.unwrap();
        // 3 revision records + deploy, deploy, canary, promote, rollback, rollback, canary,
        // rollback.
        assert_eq!(info.state.messages, 11);
    });
}

#[test]
fn the_schema_check_rejects_what_kubernetes_would() {
    let validator = jsonschema::validator_for(&service_schema()).unwrap();
    let good = json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"containers": [{"image": "r/x@sha256:00"}]}}},
    });
    assert!(validator.is_valid(&good));
    let mut unknown = good.clone();
    unknown["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("typo");
    assert!(!validator.is_valid(&unknown), "unknown field accepted");
    let mut wrong_type = good.clone();
    wrong_type["spec"]["traffic"] = json!([{"revisionName": "x-00001", "percent": "ten"}]);
    assert!(!validator.is_valid(&wrong_type), "string percent accepted");
}
