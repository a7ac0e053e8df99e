//! Runs a script kiln did not write (an app's build script) in a bubblewrap sandbox: an
//! unprivileged user (65534) in its own user, PID, network, IPC and UTS namespaces, so it has
//! no network at all; the host's `/usr` read-only; no `/etc`, `/root` or home, so no
//! credentials file is reachable; an empty environment but for what is passed; only its work
//! directory and a private `/tmp` writable; killed with everything it forked at a time limit.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where the work directory appears inside the sandbox.
pub const WORK: &str = "/app";

/// How many last output lines a failure keeps.
const TAIL: usize = 20;

/// What to run.
pub struct Script<'a> {
    /// Shell command line, run by `/bin/sh -c` in [`WORK`].
    pub command: &'a str,
    /// The host directory mounted read-write at [`WORK`].
    pub work: &'a Path,
    /// Host directories mounted read-only inside: (host, path in the sandbox).
    pub read_only: Vec<(PathBuf, String)>,
    /// Paths inside that get a private, writable tmpfs (over a read-only mount).
    pub tmpfs: Vec<String>,
    /// Environment variables (the rest of the environment is cleared).
    pub env: Vec<(String, String)>,
    /// Time limit.
    pub timeout: Duration,
}

/// Why a script did not succeed.
#[derive(Debug)]
pub struct Failure {
    /// What happened (exit status, time limit, cannot start).
    pub problem: String,
    /// Its last output lines.
    pub output: Vec<String>,
}

/// Runs `script`, passing each output line (stdout and stderr) to `on_line`.
pub fn run(script: &Script, on_line: &mut dyn FnMut(&str)) -> Result<(), Failure> {
    let mut cmd = Command::new("bwrap");
    cmd.args(["--unshare-all", "--die-with-parent", "--new-session"])
        .args(["--clearenv", "--uid", "65534", "--gid", "65534"])
        .args(["--ro-bind", "/usr", "/usr"]);
    for dir in ["bin", "lib", "lib32", "lib64", "sbin"] {
        let host = Path::new("/").join(dir);
        match std::fs::read_link(&host) {
            Ok(target) => {
                cmd.arg("--symlink").arg(target).arg(&host);
            }
            Err(_) if host.is_dir() => {
                cmd.arg("--ro-bind").arg(&host).arg(&host);
            }
            Err(_) => {}
        }
    }
    // node outside /usr (a version manager's prefix): its install directory, read-only.
    if let Some(prefix) = node_prefix().filter(|p| !p.starts_with("/usr")) {
        cmd.arg("--ro-bind").arg(&prefix).arg(&prefix);
    }
    cmd.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
        .arg("--bind")
        .arg(script.work)
        .arg(WORK);
    for (host, inside) in &script.read_only {
        cmd.arg("--ro-bind").arg(host).arg(inside);
    }
    for inside in &script.tmpfs {
        cmd.args(["--tmpfs", inside]);
    }
    // The sandbox's own root (a tmpfs bwrap made) read-only too: nothing but WORK and /tmp.
    cmd.args([
        "--remount-ro",
        "/",
        "--chdir",
        WORK,
        "--setenv",
        "HOME",
        "/tmp",
    ]);
    for (key, value) in &script.env {
        cmd.args(["--setenv", key, value]);
    }
    cmd.args(["/bin/sh", "-c", script.command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Failure {
        problem: match e.kind() {
            std::io::ErrorKind::NotFound => {
                "cannot run: bubblewrap (bwrap) is not installed; it sandboxes build scripts (Debian: apt-get install bubblewrap)".into()
            }
            _ => format!("cannot start bwrap: {e}"),
        },
        output: Vec::new(),
    })?;
    let (lines_tx, lines) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ]
    .into_iter()
    .map(|stream| {
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(|l| l.ok()) {
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if tx.send(line).is_err() {
                    return;
                }
            }
        })
    })
    .collect();
    drop(lines_tx);

    let deadline = Instant::now() + script.timeout;
    let mut tail: Vec<String> = Vec::new();
    let mut keep = |line: String, on_line: &mut dyn FnMut(&str)| {
        on_line(&line);
        tail.push(line);
        if tail.len() > TAIL {
            tail.remove(0);
        }
    };
    let status = loop {
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => keep(line, on_line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(10))
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // bwrap's death takes the sandbox's PID namespace, and all it forked, with it.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
    };
    for reader in readers {
        let _ = reader.join();
    }
    for line in lines.try_iter() {
        keep(line, on_line);
    }
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(Failure {
            problem: format!("failed ({s})"),
            output: tail,
        }),
        None => Err(Failure {
            problem: format!(
                "did not finish within {} s and was stopped",
                script.timeout.as_secs()
            ),
            output: tail,
        }),
    }
}

/// The install prefix of the `node` on PATH (`/usr` for `/usr/bin/node`).
fn node_prefix() -> Option<PathBuf> {
    let (real, _) = crate::host_base::host_node_stamp()?;
    Some(real.parent()?.parent()?.to_owned())
}
