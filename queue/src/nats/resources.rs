//! Every stream, KV bucket and object store kiln uses, looked up all at once (connecting costs
//! one round trip's latency however many there are), created only when missing, and raised
//! to the replicas wanted when they have fewer (never lowered).

use std::error::Error;
use std::time::Duration;

use async_nats::ServerInfo;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind, GetStreamError};
use async_nats::jetstream::{self, ErrorCode, kv, object_store, stream};

use super::{
    ADVISORIES_STREAM, BUNDLES_BUCKET, DUPLICATE_WINDOW, EVENTS_STREAM, JOBS_STREAM,
    LAYER_CACHE_BUCKET, LIGHT_INSTANCES_BUCKET, LIGHT_INSTANCES_TTL, LIGHT_POINTERS_BUCKET,
    NatsError, REVISIONS_BUCKET, REVISIONS_STREAM, SOURCES_BUCKET, max_deliveries_subject,
};

/// The stores the queue keeps handles of.
pub(super) struct Stores {
    pub revisions: kv::Store,
    pub layer_cache: kv::Store,
    pub sources: object_store::ObjectStore,
    pub light_pointers: kv::Store,
    pub light_instances: kv::Store,
    pub bundles: object_store::ObjectStore,
}

/// Most replicas a default asks for (a quorum survives one lost server).
const MAX_DEFAULT_REPLICAS: usize = 3;

/// The replicas wanted: `given`, else the number of servers the connected server advertises
/// in its cluster (its INFO's `connect_urls`, itself included), at most 3; 1 on a server
/// alone.
pub(super) fn replicas(given: Option<usize>, info: &ServerInfo) -> Result<usize, String> {
    match (given, &info.cluster) {
        (Some(0), _) => Err("replicas must be at least 1".into()),
        (Some(n), None) if n > 1 => Err(format!(
            "{n} replicas need a NATS cluster, and server {} is not in one",
            info.server_name
        )),
        (Some(n), _) => Ok(n),
        (None, None) => Ok(1),
        (None, Some(cluster)) => {
            let servers = info.connect_urls.len();
            if servers <= 1 {
                tracing::warn!(
                    "NATS server {} is in cluster {cluster} but advertises no other server: \
                     1 replica (give --replicas to choose)",
                    info.server_name
                );
            }
            Ok(servers.clamp(1, MAX_DEFAULT_REPLICAS))
        }
    }
}

/// Finds or creates every resource with at least `replicas` replicas.
pub(super) async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<Stores, NatsError> {
    let no_ttl = Duration::ZERO;
    let (_, _, _, _, revisions, layer_cache, sources) = tokio::try_join!(
        stream(js, jobs_config(), replicas),
        stream(js, events_config(), replicas),
        stream(js, revisions_config(), replicas),
        stream(js, advisories_config(), replicas),
        key_value(js, REVISIONS_BUCKET, no_ttl, replicas),
        key_value(js, LAYER_CACHE_BUCKET, no_ttl, replicas),
        object_store(js, SOURCES_BUCKET, replicas),
    )?;
    let (light_pointers, light_instances, bundles) = tokio::try_join!(
        key_value(js, LIGHT_POINTERS_BUCKET, no_ttl, replicas),
        key_value(js, LIGHT_INSTANCES_BUCKET, LIGHT_INSTANCES_TTL, replicas),
        object_store(js, BUNDLES_BUCKET, replicas),
    )?;
    Ok(Stores {
        revisions,
        layer_cache,
        sources,
        light_pointers,
        light_instances,
        bundles,
    })
}

