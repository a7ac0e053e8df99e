//! A real registry for tests: Debian's `docker-registry` (distribution) on a free loopback
//! port with its own storage, optionally behind htpasswd Basic auth or Bearer tokens; killed
//! on drop.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running docker-registry.
pub struct TestRegistry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: TempDir,
}

impl TestRegistry {
    /// A registry without auth.
    pub fn start() -> TestRegistry {
        Self::launch(Auth::None)
    }

    /// A registry that wants Basic auth for `user` / `password`.
    pub fn start_with_auth(user: &str, password: &str) -> TestRegistry {
        Self::launch(Auth::Htpasswd(user.to_owned(), password.to_owned()))
    }

    /// A registry that wants Bearer tokens from `tokens`.
    pub fn start_with_tokens(tokens: &super::token::TokenServer) -> TestRegistry {
        Self::launch(Auth::Token(tokens.registry_auth_section()))
    }

    fn launch(auth: Auth) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth_section = match auth {
            Auth::None => String::new(),
            Auth::Token(section) => section,
            Auth::Htpasswd(user, password) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", &user, &password])
                    .output()
                    .expect("htpasswd (apache2-utils) is installed");
                assert!(out.status.success());
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    file.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n{auth_section}",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut registry = TestRegistry {
            child: None,
            addr,
            dir,
        };
        registry.up();
        registry
    }

    /// The access and error log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Requests in `log` (a slice of [`TestRegistry::log`]) with `method` whose path contains
    /// `path_part` and whose status is `status` (any when `None`).
    pub fn requests(log: &str, method: &str, path_part: &str, status: Option<u16>) -> usize {
        log.lines()
            .filter(|l| l.contains(&format!("\"{method} ")) && l.contains(path_part))
            .filter(|l| {
                status.is_none_or(|s| {
                    l.split('"')
                        .nth(2)
                        .is_some_and(|after| after.trim_start().starts_with(&s.to_string()))
                })
            })
            .count()
    }

    /// The digests of the blob uploads `log` shows completed (a `PUT …/blobs/uploads/…` with
    /// `digest=` answered 201), one entry per upload, in log order.
    pub fn uploaded_digests(log: &str) -> Vec<String> {
        log.lines()
            .filter_map(|line| {
                let mut quoted = line.split('"');
                let request = quoted.nth(1)?.strip_prefix("PUT ")?;
                let status = quoted.next()?.split_whitespace().next()?;
                let path = request.split(' ').next()?;
                if status != "201" || !path.contains("/blobs/uploads/") {
                    return None;
                }
                let query = path.split_once('?')?.1;
                let digest = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("digest="))
                    .unwrap_or_else(|| panic!("blob upload without a digest: {line}"));
                Some(digest.replace("%3A", ":").replace("%3a", ":"))
            })
            .collect()
    }

    /// Requests in `log` (a slice of [`TestRegistry::log`]) by method: `{"GET": 2, …}`.
    pub fn by_method(log: &str) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for line in log.lines() {
            let request = line.split('"').nth(1).unwrap_or("");
            let Some((method, path)) = request.split_once(' ') else {
                continue;
            };
            if path.starts_with("/v2/") {
                *counts.entry(method.to_owned()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Removes blob `digest` from the storage and from `repository`'s layers, as garbage
    /// collection does to a blob no manifest references any more.
    pub fn collect_blob(&self, repository: &str, digest: &str) {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let v2 = self.dir.path().join("data/docker/registry/v2");
        let data = v2.join("blobs/sha256").join(&hex[..2]).join(hex);
        let link = v2
            .join("repositories")
            .join(repository)
            .join("_layers/sha256")
            .join(hex);
        for path in [data, link] {
            std::fs::remove_dir_all(&path)
                .unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
        }
    }

    /// Stops the registry (storage stays).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and storage and waits until it answers.
    pub fn up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("docker-registry is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&self.addr).is_err() {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How a test registry authenticates.
enum Auth {
    None,
    /// htpasswd Basic auth for (user, password).
    Htpasswd(String, String),
    /// Bearer tokens: the `auth:` section naming the token server.
    Token(String),
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.down();
    }
}
