//! Warm pushes against a real registry (Debian's docker-registry on loopback). A code-only
//! rebuild pushed to a repository kiln pushed to before asks about no blob (no HEAD) and sends
//! each new blob at once, counted in the registry's access log, with and without htpasswd
//! auth; a blob the registry lost (garbage-collected) is noticed on the manifest PUT and
//! pushed again, and skopeo pulls the image back whole.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::registry::TestRegistry;
use common::*;

/// A copy of faas-hello whose `version` function answers `version` (rewritten in place).
fn set_version(tmp: &Path, name: &str, version: &str) -> std::path::PathBuf {
    let dir = tmp.join(name);
    if !dir.exists() {
        return faas_variant(tmp, name, "version", "version", version);
    }
    std::fs::write(
        dir.join("functions/version.js"),
        format!("module.exports = async () => ({{ version: {version:?} }});\n"),
    )
    .unwrap();
    dir
}

/// Pushes a faas app to `repository` of `reg`, changes its code, pushes it again and checks
/// what the second push asked of the registry: the auth probe (`GET /v2/`), the base tag, one
/// POST per new blob (the config and the app layer; distribution answers a POST with a body
/// with 202, and the bytes then go by PUT to the upload it opened) and the manifest. No HEAD:
/// every other blob was pushed there before.
fn check_warm_push(reg: &TestRegistry, repository: &str, env: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let base = push_host_base(&reg.addr, &npm, env);
    let image = |tag: &str| format!("{}/{repository}:{tag}", reg.addr);
    let app = set_version(tmp.path(), "app", "v1");
    pushed_digest(
        &push_dir(&app, &base, &image("v1"), &npm, env),
        "first push",
    );

    set_version(tmp.path(), "app", "v2");
    let before = reg.log().len();
    let out = push_dir(&app, &base, &image("v2"), &npm, env);
    let pushed = pushed_digest(&out, "code-only push");
    let log = reg.log()[before..].to_owned();
    let expected = BTreeMap::from([("GET".into(), 2), ("POST".into(), 2), ("PUT".into(), 3)]);
    assert_eq!(TestRegistry::by_method(&log), expected, "{log}");
    let single_posts = TestRegistry::requests(&log, "POST", "/blobs/uploads/?digest=sha256", None);
    assert_eq!(single_posts, 2, "{log}");
    assert_eq!(TestRegistry::uploaded_digests(&log).len(), 2, "{log}");
    assert_eq!(
        TestRegistry::requests(&log, "PUT", "/manifests/v2", Some(201)),
        1,
        "{log}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0 mounted, 2 uploaded"), "{err}");
    let creds = env
        .iter()
        .find(|(k, _)| *k == "KILN_REGISTRY_USER")
        .map(|(_, user)| format!("{user}:{}", env_value(env, "KILN_REGISTRY_PASSWORD")));
    let inspected = skopeo_inspect_as(&image("v2"), false, creds.as_deref());
    assert_eq!(inspected["Digest"], pushed.as_str());
}

fn env_value<'a>(env: &[(&str, &'a str)], name: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| *v)
        .unwrap()
}

#[test]
fn a_code_only_push_checks_no_blob_and_sends_new_ones_at_once() {
    check_warm_push(&TestRegistry::start(), "apps/warm", &[]);
}

#[test]
fn a_code_only_push_with_htpasswd_auth_makes_as_few_requests() {
    let (user, password) = ("builder", "warm-Pa55");
    let reg = TestRegistry::start_with_auth(user, password);
    let env = [
        ("KILN_REGISTRY_USER", user),
        ("KILN_REGISTRY_PASSWORD", password),
    ];
    check_warm_push(&reg, "apps/warm-auth", &env);
}

/// A registry that garbage-collected blobs kiln pushed before refuses the manifest that names
/// them; kiln then checks every blob, pushes the missing ones and the manifest again, and the
/// image pulls back whole with its digest.
#[test]
fn blobs_the_registry_collected_are_pushed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let npm = npm_cache(tmp.path());
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let app = set_version(tmp.path(), "app", "collected");
    let first = format!("{}/apps/gc:v1", reg.addr);
    let built = pushed_digest(&push_dir(&app, &base, &first, &npm, &[]), "first push");
    let raw = skopeo_inspect(&first, true);
    let app_layer = raw["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = raw["config"]["digest"].as_str().unwrap().to_owned();
    reg.collect_blob("apps/gc", &app_layer);
    reg.collect_blob("apps/gc", &config);

    let before = reg.log().len();
    let again = format!("{}/apps/gc:v2", reg.addr);
    let pushed = pushed_digest(&push_dir(&app, &base, &again, &npm, &[]), "push after GC");
    let log = reg.log()[before..].to_owned();
    assert_eq!(pushed, built, "the same source builds the same image");
    assert_eq!(
        TestRegistry::requests(&log, "PUT", "/manifests/v2", Some(400)),
        1,
        "the manifest naming collected blobs is refused once:\n{log}"
    );
    assert_eq!(
        TestRegistry::requests(&log, "PUT", "/manifests/v2", Some(201)),
        1,
        "{log}"
    );
    let mut uploaded = TestRegistry::uploaded_digests(&log);
    uploaded.sort();
    let mut collected = vec![app_layer, config];
    collected.sort();
    assert_eq!(uploaded, collected, "{log}");
    assert!(
        TestRegistry::requests(&log, "HEAD", "/blobs/sha256:", None) >= 2,
        "every blob is checked after the refusal:\n{log}"
    );
    assert_eq!(skopeo_inspect(&again, false)["Digest"], built.as_str());
    // skopeo copies every blob, checking each digest; the layout validates and unpacks.
    pull_and_unpack(&again, None, &tmp.path().join("pulled"));
}
