//! NATS auth and TLS as users configure them in nats-server's config file, besides
//! user/password (`tests/cluster.rs`): a token, an NKey user, and TLS with a CA of the test's
//! own. Real nats-server, real `kiln` processes with trace logging; the secret shows in no
//! output, no message on `kiln.>` and no file of the commands' caches.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::nats::TestNats;
use common::nats::nkey::user_key;
use common::nats::tls::{self, TestCa};
use common::*;
use futures_util::StreamExt;
use kiln_queue::Queue;
use kiln_queue::nats::{Credentials, NatsOptions, Secret, Tls};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A scratch directory, the vendored npm cache and the fixture every submit sends.
struct Setup {
    tmp: tempfile::TempDir,
    npm: PathBuf,
    fixture: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let npm = npm_cache(tmp.path());
        Setup {
            tmp,
            npm,
            fixture: root().join("fixtures/faas-hello"),
        }
    }

    /// The cache directory of the commands.
    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    /// Runs kiln with `args` and `env`, trace logging on, in the shared cache directory.
    fn kiln(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        kiln_cmd(&self.cache(), &self.npm)
            .args(args)
            .envs(env.iter().copied())
            .env("KILN_LOG", "trace")
            .output()
            .unwrap()
    }

    /// `kiln submit` of the fixture as `app` with `nats` (flags), `env`.
    fn submit(&self, app: &str, nats: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args = vec!["submit", self.fixture.to_str().unwrap(), "--app", app];
        args.extend_from_slice(nats);
        self.kiln(&args, env)
    }
}

/// Every message on `kiln.>` published while `run` runs, as (what, bytes), read through
/// `queue`.
fn messages_during(
    rt: &tokio::runtime::Runtime,
    queue: &Queue,
    run: impl FnOnce(),
) -> Vec<(String, Vec<u8>)> {
    let mut messages = rt.block_on(queue.client.subscribe("kiln.>")).unwrap();
    rt.block_on(queue.client.flush()).unwrap();
    run();
    rt.block_on(async {
        let mut texts = Vec::new();
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(300), messages.next()).await
        {
            texts.push((format!("message on {}", msg.subject), msg.payload.to_vec()));
        }
        texts
    })
}

/// Asserts `secret` is in none of `outputs`, `messages` and the commands' cache, and that
/// the messages hold `jobs` build jobs of `app` (so that there was something to search).
fn assert_secret_absent(
    secret: &str,
    setup: &Setup,
    outputs: &[(&str, &Output)],
    messages: &[(String, Vec<u8>)],
    app: &str,
    jobs: usize,
) {
    let job_subject = format!("message on kiln.jobs.build.{app}");
    assert_eq!(
        messages
            .iter()
            .filter(|(what, _)| *what == job_subject)
            .count(),
        jobs,
        "build jobs of {app} seen"
    );
    let mut texts: Vec<(String, &[u8])> = messages
        .iter()
        .map(|(what, t)| (what.clone(), t.as_slice()))
        .collect();
    for (what, out) in outputs {
        texts.push((format!("{what} stdout"), &out.stdout));
        texts.push((format!("{what} stderr"), &out.stderr));
    }
    assert!(
        texts
            .iter()
            .any(|(_, t)| String::from_utf8_lossy(t).contains("DEBUG")),
        "no verbose log captured"
    );
    let texts: Vec<(&str, &[u8])> = texts.iter().map(|(w, t)| (w.as_str(), *t)).collect();
    secrets::assert_absent(secret, &texts, &[setup.cache().as_path()]);
}

/// Asserts that `kiln revisions app` in `out` connected and read the revisions (there are
/// none: no worker runs).
fn assert_read_revisions(out: &Output, app: &str) {
    assert!(
        stderr(out).contains(&format!("app \"{app}\" has no revisions")),
        "{}",
        stderr(out)
    );
}

