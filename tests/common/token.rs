//! A Bearer-token server for tests, the other half of distribution's `auth: token:` setup: it
//! answers `GET /token?service=..&scope=..` with a JWT signed RS256 by a throwaway key (made
//! and used through the `openssl` command) for one user and password, and 401 otherwise.
//! The certificate travels in the token's `x5c` header and is the registry's root bundle.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use tempfile::TempDir;

/// The `service` the registry names in its challenge and the token's audience.
pub const SERVICE: &str = "kiln-test-registry";
/// The token issuer the registry trusts.
pub const ISSUER: &str = "kiln-test-token-server";

/// A running token server (a thread on a loopback port; it lives as long as the process).
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`.
    pub realm: String,
    /// PEM certificate of the signing key: the registry's `rootcertbundle`.
    pub cert: PathBuf,
    /// Every request's outcome, in order: `(scope query, status)`.
    pub answered: Arc<Mutex<Vec<(String, u16)>>>,
    _dir: TempDir,
}

impl TokenServer {
    /// Starts a server that grants what is asked to `user` with `password`.
    pub fn start(user: &str, password: &str) -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kiln-test-token",
            "-days",
            "2",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        let der = dir.path().join("cert.der");
        openssl(&[
            "x509",
            "-in",
            cert.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            der.to_str().unwrap(),
        ]);
        let x5c = super::base64(&std::fs::read(&der).unwrap(), false);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let answered: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
        let expected = format!(
            "Basic {}",
            super::base64(format!("{user}:{password}").as_bytes(), false)
        );
        let signer = Signer {
            key,
            x5c,
            dir: dir.path().to_owned(),
            user: user.to_owned(),
        };
        let log = answered.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (scope, status) = answer(stream, &expected, &signer);
                log.lock().unwrap().push((scope, status));
            }
        });
        TokenServer {
            realm,
            cert,
            answered,
            _dir: dir,
        }
    }

    /// The registry's `auth:` section for this server.
    pub fn registry_auth_section(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            self.cert.display()
        )
    }
}

struct Signer {
    key: PathBuf,
    x5c: String,
    dir: PathBuf,
    user: String,
}

impl Signer {
    /// A JWT granting each `repository:NAME:ACTIONS` scope as asked.
    fn token(&self, scopes: &[String]) -> String {
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|scope| {
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": self.user,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 30,
            "iat": now - 30,
            "jti": format!("{now}-{}", fastrand_id()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            super::base64(header.to_string().as_bytes(), true),
            super::base64(claims.to_string().as_bytes(), true)
        );
        let input = self.dir.join(format!("input-{}", fastrand_id()));
        std::fs::write(&input, &signing_input).unwrap();
        let signature = openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            self.key.to_str().unwrap(),
            input.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&input);
        format!("{signing_input}.{}", super::base64(&signature, true))
    }
}

/// A unique-enough suffix for token ids and scratch files.
fn fastrand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Serves one request; returns its scope query and the status sent.
fn answer(mut stream: TcpStream, expected: &str, signer: &Signer) -> (String, u16) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    let _ = reader.read_line(&mut request_line);
    let mut authorization = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = value.trim().to_owned();
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("scope="))
        .map(percent_decode)
        .collect();
    let (status, body) = if authorization == expected {
        let token = signer.token(&scopes);
        (
            200,
            serde_json::json!({"token": token, "access_token": token, "expires_in": 300})
                .to_string(),
        )
    } else {
        (
            401,
            r#"{"details":"wrong user name or password"}"#.to_owned(),
        )
    };
    let reason = if status == 200 { "OK" } else { "Unauthorized" };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    (scopes.join(" "), status)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `openssl ARGS` and returns its stdout.
fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
