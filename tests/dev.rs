//! `kiln dev`: each runtime (faas, sma, app) served from a copy of its fixture on the machine's
//! node, the listing at /kiln/dev, reload on change, a crash survived, and no node process
//! left behind once kiln dev is stopped.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use common::{free_port, root};
use serde_json::Value;

/// How long a start may take on a loaded machine.
const START: Duration = Duration::from_secs(30);
/// How long a change may take to be served.
const RELOAD: Duration = Duration::from_secs(15);

/// A copy of `fixtures/<name>` in `tmp`.
fn fixture(name: &str, tmp: &Path) -> PathBuf {
    let dest = tmp.join(name);
    let ok = Command::new("cp")
        .arg("-r")
        .arg(root().join("fixtures").join(name))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(ok.success());
    dest
}

/// A running `kiln dev`, its stderr lines as they come; killed with what it started on drop.
struct Dev {
    child: Child,
    port: u16,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Dev {
    fn start(dir: &Path) -> Dev {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("dev")
            .arg(dir)
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Dev {
            child,
            port,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stderr line (not read before) containing `text`, waiting at most `within`.
    fn wait_line(&mut self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {text:?} in {within:?}; stderr:\n{}",
                        self.log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("kiln dev ended before {text:?}; stderr:\n{}", self.log())
                }
            }
        }
    }

    /// The stderr lines so far.
    fn log(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }

    /// Waits for the "serving" lines; returns the listing URL printed.
    fn wait_serving(&mut self, runtime: &str) -> String {
        let line = self.wait_line(&format!("serving {runtime} app "), START);
        assert!(
            line.ends_with(&format!(" at http://127.0.0.1:{}/", self.port)),
            "{line}"
        );
        let listing = self.wait_line("what is served: ", START);
        listing
            .split_once("what is served: ")
            .unwrap()
            .1
            .trim()
            .to_owned()
    }

    fn get(&self, path: &str) -> Option<Response> {
        request(self.port, "GET", path, None)
    }

