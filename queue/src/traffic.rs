//! Traffic operations on an app's revisions (deploy, canary, promote, rollback): no rebuild,
//! no registry write. The state lives in `kiln-revisions` under `traffic.<app>` (updated by
//! compare-and-set); each operation is published on `kiln.revisions.<app>` for the deployer,
//! with the Knative Service it implies.

use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::knative::{TrafficTarget, render};
use crate::nats::{self, BoxError, NatsError, Queue, nats_err};
use crate::revisions;
use crate::schema::{Revision, SCHEMA_VERSION, now};

/// An app's traffic split and the revisions it had at 100 %, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The app.
    pub app: String,
    /// Current split.
    pub targets: Vec<TrafficTarget>,
    /// Revisions that had all traffic, oldest first (rollback walks back through it).
    pub history: Vec<String>,
    /// When it last changed.
    pub updated: String,
}

/// What to do with the traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// All traffic to a revision.
    Deploy(String),
    /// `percent` to a candidate, the rest to the current revision; both tagged.
    Canary(String, u8),
    /// All traffic to the canary candidate.
    Promote,
    /// All traffic back to the revision deployed before the current one; with a canary in
    /// flight, the canary is aborted instead (all traffic to the revision it was split from).
    Rollback,
}

/// Published on `kiln.revisions.<app>` after each operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrafficEvent {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Always `traffic` (revision records on the same subject have no `event`).
    pub event: String,
    /// `deploy`, `canary`, `promote` or `rollback`.
    pub operation: String,
    /// The new state.
    pub traffic: Traffic,
    /// The Knative Service to apply.
    pub service: Value,
    /// When.
    pub at: String,
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The app has no revisions.
    #[error("app {0:?} has no revisions")]
    UnknownApp(String),
    /// The revision does not exist for the app.
    #[error("app {app:?} has no revision {revision:?} (latest: {latest})")]
    UnknownRevision {
        /// The app.
        app: String,
        /// What was asked for.
        revision: String,
        /// The app's latest revision.
        latest: String,
    },
    /// The operation does not apply in the current state.
    #[error("{0}")]
    Refused(String),
    /// NATS trouble.
    #[error(transparent)]
    Nats(#[from] NatsError),
}

fn key(app: &str) -> String {
    format!("traffic.{app}")
}

/// The current traffic of `app` (empty when nothing was deployed).
pub async fn current(queue: &Queue, app: &str) -> Result<Traffic, NatsError> {
    Ok(load(queue, app).await?.0)
}

async fn load(queue: &Queue, app: &str) -> Result<(Traffic, Option<u64>), NatsError> {
    match queue
        .revisions
        .entry(key(app))
        .await
        .map_err(nats_err("read traffic"))?
    {
        Some(entry) if !entry.value.is_empty() => {
            let t = serde_json::from_slice(&entry.value).map_err(nats_err("decode traffic"))?;
            Ok((t, Some(entry.revision)))
        }
        _ => Ok((
            Traffic {
                schema_version: SCHEMA_VERSION,
                app: app.into(),
                ..Traffic::default()
            },
            None,
        )),
    }
}

async fn revision(queue: &Queue, app: &str, name: &str) -> Result<Revision, TrafficError> {
    let latest = revisions::latest_number(queue, app).await?;
    if latest == 0 {
        return Err(TrafficError::UnknownApp(app.into()));
    }
    let found = if name.starts_with(&format!("{app}-")) {
        revisions::by_name(queue, name).await?
    } else {
        None
    };
    found.ok_or_else(|| TrafficError::UnknownRevision {
        app: app.into(),
        revision: name.into(),
        latest: crate::schema::revision_name(app, latest),
    })
}

