//! sma-light instances for tests: the built runtime image, unpacked, run as a container
//! runtime would (its own PID namespace, non-root user) with NATS settings; a plain
//! HTTP/1.0 client (also for tests/dev.rs); and app folders that differ only in the version they report.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, image_command, root};

/// A running sma-light instance.
pub struct Instance {
    /// Its name (`KILN_INSTANCE`).
    pub name: String,
    /// The port it listens on.
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // node is the PID namespace's init: killing it ends the namespace (killing `unshare`
        // alone would leave it running).
        if let Some(node) = self.try_node_pid() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &node.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    /// Starts instance `name` of `app` from the unpacked image in `bundle`, and waits until
    /// it listens (it loads the current version first).
    pub fn start(bundle: &Path, name: &str, app: &str, nats: &str, logs: &Path) -> Instance {
        let port = free_port();
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = image_command(
            bundle,
            port,
            &["--fork", "--pid", "--kill-child", "--mount-proc"],
        );
        cmd.env("KILN_NATS", nats)
            .env("KILN_APP", app)
            .env("KILN_INSTANCE", name)
            .env("KILN_LIGHT_HEARTBEAT_MS", "1000")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file));
        let mut instance = Instance {
            name: name.into(),
            port,
            child: cmd.spawn().unwrap(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return instance;
            }
            if let Ok(Some(status)) = instance.child.try_wait() {
                panic!("instance {name} exited ({status}):\n{}", instance.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("instance {name} did not listen:\n{}", instance.log());
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of its node process (the child of `unshare`).
    fn node_pid(&self) -> u32 {
        self.try_node_pid().expect("the instance's node process")
    }

    fn try_node_pid(&self) -> Option<u32> {
        let id = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// Stops it as a platform would: SIGTERM, then waits for it to exit.
    pub fn stop(mut self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.node_pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}:\n{}", self.log());
    }

    /// Resident memory of its node process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let node = self.node_pid();
        let status = std::fs::read_to_string(format!("/proc/{node}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// `GET path` on this instance.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
        get(self.port, path, headers)
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// A header's value (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on 127.0.0.1:`port`, one connection per request.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
    request(port, "GET", path, headers, None)
}

/// `method path` on 127.0.0.1:`port` with `body` (sent as JSON), one connection per
/// request.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    // Long enough for a request held across a whole `kiln publish --wait` on a busy machine.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut request =
        format!("{method} {path} HTTP/1.0\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A copy of fixtures/light-pages in `tmp/v<label>` whose `/api/version` answers `label`.
pub fn variant(tmp: &Path, label: &str) -> PathBuf {
    let dir = tmp.join(format!("v{label}"));
    let ok = std::process::Command::new("cp")
        .arg("-r")
        .arg(root().join("fixtures/light-pages"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(
        dir.join("api/version.js"),
        format!("module.exports = async () => ({{ version: {label:?} }});\n"),
    )
    .unwrap();
    dir
}
