//! A 3-node JetStream cluster on loopback: `nats-server -js --cluster … --routes …`, each node
//! with its own free ports (client, route, monitoring), store directory and server name. Ready
//! when every live node's `/healthz?js-enabled-only=true` says ok and JetStream has a meta
//! leader; nodes can be killed (SIGKILL) and restarted on the same ports and store; all are
//! killed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// One node.
pub struct Node {
    child: Option<Child>,
    /// Server name (`n1`, …).
    pub name: String,
    /// Client port.
    pub port: u16,
    route_port: u16,
    monitor_port: u16,
    dir: TempDir,
}

/// A running cluster.
pub struct TestCluster {
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
    /// Every node's client URL, comma-separated (what `--nats` takes).
    pub url: String,
    routes: String,
}

impl TestCluster {
    /// Starts `size` nodes and waits until the cluster is ready.
    pub fn start(size: usize) -> TestCluster {
        let nodes: Vec<Node> = (1..=size)
            .map(|i| Node {
                child: None,
                name: format!("n{i}"),
                port: super::super::free_port(),
                route_port: super::super::free_port(),
                monitor_port: super::super::free_port(),
                dir: tempfile::tempdir().unwrap(),
            })
            .collect();
        let url = nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",");
        let routes = nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.route_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster { nodes, url, routes };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_ready(Duration::from_secs(30));
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-n", &node.name])
            .args(["-p", &node.port.to_string()])
            .args(["-m", &node.monitor_port.to_string()])
            .arg("-sd")
            .arg(node.dir.path())
            .args(["--cluster_name", "kiln-test"])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", node.route_port),
            ])
            .args(["--routes", &self.routes])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (2.10+) is installed");
        self.nodes[i].child = Some(child);
    }

    /// Kills node `i` with SIGKILL (its store stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and store and waits until the cluster is ready.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.nodes[i].child.is_none(),
            "{} is running",
            self.nodes[i].name
        );
        self.spawn(i);
        self.wait_ready(Duration::from_secs(30));
    }

    /// The live nodes' indexes.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect()
    }

    /// Waits until every live node is healthy with JetStream and a meta leader is known.
    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let healthy = self.live().into_iter().all(|i| {
                self.get(i, "/healthz?js-enabled-only=true")
                    .is_some_and(|body| body.contains("\"ok\""))
            });
            let leader = self
                .live()
                .into_iter()
                .find_map(|i| {
                    self.jsz(i, "")?["meta_cluster"]["leader"]
                        .as_str()
                        .map(str::to_owned)
                })
                .filter(|l| !l.is_empty());
            if healthy && leader.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "NATS cluster not ready after {within:?} (healthy: {healthy}, meta leader: {leader:?})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the node leading `stream`, as a live node's `/jsz` names it.
    pub fn leader_of(&self, stream: &str) -> Option<usize> {
        let name = self.live().into_iter().find_map(|i| {
            let jsz = self.jsz(i, "?streams=true")?;
            jsz["account_details"]
                .as_array()?
                .iter()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|s| s["name"] == stream)?["cluster"]["leader"]
                .as_str()
                .map(str::to_owned)
        })?;
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Waits (at most `within`) until `stream` has a leader on a live node; returns it.
    pub fn wait_leader_of(&self, stream: &str, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.leader_of(stream).filter(|i| self.live().contains(i)) {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "{stream} has no live leader after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `/jsz` + `query` of node `i`, parsed.
    fn jsz(&self, i: usize, query: &str) -> Option<serde_json::Value> {
        serde_json::from_str(&self.get(i, &format!("/jsz{query}"))?).ok()
    }

    /// The body of `GET path` on node `i`'s monitoring port, or `None` when it does not answer.
    fn get(&self, i: usize, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.nodes[i].monitor_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        (head.split(' ').nth(1) == Some("200")).then(|| body.to_owned())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
