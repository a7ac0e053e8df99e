//! A real NATS server for tests: `nats-server -js` (2.10 or newer) on a free loopback port
//! with its own store directory; killed on drop, restartable on the same port and store.

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
}

impl TestNats {
    /// Starts a server.
    pub fn start() -> TestNats {
        let port = super::free_port();
        let mut nats = TestNats {
            child: None,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir: tempfile::tempdir().unwrap(),
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
        let child = Command::new("nats-server")
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
