//! The JetStream resources kiln uses, created by whoever connects first (with the replicas
//! wanted, raised when an earlier start made fewer):
//!
//! | name | kind |
//! | --- | --- |
//! | `KILN_JOBS` on `kiln.jobs.>` | work-queue stream, file storage, duplicate window on job id |
//! | `kiln-workers` | durable pull consumer, explicit ack, AckWait + heartbeats, MaxDeliver, backoff |
//! | `kiln-sources` | object store of source tarballs, named by digest |
//! | `KILN_EVENTS` on `kiln.events.>` | limits stream (age) of job events |
//! | `KILN_REVISIONS` on `kiln.revisions.>` | what the deployer consumes |
//! | `kiln-revisions` | KV: revision records and indexes |
//! | `kiln-layer-cache` | KV: layer cache key → layer descriptor and repository |
//! | `kiln-light` | KV: each sma-light app's pointer (live version, canary) and version records |
//! | `kiln-light-instances` | KV: what each running sma-light instance serves (expires) |
//! | `kiln-bundles` | object store of sma-light bundles, named by digest |
//! | `KILN_ADVISORIES` on the `kiln-workers` max-deliveries advisory | work queue, kept while no worker runs |
//! | `kiln-advisories` | durable pull consumer of it: one worker handles each advisory |
//!
//! `connect` reaches a server of the list (credentials, TLS, patience), `resources` finds or
//! creates the streams and stores with the replicas wanted, `publish` publishes (every
//! JetStream publish of kiln goes through it) and `retry` rides out a leader election.

mod connect;
pub(crate) mod publish;
mod resources;
pub mod retry;
mod servers;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store};

pub use connect::{ConnectError, Credentials, NatsOptions, Patience, Tls};
pub use servers::Secret;

/// Work-queue stream of jobs.
pub const JOBS_STREAM: &str = "KILN_JOBS";
/// Subject prefix of build jobs (`kiln.jobs.build.<app>`).
pub const JOBS_BUILD_SUBJECT: &str = "kiln.jobs.build";
/// The workers' durable consumer.
pub const WORKERS_CONSUMER: &str = "kiln-workers";
/// Object store of source tarballs.
pub const SOURCES_BUCKET: &str = "kiln-sources";
/// Events stream.
pub const EVENTS_STREAM: &str = "KILN_EVENTS";
/// Revisions stream (deployer feed).
pub const REVISIONS_STREAM: &str = "KILN_REVISIONS";
/// KV of revisions.
pub const REVISIONS_BUCKET: &str = "kiln-revisions";
/// KV of layers shared between workers (cache key → layer and repository).
pub const LAYER_CACHE_BUCKET: &str = "kiln-layer-cache";
/// KV of sma-light pointers (`<app>`) and version records (`<app>.versions.<n>`).
pub const LIGHT_POINTERS_BUCKET: &str = "kiln-light";
/// KV of running sma-light instances (`<app>.<instance>`), refreshed by each instance.
pub const LIGHT_INSTANCES_BUCKET: &str = "kiln-light-instances";
/// How long an instance's record outlives its last refresh.
pub const LIGHT_INSTANCES_TTL: Duration = Duration::from_secs(15);
/// Object store of sma-light bundles, named `sha256-<hex>`.
pub const BUNDLES_BUCKET: &str = "kiln-bundles";
/// Work-queue stream keeping the max-deliveries advisories of `kiln-workers`.
pub const ADVISORIES_STREAM: &str = "KILN_ADVISORIES";
/// The workers' durable consumer of [`ADVISORIES_STREAM`].
pub const ADVISORIES_CONSUMER: &str = "kiln-advisories";
/// How long a JetStream request or publish waits for its answer.
pub const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a repeated job id is recognised as a duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Deliveries before a job is given up.
pub const MAX_DELIVER: i64 = 5;

/// The subject on which the server reports a job that used up its deliveries.
pub fn max_deliveries_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{WORKERS_CONSUMER}")
}

/// The subject of a job's events.
pub fn events_subject(job_id: &str) -> String {
    format!("kiln.events.{job_id}")
}

/// The subject of an app's revisions.
pub fn revisions_subject(app: &str) -> String {
    format!("kiln.revisions.{app}")
}

/// The error type a [`NatsError`] wraps: the client's error, or a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error talking to NATS, with what kiln was doing and the client's error. Its message
/// already holds the client's, so it is not chained again as a `source`.
#[derive(Debug, thiserror::Error)]
#[error("NATS: {action}: {error}")]
pub struct NatsError {
    /// What kiln was doing.
    pub action: String,
    /// The client's error (or what went wrong, when no client call failed), kept typed.
    pub error: BoxError,
}

impl NatsError {
    /// `action` failed because of `source`.
    pub fn new(action: impl Into<String>, source: impl Into<BoxError>) -> Self {
        NatsError {
            action: action.into(),
            error: source.into(),
        }
    }
}

