//! Worker counters, served with `/healthz` as Prometheus text on a small HTTP endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Counters of one worker process.
#[derive(Debug, Default)]
pub struct Metrics {
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    deduplicated: AtomicU64,
    duration_ms: AtomicU64,
    layer_hits: AtomicU64,
    layer_misses: AtomicU64,
}

impl Metrics {
    /// A job delivery began.
    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }
    /// A job ended in a revision after `took`.
    pub fn succeeded(&self, took: Duration) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        self.duration_ms
            .fetch_add(took.as_millis() as u64, Ordering::Relaxed);
    }
    /// A job failed for good.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    /// A delivery failed and will be retried.
    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }
    /// A job was answered with an existing revision.
    pub fn deduplicated(&self) {
        self.deduplicated.fetch_add(1, Ordering::Relaxed);
    }
    /// A layer was made (`hit == false`) or found in a cache.
    pub fn layer(&self, hit: bool) {
        let counter = if hit {
            &self.layer_hits
        } else {
            &self.layer_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in lines {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        metric(
            "kiln_jobs_total",
            "counter",
            "Job deliveries by outcome.",
            &[
                ("{outcome=\"started\"}", get(&self.started)),
                ("{outcome=\"revision\"}", get(&self.succeeded)),
                ("{outcome=\"failed\"}", get(&self.failed)),
                ("{outcome=\"retried\"}", get(&self.retried)),
                ("{outcome=\"deduplicated\"}", get(&self.deduplicated)),
            ],
        );
        metric(
            "kiln_job_duration_milliseconds_sum",
            "counter",
            "Time from taking a job to its revision, summed.",
            &[("", get(&self.duration_ms))],
        );
        metric(
            "kiln_layer_cache_total",
            "counter",
            "Layers by cache result.",
            &[
                ("{result=\"hit\"}", get(&self.layer_hits)),
                ("{result=\"miss\"}", get(&self.layer_misses)),
            ],
        );
        out
    }
}

/// Serves `GET /healthz` and `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/healthz" => ("200 OK", "ok\n".to_owned()),
                "/metrics" => ("200 OK", metrics.render()),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}
