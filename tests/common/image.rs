//! Running a built image as a container runtime would: unpacked by umoci, its entrypoint,
//! environment, user and working directory, in its own PID namespace, on a free port.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, image_command, unpack};

/// An unpacked image running as its non-root user, its output kept for failures.
pub struct App {
    /// `unshare`, the image's entrypoint under it.
    pub child: std::process::Child,
    /// The port it listens on.
    pub port: u16,
    log: PathBuf,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl App {
    /// What it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `(status, body)` of `GET path`.
    pub fn get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.parse().unwrap_or(0), body.to_owned())
    }
}

/// Runs the image `tag` of `layout` (unpacked into `tmp`) the way a container runtime would
/// ([`image_command`]) and waits up to `wait` for it to listen.
pub fn run_image(layout: &Path, tag: &str, tmp: &Path, wait: Duration) -> App {
    let bundle = unpack(layout, tag, tmp);
    let port = free_port();
    let log = tmp.join("app.log");
    let file = std::fs::File::create(&log).unwrap();
    // A PID namespace with its own /proc, as in a container: the app is PID 1 there, and
    // all it forks dies with it.
    let mut cmd = image_command(
        &bundle,
        port,
        &["--fork", "--pid", "--kill-child", "--mount-proc"],
    );
    cmd.stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file));
    let mut app = App {
        child: cmd.spawn().unwrap(),
        port,
        log,
    };
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return app;
        }
        if let Ok(Some(status)) = app.child.try_wait() {
            panic!(
                "the image exited ({status}) before listening:\n{}",
                app.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the image did not listen on $PORT within {wait:?}:\n{}",
        app.log()
    );
}