/// Applies `op` to `app`'s traffic; returns the event (new state and Service) it published.
pub async fn apply(queue: &Queue, app: &str, op: &Operation) -> Result<TrafficEvent, TrafficError> {
    for _ in 0..20 {
        let (mut traffic, version) = load(queue, app).await?;
        let primary = traffic
            .targets
            .iter()
            .max_by_key(|t| t.percent)
            .map(|t| t.revision.clone());
        let (operation, template) = match op {
            Operation::Deploy(name) => {
                let r = revision(queue, app, name).await?;
                all_to(&mut traffic, &r.name);
                ("deploy", r)
            }
            Operation::Canary(name, percent) => {
                if !(1..=99).contains(percent) {
                    return Err(TrafficError::Refused(format!(
                        "canary percent must be 1-99, not {percent}"
                    )));
                }
                let candidate = revision(queue, app, name).await?;
                let Some(current) = primary else {
                    return Err(TrafficError::Refused(format!(
                        "app {app:?} has nothing deployed: deploy a revision before a canary"
                    )));
                };
                if current == candidate.name {
                    return Err(TrafficError::Refused(format!(
                        "{current} already has the traffic: pick another revision as candidate"
                    )));
                }
                traffic.targets = vec![
                    TrafficTarget {
                        revision: current,
                        percent: 100 - percent,
                        tag: Some("current".into()),
                    },
                    TrafficTarget {
                        revision: candidate.name.clone(),
                        percent: *percent,
                        tag: Some("candidate".into()),
                    },
                ];
                ("canary", candidate)
            }
            Operation::Promote => {
                let Some(candidate) = canary(&traffic) else {
                    return Err(TrafficError::Refused(format!(
                        "app {app:?} has no canary to promote"
                    )));
                };
                let r = revision(queue, app, &candidate).await?;
                all_to(&mut traffic, &r.name);
                ("promote", r)
            }
            Operation::Rollback if canary(&traffic).is_some() => {
                // A canary in flight: rolling back aborts it, and the revision it was
                // measured against gets all traffic again.
                let current = traffic
                    .targets
                    .iter()
                    .find(|t| t.tag.as_deref() != Some("candidate"))
                    .map(|t| t.revision.clone())
                    .unwrap_or_default();
                let r = revision(queue, app, &current).await?;
                all_to(&mut traffic, &r.name);
                ("rollback", r)
            }
            Operation::Rollback => {
                let Some(current) = primary else {
                    return Err(TrafficError::Refused(format!(
                        "app {app:?} has nothing deployed to roll back"
                    )));
                };
                // Drop the current revision from the end of the history; the one before it
                // gets the traffic.
                while traffic.history.last() == Some(&current) {
                    traffic.history.pop();
                }
                let Some(previous) = traffic.history.pop() else {
                    return Err(TrafficError::Refused(format!(
                        "app {app:?} has no earlier deployed revision than {current}"
                    )));
                };
                let r = revision(queue, app, &previous).await?;
                all_to(&mut traffic, &r.name);
                ("rollback", r)
            }
        };
        traffic.updated = now();
        let body = Bytes::from(serde_json::to_vec(&traffic).expect("traffic"));
        let written: Result<(), BoxError> = match version {
            None => match queue.revisions.create(key(app), body).await {
                Ok(_) => Ok(()),
                // Another operation wrote the first traffic: read it and apply again.
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => continue,
                Err(e) => Err(e.into()),
            },
            Some(v) => match queue.revisions.update(key(app), body, v).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => Err(e.into()),
            },
        };
        if let Err(e) = written {
            return Err(NatsError::new("write traffic", e).into());
        }
        let event = TrafficEvent {
            schema_version: SCHEMA_VERSION,
            event: "traffic".into(),
            operation: operation.into(),
            service: render(&template, &traffic.targets),
            traffic,
            at: now(),
        };
        queue
            .publish(
                nats::revisions_subject(app),
                serde_json::to_vec(&event).expect("event"),
            )
            .await?;
        return Ok(event);
    }
    Err(TrafficError::Refused(format!(
        "app {app:?}: traffic kept changing under us; try again"
    )))
}

/// The canary candidate in flight, if any.
fn canary(traffic: &Traffic) -> Option<String> {
    traffic
        .targets
        .iter()
        .find(|t| t.tag.as_deref() == Some("candidate"))
        .map(|t| t.revision.clone())
}

/// All traffic to `revision`, remembered in the history.
fn all_to(traffic: &mut Traffic, revision: &str) {
    traffic.targets = vec![TrafficTarget {
        revision: revision.into(),
        percent: 100,
        tag: Some("current".into()),
    }];
    if traffic.history.last().map(String::as_str) != Some(revision) {
        traffic.history.push(revision.into());
    }
}
