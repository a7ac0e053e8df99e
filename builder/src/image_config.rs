//! The image's config and manifest: the base's config with the runtime's entrypoint, port and
//! environment, the app's environment, a non-root user, and one history entry per new layer.

use std::collections::BTreeMap;

use kiln_layers::oci::History;
use kiln_layers::{BlobStore, Descriptor, ImageManifest, Layer};
use kiln_runtimes::Runtime;
use serde_json::json;

use crate::image::{Base, rfc3339};
use crate::{BuildError, Result};

/// Splits `KEY=value` pairs, refusing keys that are not letters, digits and `_` (not starting
/// with a digit).
pub fn parse_env(env: &[String]) -> Result<Vec<(String, String)>> {
    env.iter()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| BuildError::InvalidOption {
                    what: "--env",
                    value: kv.clone(),
                    problem: "expected KEY=value".into(),
                })?;
            let valid = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(BuildError::InvalidOption {
                    what: "--env",
                    value: kv.clone(),
                    problem: "key must be letters, digits and _, not starting with a digit".into(),
                });
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// What goes on top of a base: new layers (each with its history line) and settings.
pub(crate) struct Settings<'a> {
    /// The runtime: entrypoint and port.
    pub runtime: &'a Runtime,
    /// The new layers, bottom first, with their history lines.
    pub layers: &'a [(Layer, String)],
    /// Environment, after the base's and the defaults.
    pub env: Vec<(String, String)>,
    /// Creation time (`SOURCE_DATE_EPOCH`).
    pub epoch: u64,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// The working directory (`/app`, or a monorepo package's).
    pub working_dir: &'a str,
}

/// Writes config and manifest of `base` plus `settings`.
pub(crate) fn write_image(
    store: &BlobStore,
    base: &Base,
    settings: Settings,
) -> Result<(Descriptor, ImageManifest)> {
    let Settings {
        runtime,
        layers,
        env,
        epoch,
        annotations,
        working_dir,
    } = settings;
    let created = rfc3339(epoch);
    let mut config = base.config.clone();
    config.created = Some(created.clone());
    let run = &mut config.config;
    let mut vars: Vec<(String, String)> = run
        .env
        .take()
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let defaults = [
        ("NODE_ENV".to_owned(), "production".to_owned()),
        ("PORT".to_owned(), runtime.port.to_string()),
    ];
    for (k, v) in defaults.into_iter().chain(env) {
        vars.retain(|(key, _)| key != &k);
        vars.push((k, v));
    }
    run.env = Some(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect());
    run.entrypoint = Some(runtime.entrypoint.clone());
    run.cmd = None;
    run.working_dir = Some(working_dir.into());
    let user = run
        .user
        .take()
        .filter(|u| !u.is_empty() && u != "root" && !u.starts_with("0:") && u != "0");
    run.user = Some(user.unwrap_or_else(|| "65534:65534".into()));
    run.exposed_ports = Some(BTreeMap::from([(
        format!("{}/tcp", runtime.port),
        json!({}),
    )]));
    for (layer, created_by) in layers {
        config.rootfs.diff_ids.push(layer.diff_id.clone());
        config.history.push(History {
            created: Some(created.clone()),
            created_by: Some(created_by.clone()),
            ..History::default()
        });
    }
    let mut all_layers = base.manifest.layers.clone();
    all_layers.extend(layers.iter().map(|(l, _)| l.descriptor.clone()));
    Ok(store.write_image(&config, all_layers, annotations)?)
}
