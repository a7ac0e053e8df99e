//! A real NATS server for tests: `nats-server -js` (2.10 or newer) on a free loopback port
//! with its own store directory, optionally with a config file (auth); killed on drop,
//! restartable on the same port and store. `cluster` starts a JetStream cluster of them,
//! `exactly_once` checks a drained queue, `nkey` and `tls` make keys and certificates.

pub mod cluster;
pub mod exactly_once;
pub mod nkey;
pub mod tls;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running nats-server with JetStream.
pub struct TestNats {
    child: Option<Child>,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    dir: TempDir,
    config: Option<std::path::PathBuf>,
}

impl TestNats {
    /// Starts a server.
    pub fn start() -> TestNats {
        Self::launch(None)
    }

    /// Starts a server with `config` (nats-server's config syntax, e.g. an `authorization`
    /// block) as its config file.
    pub fn start_with_config(config: &str) -> TestNats {
        Self::launch(Some(config))
    }

    fn launch(config: Option<&str>) -> TestNats {
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        let config = config.map(|text| {
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut nats = TestNats {
            child: None,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir,
            config,
        };
        nats.up();
        nats
    }

    /// Stops it (the store stays).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and store and waits until it accepts connections.
    pub fn up(&mut self) {
        let mut cmd = Command::new("nats-server");
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        let child = cmd
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (2.10+) is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        self.down();
    }
}