/// Asserts `out` failed at once, refused by the server with `reason`.
fn assert_refused(out: &Output, url: &str, reason: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("NATS at {url} refused the connection: {reason}")),
        "{err}"
    );
}

/// A token by flag, by environment and in the URL: submit and revisions work; a wrong token
/// is refused naming the problem; the token shows nowhere.
#[test]
fn nats_token_auth_works_and_the_token_never_shows() {
    let setup = Setup::new();
    let token = "Tk-nats-d0-not-leak-5531";
    let wrong = "Tk-wr0ng-nats-7720";
    let nats = TestNats::start_with_config(&format!("authorization {{ token: \"{token}\" }}\n"));
    let in_url = nats.url.replace("nats://", &format!("nats://{token}@"));
    let rt = tokio_rt();
    let queue = rt
        .block_on(Queue::connect_with(&NatsOptions {
            credentials: Credentials::Token(Secret::new(token)),
            ..NatsOptions::new(nats.url.as_str())
        }))
        .unwrap();
    let mut outputs = Vec::new();
    let messages = messages_during(&rt, &queue, || {
        let by_flag = setup.submit("tok", &["--nats", &nats.url, "--nats-token", token], &[]);
        let by_env = setup.submit("tok", &["--nats", &nats.url], &[("KILN_NATS_TOKEN", token)]);
        let by_url = setup.submit("tok", &["--nats", &in_url], &[]);
        let listed = setup.kiln(
            &["revisions", "tok", "--nats", &nats.url],
            &[("KILN_NATS_TOKEN", token)],
        );
        for (what, out) in [
            ("submit (flag)", &by_flag),
            ("submit (env)", &by_env),
            ("submit (URL)", &by_url),
        ] {
            assert!(out.status.success(), "{what}: {}", stderr(out));
        }
        assert_read_revisions(&listed, "tok");
        let refused = setup.submit("tok", &["--nats", &nats.url, "--nats-token", wrong], &[]);
        assert_refused(&refused, &nats.url, "authorization violation");
        outputs = vec![
            ("submit (flag)", by_flag),
            ("submit (env)", by_env),
            ("submit (URL)", by_url),
            ("revisions", listed),
            ("submit (wrong token)", refused),
        ];
    });
    let outputs: Vec<(&str, &Output)> = outputs.iter().map(|(w, o)| (*w, o)).collect();
    assert_secret_absent(token, &setup, &outputs, &messages, "tok", 3);
    assert_secret_absent(wrong, &setup, &outputs, &messages, "tok", 3);
}

/// An NKey user (the server's config holds its public key): the seed file by flag and by
/// environment works; a key the server does not know is refused; a file without a seed is a
/// clear error; the seed shows nowhere.
#[test]
fn nats_nkey_auth_works_and_the_seed_never_shows() {
    let setup = Setup::new();
    let keys = setup.tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let user = user_key(&keys, "user");
    let stranger = user_key(&keys, "stranger");
    let seed_file = write(&keys.join("user.nk"), &user.seed);
    let stranger_file = write(&keys.join("stranger.nk"), &stranger.seed);
    let no_seed = write(&keys.join("public.nk"), &user.public);
    let nats = TestNats::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
        user.public
    ));
    let rt = tokio_rt();
    let queue = rt
        .block_on(Queue::connect_with(&NatsOptions {
            credentials: Credentials::NKeySeedFile(seed_file.clone()),
            ..NatsOptions::new(nats.url.as_str())
        }))
        .unwrap();
    let mut outputs = Vec::new();
    let messages = messages_during(&rt, &queue, || {
        let by_flag = setup.submit(
            "nk",
            &[
                "--nats",
                &nats.url,
                "--nats-nkey",
                seed_file.to_str().unwrap(),
            ],
            &[],
        );
        let by_env = setup.submit(
            "nk",
            &["--nats", &nats.url],
            &[("KILN_NATS_NKEY", seed_file.to_str().unwrap())],
        );
        for (what, out) in [("submit (flag)", &by_flag), ("submit (env)", &by_env)] {
            assert!(out.status.success(), "{what}: {}", stderr(out));
        }
        let refused = setup.submit(
            "nk",
            &[
                "--nats",
                &nats.url,
                "--nats-nkey",
                stranger_file.to_str().unwrap(),
            ],
            &[],
        );
        assert_refused(&refused, &nats.url, "authorization violation");
        let unusable = setup.submit(
            "nk",
            &[
                "--nats",
                &nats.url,
                "--nats-nkey",
                no_seed.to_str().unwrap(),
            ],
            &[],
        );
        assert!(
            stderr(&unusable).contains("holds no user seed"),
            "{}",
            stderr(&unusable)
        );
        outputs = vec![
            ("submit (flag)", by_flag),
            ("submit (env)", by_env),
            ("submit (unknown key)", refused),
            ("submit (no seed)", unusable),
        ];
    });
    let outputs: Vec<(&str, &Output)> = outputs.iter().map(|(w, o)| (*w, o)).collect();
    assert_secret_absent(&user.seed, &setup, &outputs, &messages, "nk", 2);
    assert_secret_absent(&stranger.seed, &setup, &outputs, &messages, "nk", 2);
}