/// Wraps any NATS client error with `action`.
pub fn nats_err<E: Into<BoxError>>(action: impl Into<String>) -> impl FnOnce(E) -> NatsError {
    let action = action.into();
    move |e| NatsError::new(action, e)
}

/// A connection with every kiln stream, bucket and store at hand.
#[derive(Clone)]
pub struct Queue {
    /// The core client.
    pub client: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
    /// Revision records.
    pub revisions: kv::Store,
    /// Source tarballs.
    pub sources: object_store::ObjectStore,
    /// Layers shared between workers.
    pub layer_cache: kv::Store,
    /// sma-light pointers and version records.
    pub light_pointers: kv::Store,
    /// What running sma-light instances serve.
    pub light_instances: kv::Store,
    /// sma-light bundles.
    pub bundles: object_store::ObjectStore,
    /// The servers, as messages show them (without credentials).
    pub servers: String,
    /// How long a publish (or another call that a leader election fails for a moment)
    /// keeps trying again: [`NatsOptions::timeout`].
    pub publish_budget: Duration,
}

impl Queue {
    /// Connects to `servers` (comma-separated URLs) as [`NatsOptions::new`] says and makes
    /// sure every resource exists.
    pub async fn connect(servers: &str) -> Result<Queue, ConnectError> {
        Queue::connect_with(&NatsOptions::new(servers)).await
    }

    /// Connects as `options` say and makes sure every resource exists with the replicas
    /// wanted; a command gives up after `options.timeout`, a worker retries for ever.
    pub async fn connect_with(options: &NatsOptions) -> Result<Queue, ConnectError> {
        let connect::Connected {
            client,
            servers,
            mut retry,
        } = connect::connect(options).await?;
        let info = client.server_info();
        if !info.jetstream {
            return Err(ConnectError::Setup {
                servers: servers.shown,
                error: format!(
                    "server {} runs without JetStream (start nats-server with -js)",
                    info.server_name
                ),
            });
        }
        let replicas =
            resources::replicas(options.replicas, &info).map_err(ConnectError::Options)?;
        // Every JetStream request and publish ack is bounded (the client would wait up to its
        // 10 s request timeout for an API answer): a call that met a leader election or a
        // reconnect is then tried again within `--nats-timeout` (see `retry`).
        let js = jetstream::ContextBuilder::new()
            .timeout(JETSTREAM_TIMEOUT)
            .build(client.clone());
        retry.reset();
        // A lookup that races another client's creation of the stream may never be answered
        // (nats-server 2.15 drops a stream info request while the new stream has no leader):
        // the first tries are cut short and made again.
        let mut limit = Duration::from_secs(1);
        let stores = loop {
            let error = match tokio::time::timeout(limit, resources::ensure(&js, replicas)).await {
                Ok(Ok(stores)) => break stores,
                Ok(Err(e)) => format!("{}: {}", e.action, e.error),
                Err(_) => format!("no answer within {} s", limit.as_secs()),
            };
            limit = (limit * 2).min(Duration::from_secs(8));
            if !retry
                .wait(&format!("JetStream at {}", servers.shown), &error)
                .await
            {
                return Err(ConnectError::Setup {
                    servers: servers.shown,
                    error,
                });
            }
        };
        Ok(Queue {
            client,
            js,
            revisions: stores.revisions,
            sources: stores.sources,
            layer_cache: stores.layer_cache,
            light_pointers: stores.light_pointers,
            light_instances: stores.light_instances,
            bundles: stores.bundles,
            servers: servers.shown,
            publish_budget: options.timeout,
        })
    }

    /// The workers' consumer, created or updated with `ack_wait`.
    pub async fn workers_consumer(
        &self,
        ack_wait: Duration,
    ) -> Result<consumer::PullConsumer, NatsError> {
        let stream = self
            .js
            .get_stream(JOBS_STREAM)
            .await
            .map_err(nats_err("get stream KILN_JOBS"))?;
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(WORKERS_CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                // Redeliveries after a worker died: one ack wait, then longer. (With backoff
                // set, the server uses backoff[0] as the ack wait; heartbeats go out at a
                // third of it.)
                backoff: vec![ack_wait, ack_wait * 2, ack_wait * 4, ack_wait * 4],
                max_deliver: MAX_DELIVER,
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await
            .map_err(nats_err("create consumer kiln-workers"))
    }

    /// The durable consumer of max-deliveries advisories.
    pub async fn advisories_consumer(&self) -> Result<consumer::PullConsumer, NatsError> {
        let stream = self
            .js
            .get_stream(ADVISORIES_STREAM)
            .await
            .map_err(nats_err("get stream KILN_ADVISORIES"))?;
        stream
            .get_or_create_consumer(
                ADVISORIES_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(ADVISORIES_CONSUMER.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
            .await
            .map_err(nats_err("create consumer kiln-advisories"))
    }
}
