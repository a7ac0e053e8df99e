//! A certificate authority of a test's own, made with openssl: its certificate, and a server
//! certificate it signed for 127.0.0.1 and localhost (P-256 keys, valid two days).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The CA's certificate and a server certificate and key it signed.
pub struct TestCa {
    /// PEM certificate of the CA (what `--nats-ca` takes).
    pub ca: PathBuf,
    /// PEM server certificate.
    pub cert: PathBuf,
    /// PEM server key.
    pub key: PathBuf,
}

/// Makes a CA named `name` and a server certificate under `dir`.
pub fn make(dir: &Path, name: &str) -> TestCa {
    let file = |suffix: &str| dir.join(format!("{name}-{suffix}"));
    let (ca_key, ca) = (file("ca.key"), file("ca.pem"));
    let (key, csr, cert, ext) = (
        file("server.key"),
        file("server.csr"),
        file("server.pem"),
        file("server.ext"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &["req", "-x509", "-days", "2"],
        &ec,
        &[
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        &["req"],
        &ec,
        &[
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &["x509", "-req", "-days", "2"],
        &[],
        &[
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-out",
            &s(&cert),
            "-extfile",
            &s(&ext),
        ],
    );
    TestCa { ca, cert, key }
}

fn s(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

fn openssl(a: &[&str], b: &[&str], c: &[&str]) {
    let out = Command::new("openssl")
        .args(a)
        .args(b)
        .args(c)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {a:?} {c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
