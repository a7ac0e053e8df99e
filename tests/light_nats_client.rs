//! The sma-light runtime's NATS client (`runtimes/sma-light/nats.js`, plain Node) driven by
//! `tests/light/nats-client-check.js`: KV entries and objects written by async-nats read back
//! byte for byte, KV writes and watches, requests nobody answers, framing and keepalive on a
//! fake server, a reconnect after a server restart, token and user/password auth, and TLS.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use common::nats::TestNats;
use common::nats::tls::{self, TestCa};
use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn script() -> PathBuf {
    root().join("tests/light/nats-client-check.js")
}

/// Runs the script with `args` and returns the JSON line it printed.
fn node(args: &[&str]) -> Value {
    let out = Command::new("node")
        .arg(script())
        .args(args)
        .output()
        .expect("node is installed");
    assert!(
        out.status.success(),
        "node {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "node {args:?}: {e} in {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `light` KV bucket on `url`.
async fn light_kv(url: &str) -> kv::Store {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    js.create_key_value(kv::Config {
        bucket: "light".into(),
        history: 5,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Asserts a rejection (`{message, ms}` from the script) came at once and says `words`.
fn assert_rejected(what: &str, rejection: &Value, words: &[&str]) {
    let message = rejection["message"].as_str().unwrap_or_default();
    for word in words {
        assert!(
            message.to_lowercase().contains(&word.to_lowercase()),
            "{what}: {message:?} does not say {word:?}"
        );
    }
    let ms = rejection["ms"].as_u64().unwrap();
    assert!(ms < 2000, "{what}: rejected after {ms} ms, not at once");
}

/// What async-nats writes (KV entries, a deleted key, a big and an empty object) the
/// script reads back exactly; its own KV writes, watch, requests and failover work.
#[test]
fn reads_kv_and_objects_written_by_async_nats() {
    let nats = TestNats::start();
    // ~700 KiB of varied bytes: several 128 KiB chunks.
    let big: Vec<u8> = (0..700 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let rt = tokio_rt();
    let (kv, revision) = rt.block_on(async {
        let kv = light_kv(&nats.url).await;
        let revision = kv.put("pointer", "rev-00001".into()).await.unwrap();
        kv.put("gone", "x".into()).await.unwrap();
        kv.delete("gone").await.unwrap();
        let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
        let store = js
            .create_object_store(object_store::Config {
                bucket: "bundles".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let info = store
            .put("app/bundle-1.tar", &mut big.as_slice())
            .await
            .unwrap();
        assert!(info.chunks > 1, "{} chunks", info.chunks);
        store.put("empty", &mut &b""[..]).await.unwrap();
        (kv, revision)
    });

    // A dead server first: the client moves on to the live one.
    let servers = format!("nats://127.0.0.1:{},{}", free_port(), nats.url);
    let out = node(&[&servers, "check"]);

    assert_eq!(
        out["pointer"],
        json!({ "value": "rev-00001", "revision": revision, "operation": "PUT" })
    );
    assert_eq!(out["gone"]["operation"], "DEL");
    assert_eq!(out["gone"]["value"], "");
    assert_eq!(out["never"], Value::Null);
    assert_eq!(
        out["big"],
        json!({ "size": big.len(), "sha256": sha256_hex(&big) })
    );
    assert_eq!(
        out["empty"],
        json!({ "size": 0, "sha256": sha256_hex(b"") })
    );
    assert_eq!(out["missing"], Value::Null);

    assert_eq!(out["put"]["got"]["value"], "hello");
    assert_eq!(out["put"]["got"]["revision"], out["put"]["seq"]);
    assert_eq!(out["put"]["got"]["operation"], "PUT");
    let read_back = rt.block_on(kv.get("light-set")).unwrap();
    assert_eq!(read_back.as_deref(), Some(&b"hello"[..]));

    assert_eq!(
        out["watch"],
        json!([
            { "key": "watch.a", "value": "w1", "operation": "PUT" },
            { "key": "watch.a", "value": "", "operation": "DEL" },
        ])
    );
    assert_eq!(out["noResponders"]["code"], "NO_RESPONDERS");
    assert_rejected(
        "request without responders",
        &out["noResponders"],
        &["no responders", "light.nobody.here"],
    );
    assert_rejected(
        "kvPut to a missing bucket",
        &out["badPut"],
        &["no_such_bucket"],
    );
    assert_rejected(
        "object with a wrong digest",
        &out["badDigest"],
        &["bad-object", "SHA-256"],
    );
    assert_eq!(
        out["echo"],
        json!({ "data": "000d0aff21", "seen": "yes" }),
        "binary request and reply with headers"
    );

    let unreachable = &out["unreachable"];
    let message = unreachable["message"].as_str().unwrap();
    for server in unreachable["servers"].as_str().unwrap().split(',') {
        let server = server.trim_start_matches("nats://");
        assert!(message.contains(server), "{message:?} names {server}");
    }
    let ms = unreachable["ms"].as_u64().unwrap();
    assert!(
        (450..2000).contains(&ms),
        "gave up after {ms} ms (timeout 500)"
    );
}

/// Frames split byte by byte, several frames and a PING in one chunk, binary payloads, a
/// header status, the client's HPUB, and a reconnect when the server stops answering PINGs.
#[test]
fn frames_and_keepalive_on_a_fake_server() {
    let out = node(&["-", "frames"]);
    assert_eq!(
        out,
        json!({
            "order": ["frames.bin", "frames.a", "frames.h", "frames.empty", "frames.big", "frames.split"],
            "binary": true,
            "a": "a",
            "h": { "data": "abc", "reply": "reply.h", "headers": { "x-key": "v1, v2", "other": "spaced" } },
            "empty": { "size": 0, "reply": "reply.e", "headers": null },
            "big": true,
            "split": { "status": 100, "description": "Idle Heartbeat", "size": 0 },
            "pongToServer": 1,
            "hpub": true,
            "events": ["disconnect", "reconnect"],
            "resubscribed": true,
        })
    );
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server goes down and comes back: the script sees the disconnect and the reconnect,
/// and its subscription (re-sent on reconnect) gets a message published afterwards.
#[test]
fn resubscribes_after_the_server_restarts() {
    let mut nats = TestNats::start();
    let rt = tokio_rt();
    let kv = rt.block_on(light_kv(&nats.url));
    let mut child = Killed(
        Command::new("node")
            .arg(script())
            .args([&nats.url, "reconnect"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("node is installed"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let expect = |want: Value| {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no {want} from the script"));
        let got: Value = serde_json::from_str(&line).unwrap();
        for (key, value) in want.as_object().unwrap() {
            assert_eq!(&got[key], value, "{line} after {want}");
        }
        got
    };
    let publish = |url: &str, data: &'static str| {
        rt.block_on(async {
            let client = async_nats::connect(url).await.unwrap();
            client
                .publish("light.reconnect", data.into())
                .await
                .unwrap();
            client.flush().await.unwrap();
        })
    };

    expect(json!({ "event": "ready" }));
    publish(&nats.url, "before");
    expect(json!({ "event": "msg", "data": "before" }));
    nats.down();
    expect(json!({ "event": "disconnect" }));
    nats.up();
    // 'reconnect' comes after the server confirmed the re-sent subscription.
    expect(json!({ "event": "reconnect" }));
    publish(&nats.url, "after");
    expect(json!({ "event": "msg", "data": "after" }));
    let done = expect(json!({ "event": "done" }));
    assert!(child.0.wait().unwrap().success());

    let entry = rt.block_on(kv.entry("after-reconnect")).unwrap().unwrap();
    assert_eq!(&entry.value[..], b"yes");
    assert_eq!(done["seq"], entry.revision);
}

/// A token server refuses a wrong or missing token at once, saying why; the right token
/// works as an option and in the URL.
#[test]
fn token_auth() {
    let token = "light-Tk-7781";
    let nats = TestNats::start_with_config(&format!("authorization {{ token: \"{token}\" }}\n"));
    let out = node(&[&nats.url, "auth", "token", token]);
    let server = nats.url.as_str();
    assert_rejected("wrong token", &out["wrong"], &["authorization", server]);
    assert_rejected("no token", &out["none"], &["authorization", server]);
    assert_eq!(out["byOption"], true);
    assert_eq!(out["inUrl"], true);
    assert!(!out.to_string().contains(token), "the token shows: {out}");
}

/// The same with a user and password.
#[test]
fn user_password_auth() {
    let nats =
        TestNats::start_with_config("authorization { user: light, password: \"pw-Light-42\" }\n");
    let out = node(&[&nats.url, "auth", "user", "light:pw-Light-42"]);
    assert_rejected("wrong password", &out["wrong"], &["authorization"]);
    assert_rejected("no credentials", &out["none"], &["authorization"]);
    assert_eq!(out["byOption"], true);
    assert_eq!(out["inUrl"], true);
    assert!(
        !out.to_string().contains("pw-Light-42"),
        "the password shows"
    );
}

/// A server with a certificate from the test's own CA: the client talks TLS given that CA
/// (a 200 KiB request-reply), and without it fails at once naming the problem.
#[test]
fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let TestCa { ca, cert, key } = tls::make(dir.path(), "light");
    let nats = TestNats::start_with_config(&format!(
        "tls {{ cert_file: {cert:?}, key_file: {key:?}, timeout: 5 }}\n"
    ));
    let out = node(&[&nats.url, "tls", ca.to_str().unwrap()]);
    assert_eq!(out["echoed"], 200 * 1024);
    assert_rejected("TLS without the CA", &out["noCa"], &["TLS", "certificate"]);
}

/// An NKey user: the client signs the server's nonce with the seed; another user's seed and
/// a string that is no seed are refused, and no seed shows in the output.
#[test]
fn nkey_auth() {
    let dir = tempfile::tempdir().unwrap();
    let user = common::nats::nkey::user_key(dir.path(), "light");
    let other = common::nats::nkey::user_key(dir.path(), "other");
    let nats = TestNats::start_with_config(&format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}\n",
        user.public
    ));
    let out = node(&[&nats.url, "nkey", &user.seed, &other.seed]);
    assert_eq!(out["connected"], true, "{out}");
    assert_rejected("another user's seed", &out["other"], &["authorization"]);
    assert_rejected("no seed", &out["badSeed"], &["NKey"]);
    assert!(
        !out.to_string().contains(&user.seed),
        "the seed shows: {out}"
    );
}