    /// Polls `path` until its body contains `text`.
    fn wait_body(&mut self, path: &str, text: &str) -> Response {
        let deadline = Instant::now() + RELOAD;
        loop {
            if let Some(r) = self.get(path).filter(|r| r.body.contains(text)) {
                return r;
            }
            if Instant::now() > deadline {
                panic!(
                    "GET {path} never answered {text:?} (last: {:?}); stderr:\n{}",
                    self.get(path).map(|r| r.body),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("kiln dev ended ({status}); stderr:\n{}", self.log());
        }
    }

    /// The node process kiln dev runs (it leads a process group of its own).
    fn node(&self) -> u32 {
        let kids = processes(|p| p.ppid == self.child.id());
        assert_eq!(kids.len(), 1, "children of kiln dev: {kids:?}");
        assert_eq!(kids[0].pgrp, kids[0].pid, "node leads its process group");
        kids[0].pid
    }

    /// SIGTERM, as Ctrl-C would end it: kiln dev exits with success and leaves no process
    /// of the node's group behind.
    fn stop(mut self) {
        let node = self.node();
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "kiln dev did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status}; stderr:\n{}", self.log());
        assert_group_gone(node);
        assert!(
            !Path::new(&format!("/proc/{node}")).exists(),
            "node {node} still there"
        );
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            for p in processes(|p| p.ppid == self.child.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", p.pgrp)])
                    .status();
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process as /proc/PID/stat tells it.
#[derive(Debug)]
struct Proc {
    pid: u32,
    ppid: u32,
    pgrp: u32,
}

fn processes(keep: impl Fn(&Proc) -> bool) -> Vec<Proc> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        let proc = Proc {
            pid,
            ppid: fields[1].parse().unwrap(),
            pgrp: fields[2].parse().unwrap(),
        };
        if keep(&proc) {
            found.push(proc);
        }
    }
    found
}

/// No live process is left in the process group `pgrp` (within a few seconds).
fn assert_group_gone(pgrp: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes(|p| p.pgrp == pgrp);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes of node's group {pgrp} left: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: String,
}

/// A request to 127.0.0.1:`port` (`None` when nothing answers).
fn request(port: u16, method: &str, path: &str, body: Option<&str>) -> Option<Response> {
    let reply = common::light::request(port, method, path, &[], body).ok()?;
    let head: Vec<String> = reply
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    Some(Response {
        status: reply.status,
        head: head.join("\r\n").to_ascii_lowercase(),
        body: reply.body,
    })
}

/// Replaces `path` as editors do (write a new file, rename it over), so no half-written
/// file is ever seen.
fn save(path: &Path, text: &str) {
    let new = path.with_extension("new");
    std::fs::write(&new, text).unwrap();
    std::fs::rename(&new, path).unwrap();
}

/// The URLs of every item of a /kiln/dev.json listing.
fn listed_urls(listing: &Value) -> Vec<String> {
    listing["sections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["items"].as_array().unwrap())
        .map(|i| i["url"].as_str().unwrap().to_owned())
        .collect()
}

fn json(r: Option<Response>) -> Value {
    let r = r.expect("an answer");
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn faas_reloads_on_change_and_survives_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("faas-hello", tmp.path());
    let mut dev = Dev::start(&dir);
    let listing = dev.wait_serving("faas");
    assert_eq!(listing, format!("http://127.0.0.1:{}/kiln/dev", dev.port));

    let hello = dev.get("/hello?name=dev").unwrap();
    assert_eq!(hello.status, 200);
    assert!(hello.body.contains("hello dev"), "{hello:?}");
    let listed = json(dev.get("/kiln/dev.json"));
    assert_eq!(listed["runtime"], "faas");
    let urls = listed_urls(&listed);
    for url in ["/hello", "/echo", "/fail"] {
        assert!(urls.iter().any(|u| u == url), "{url} not in {listed}");
    }
    let page = dev.get("/kiln/dev").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.head.contains("content-type: text/html"), "{page:?}");
    assert!(page.body.contains("<a href=\"/hello\">"), "{}", page.body);

    // A change is served after a restart; the old node is gone.
    let first = dev.node();
    let hello_js = dir.join("functions/hello.js");
    save(
        &hello_js,
        "module.exports = async () => ({ message: 'changed' });\n",
    );
    dev.wait_body("/hello", "changed");
    dev.wait_line("changed: functions/hello.js, restarting", RELOAD);
    assert_group_gone(first);

    // A syntax error stops the app, not kiln dev; the fix is served.
    save(&hello_js, "module.exports = async () => {\n");
    dev.wait_line("the app exited (exit status: 1)", RELOAD);
    dev.assert_running();
    assert!(dev.get("/hello").is_none(), "a broken app still answers");
    save(
        &hello_js,
        "module.exports = async () => ({ message: 'fixed' });\n",
    );
    dev.wait_body("/hello", "fixed");
    dev.assert_running();
    dev.stop();
}

#[test]
fn sma_lists_pages_methods_and_client() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("sma-todo", tmp.path());
    // A file name that must be escaped in the page.
    std::fs::write(dir.join("public/a<b>&c.txt"), "x").unwrap();
    let mut dev = Dev::start(&dir);
    let listing = dev.wait_serving("sma");
    assert_eq!(listing, format!("http://127.0.0.1:{}/kiln/dev", dev.port));

    let added = request(dev.port, "POST", "/rpc/add", Some(r#"{"text":"milk"}"#)).unwrap();
    assert_eq!(added.status, 200, "{added:?}");
    let list = request(dev.port, "POST", "/rpc/list", None).unwrap();
    assert!(list.body.contains("milk"), "{list:?}");
    let index = dev.get("/").unwrap();
    assert!(index.head.contains("text/html"), "{index:?}");

    let listed = json(dev.get("/kiln/dev.json"));
    assert_eq!(listed["runtime"], "sma");
    let urls = listed_urls(&listed);
    for url in [
        "/rpc/list",
        "/rpc/add",
        "/rpc/clear",
        "/kiln/client.js",
        "/",
        "/style.css",
    ] {
        assert!(urls.iter().any(|u| u == url), "{url} not in {listed}");
    }
    let page = dev.get("/kiln/dev").unwrap().body;
    assert!(page.contains("a&lt;b&gt;&amp;c.txt"), "{page}");
    assert!(!page.contains("a<b>"), "{page}");
    dev.stop();
}

#[test]
fn app_serves_its_port_and_the_listing_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("app-plain", tmp.path());
    // A start command from the project config, passed as the image gets it (KILN_START);
    // with a flag before the file, node runs as the launcher's child, so stopping must reach
    // a grandchild too.
    let pkg = dir.join("package.json");
    let mut package: Value = serde_json::from_slice(&std::fs::read(&pkg).unwrap()).unwrap();
    package["kiln"] = serde_json::json!({ "start": "node --no-warnings index.js" });
    std::fs::write(&pkg, package.to_string()).unwrap();
    let mut dev = Dev::start(&dir);
    let listing = dev.wait_serving("app");

    let answer = dev.get("/").unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains(r#""app":"plain""#), "{answer:?}");

    let port: u16 = listing
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.strip_suffix("/kiln/dev"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("listing URL {listing}"));
    assert_ne!(port, dev.port);
    let listed = json(request(port, "GET", "/kiln/dev.json", None));
    assert_eq!(listed["runtime"], "app");
    let item = &listed["sections"][0]["items"][0];
    assert_eq!(item["name"], "node --no-warnings index.js", "{listed}");
    let node = dev.node();
    let app = processes(|p| p.ppid == node);
    assert_eq!(app.len(), 1, "the app under the launcher: {app:?}");
    assert_eq!(app[0].pgrp, node, "{app:?}");
    assert_eq!(item["url"], format!("http://127.0.0.1:{}/", dev.port));
    let page = request(port, "GET", "/kiln/dev", None).unwrap();
    assert!(
        page.body.contains("node --no-warnings index.js"),
        "{page:?}"
    );
    dev.stop();
}

#[test]
fn images_never_serve_the_listing() {
    // The faas runtime from the source tree (as in an image: no KILN_DEV).
    let port = free_port();
    let mut node = Command::new("node")
        .arg(root().join("runtimes/faas/server.js"))
        .current_dir(root().join("fixtures/faas-hello"))
        .env("PORT", port.to_string())
        .env_remove("KILN_DEV")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + START;
    let answer = loop {
        if let Some(r) = request(port, "GET", "/kiln/dev.json", None) {
            break r;
        }
        assert!(Instant::now() < deadline, "the faas runtime never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = node.kill();
    let _ = node.wait();
    assert_eq!(answer.status, 404, "{answer:?}");
}

#[test]
fn bad_input_is_named() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("dev")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let err = run(&["/no/such/app"]);
    assert!(
        err.contains("app directory /no/such/app does not exist"),
        "{err}"
    );
    let fixture = root().join("fixtures/faas-hello");
    let fixture = fixture.to_str().unwrap();
    let err = run(&[fixture, "--env", "NOEQUALS"]);
    assert!(err.contains("invalid --env \"NOEQUALS\""), "{err}");
    let err = run(&[fixture, "--runtime", "lambda"]);
    assert!(err.contains("unknown runtime \"lambda\""), "{err}");
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = run(&[fixture, "--port", &port]);
    assert!(err.contains(&format!("port {port} is in use")), "{err}");
}

#[test]
fn sma_light_lists_pages_and_handlers_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("light-pages", tmp.path());
    let mut dev = Dev::start(&dir);
    dev.wait_serving("sma-light");
    let hello = dev.get("/hello?name=dev").unwrap();
    assert!(hello.body.contains("Hello, dev!"), "{hello:?}");
    let listed = json(dev.get("/kiln/dev.json"));
    assert_eq!(listed["runtime"], "sma-light");
    let urls = listed_urls(&listed);
    for url in [
        "/hello",
        "/api/time",
        "/api/version",
        "/index.html",
        "/style.css",
    ] {
        assert!(urls.iter().any(|u| u == url), "{url} not in {listed}");
    }
    save(
        &dir.join("api/version.js"),
        "module.exports = async () => ({ version: 'edited' });\n",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Some(r) = dev.get("/api/version")
            && r.body.contains("edited")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edit was never served"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    dev.stop();
}