/// `KILN_JOBS`: the work queue, deduplicated on job id.
fn jobs_config() -> stream::Config {
    stream::Config {
        name: JOBS_STREAM.into(),
        subjects: vec!["kiln.jobs.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// `KILN_EVENTS`: job events, a week.
fn events_config() -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec!["kiln.events.>".into()],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    }
}

/// `KILN_REVISIONS`: the deployer's feed.
fn revisions_config() -> stream::Config {
    stream::Config {
        name: REVISIONS_STREAM.into(),
        subjects: vec!["kiln.revisions.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// `KILN_ADVISORIES`: the server publishes advisories on core NATS only, so a stream keeps
/// them for a worker that starts later.
fn advisories_config() -> stream::Config {
    stream::Config {
        name: ADVISORIES_STREAM.into(),
        subjects: vec![max_deliveries_subject()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    }
}

/// The stream `config.name`, created when missing.
async fn stream(
    js: &jetstream::Context,
    config: stream::Config,
    replicas: usize,
) -> Result<(), NatsError> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(found) => return raise(js, found.cached_info(), replicas).await,
        Err(e) if api_code(&e) != Some(ErrorCode::STREAM_NOT_FOUND) => {
            return Err(NatsError::new(format!("look up stream {name}"), e));
        }
        Err(_) => {}
    }
    let config = stream::Config {
        num_replicas: replicas,
        ..config
    };
    match js.create_stream(config).await {
        Ok(_) => tracing::debug!("stream {name}: created"),
        // Created meanwhile by another client, with other replicas.
        Err(e) if api_code(&e) == Some(ErrorCode::STREAM_NAME_EXIST) => {}
        Err(e) => return Err(NatsError::new(format!("create stream {name}"), e)),
    }
    settle(js, &name, replicas).await
}

/// The KV bucket `bucket` (file storage, history 1, entries kept for `max_age` or for ever
/// when zero), created when missing.
async fn key_value(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, NatsError> {
    let look_up = |e| NatsError::new(format!("look up KV {bucket}"), e);
    match js.get_key_value(bucket).await {
        Ok(store) => {
            raise(js, store.stream.cached_info(), replicas).await?;
            return Ok(store);
        }
        Err(e) if api_code(&e) != Some(ErrorCode::STREAM_NOT_FOUND) => return Err(look_up(e)),
        Err(_) => {}
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: bucket.into(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => {
            tracing::debug!("KV {bucket}: created");
            settle(js, &store.stream_name, replicas).await?;
            Ok(store)
        }
        Err(e) if api_code(&e) == Some(ErrorCode::STREAM_NAME_EXIST) => {
            let store = js.get_key_value(bucket).await.map_err(look_up)?;
            raise(js, store.stream.cached_info(), replicas).await?;
            Ok(store)
        }
        Err(e) => Err(NatsError::new(format!("create KV {bucket}"), e)),
    }
}

/// The object store `bucket`, created when missing.
async fn object_store(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<object_store::ObjectStore, NatsError> {
    let name = format!("OBJ_{bucket}");
    let open = |e| NatsError::new(format!("open object store {bucket}"), e);
    // The store's handle hides its stream's config: ask for both at once.
    let (found, store) = tokio::join!(js.get_stream(&name), js.get_object_store(bucket));
    match (found, store) {
        (Ok(found), Ok(store)) => {
            raise(js, found.cached_info(), replicas).await?;
            return Ok(store);
        }
        (Err(e), _) if api_code(&e) != Some(ErrorCode::STREAM_NOT_FOUND) => {
            return Err(NatsError::new(format!("look up stream {name}"), e));
        }
        (Ok(_), Err(e)) => return Err(open(e)),
        (Err(_), _) => {}
    }
    let created = js
        .create_object_store(object_store::Config {
            bucket: bucket.into(),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => {
            tracing::debug!("object store {bucket}: created");
            settle(js, &name, replicas).await?;
            Ok(store)
        }
        Err(e) if api_code(&e) == Some(ErrorCode::STREAM_NAME_EXIST) => {
            settle(js, &name, replicas).await?;
            js.get_object_store(bucket).await.map_err(open)
        }
        Err(e) => Err(NatsError::new(format!("create object store {bucket}"), e)),
    }
}

/// Looks a stream up again after it was created (here or by a racing client). A create's
/// answer may come before the new stream's leader has told this server it takes the
/// stream's subjects, and a publish then finds "no stream" (nats-server 2.15); the leader's
/// answer to a lookup comes after its interest, on the same route.
async fn settle(js: &jetstream::Context, name: &str, replicas: usize) -> Result<(), NatsError> {
    let found = js
        .get_stream(name)
        .await
        .map_err(|e| NatsError::new(format!("look up stream {name}"), e))?;
    raise(js, found.cached_info(), replicas).await
}

/// Raises a stream made with fewer replicas than wanted. When the cluster cannot place them
/// (a server down), the stream keeps working as it is and a warning says how to raise it.
/// A stream found without a leader (just created by another client, or its leader lost) is
/// an error, so that the set-up is tried again: it cannot take writes yet.
async fn raise(
    js: &jetstream::Context,
    info: &stream::Info,
    replicas: usize,
) -> Result<(), NatsError> {
    let name = &info.config.name;
    tracing::debug!(
        "stream {name}: {} replica(s), leader {:?}",
        info.config.num_replicas,
        info.cluster.as_ref().and_then(|c| c.leader.as_deref())
    );
    if let Some(cluster) = &info.cluster
        && cluster.leader.as_deref().unwrap_or("").is_empty()
    {
        return Err(NatsError::new(
            format!("stream {name}"),
            "no leader yet (the cluster is electing one)",
        ));
    }
    let have = info.config.num_replicas.max(1);
    if have >= replicas {
        return Ok(());
    }
    let config = stream::Config {
        num_replicas: replicas,
        ..info.config.clone()
    };
    match js.update_stream(&config).await {
        Ok(_) => tracing::warn!("stream {name}: raised from {have} to {replicas} replicas"),
        Err(e) => tracing::warn!(
            "stream {name} keeps {have} replica(s), {replicas} wanted: {e}; kiln raises it on a \
             later start once the cluster can place them (or `nats stream edit {name} \
             --replicas {replicas}`; --replicas {have} silences this)"
        ),
    }
    Ok(())
}

/// The JetStream API error code somewhere in `error`'s chain.
fn api_code(error: &(dyn Error + 'static)) -> Option<ErrorCode> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<GetStreamError>()
            && let GetStreamErrorKind::JetStream(api) = e.kind()
        {
            return Some(api.error_code());
        }
        if let Some(e) = e.downcast_ref::<CreateStreamError>()
            && let CreateStreamErrorKind::JetStream(api) = e.kind()
        {
            return Some(api.error_code());
        }
        next = e.source();
    }
    None
}