/// A server with a certificate from the test's own CA: kiln connects given that CA (by flag,
/// by environment, with a `tls://` URL); without it, or with another CA, the connection is
/// refused at once naming the CA file to check.
#[test]
fn nats_tls_with_a_private_ca() {
    let setup = Setup::new();
    let certs = setup.tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let TestCa { ca, cert, key } = tls::make(&certs, "kiln");
    let other = tls::make(&certs, "other");
    let nats = TestNats::start_with_config(&format!(
        "tls {{ cert_file: {cert:?}, key_file: {key:?}, timeout: 5 }}\n"
    ));
    let tls_url = nats.url.replace("nats://", "tls://");
    let ca = ca.to_str().unwrap();

    let rt = tokio_rt();
    let queue = rt
        .block_on(Queue::connect_with(&NatsOptions {
            tls: Tls {
                ca_file: Some(ca.into()),
                client_cert: None,
            },
            ..NatsOptions::new(nats.url.as_str())
        }))
        .unwrap();
    assert!(queue.client.server_info().tls_required, "TLS is on");

    let by_flag = setup.submit("secure", &["--nats", &nats.url, "--nats-ca", ca], &[]);
    assert!(by_flag.status.success(), "{}", stderr(&by_flag));
    let listed = setup.kiln(
        &["revisions", "secure", "--nats", &tls_url],
        &[("KILN_NATS_CA", ca)],
    );
    assert_read_revisions(&listed, "secure");
    let jobs = rt.block_on(async {
        let mut stream = queue.js.get_stream("KILN_JOBS").await.unwrap();
        stream.info().await.unwrap().state.messages
    });
    assert_eq!(jobs, 1, "the job went through TLS");

    for (what, extra) in [
        ("no CA", vec![]),
        ("another CA", vec!["--nats-ca", other.ca.to_str().unwrap()]),
    ] {
        let mut args = vec!["revisions", "secure", "--nats", &nats.url];
        args.extend(extra);
        let out = setup.kiln(&args, &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{what}: {err}");
        assert!(
            err.contains(&format!("NATS at {} refused the connection: ", nats.url))
                && err.contains("check the CA file"),
            "{what}: {err}"
        );
    }
    let missing = setup.kiln(
        &[
            "revisions",
            "secure",
            "--nats",
            &nats.url,
            "--nats-ca",
            "/nonexistent/ca.pem",
        ],
        &[],
    );
    assert!(
        stderr(&missing).contains("NATS TLS CA file /nonexistent/ca.pem"),
        "{}",
        stderr(&missing)
    );
}

/// Writes `text` (and a newline) to `path`; returns the path.
fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, format!("{text}\n")).unwrap();
    path.to_owned()
}
