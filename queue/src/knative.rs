//! Renders a Knative Serving `Service` (`serving.knative.dev/v1`) for an app: the template
//! names the revision and pins its image by digest; the `traffic` block splits requests over
//! named revisions.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::schema::Revision;

/// One entry of the traffic block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficTarget {
    /// `<app>-<NNNNN>`.
    pub revision: String,
    /// Share of requests, 0–100.
    pub percent: u8,
    /// Route tag (`current`, `candidate`): a URL of its own for this revision.
    pub tag: Option<String>,
}

/// The Service for `template` (the revision the template describes) with `traffic`.
pub fn render(template: &Revision, traffic: &[TrafficTarget]) -> Value {
    let labels = json!({
        "app.kubernetes.io/name": template.app,
        "app.kubernetes.io/managed-by": "kiln",
        "kiln.dev/app": template.app,
        "kiln.dev/runtime": template.runtime,
    });
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        "kiln.dev/source-digest".into(),
        json!(template.source_digest),
    );
    annotations.insert("kiln.dev/base-digest".into(), json!(template.base_digest));
    let d = &template.deploy;
    for (key, value) in [
        ("autoscaling.knative.dev/min-scale", d.min_scale),
        ("autoscaling.knative.dev/max-scale", d.max_scale),
        ("autoscaling.knative.dev/target", d.target),
    ] {
        if let Some(v) = value {
            annotations.insert(key.into(), json!(v.to_string()));
        }
    }
    let env: Vec<Value> = template
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    let mut container = json!({
        "name": "app",
        "image": template.image,
        "ports": [{"containerPort": template.port, "protocol": "TCP"}],
    });
    if !env.is_empty() {
        container["env"] = json!(env);
    }
    let mut resources = serde_json::Map::new();
    for (kind, value) in [("cpu", &d.cpu), ("memory", &d.memory)] {
        if let Some(v) = value {
            resources.insert(kind.into(), json!(v));
        }
    }
    if !resources.is_empty() {
        container["resources"] = json!({"requests": resources, "limits": resources});
    }
    let mut spec = json!({ "containers": [container] });
    if let Some(c) = d.container_concurrency {
        spec["containerConcurrency"] = json!(c);
    }
    let traffic: Vec<Value> = traffic
        .iter()
        .map(|t| {
            let mut entry = json!({
                "revisionName": t.revision,
                "percent": t.percent,
                "latestRevision": false,
            });
            if let Some(tag) = &t.tag {
                entry["tag"] = json!(tag);
            }
            entry
        })
        .collect();
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": template.app,
            "labels": labels,
            "annotations": {
                "kiln.dev/revision": template.name,
                "kiln.dev/source-digest": template.source_digest,
            },
        },
        "spec": {
            "template": {
                "metadata": {
                    "name": template.name,
                    "labels": labels,
                    "annotations": annotations,
                },
                "spec": spec,
            },
            "traffic": traffic,
        },
    })
}

/// The Service as YAML.
pub fn to_yaml(service: &Value) -> String {
    yaml_serde::to_string(service).expect("a JSON value is valid YAML")
}
