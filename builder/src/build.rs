//! The build: base → runtime layer → deps layer (`/app/node_modules`) → app layer (`/app`) →
//! config → manifest, every layer looked up in the cache by key before it is made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_layers::ImageManifest;
use kiln_layers::oci::History;
use kiln_layers::source::ScanOptions;
use kiln_layers::{
    BlobStore, CacheKey, Descriptor, Digest, Entry, Layer, LayerBuilder, LayerCache, SourceTree,
};
use kiln_runtimes::Runtime;
use serde_json::json;

use crate::host_base::{LABEL_LIBC, LABEL_NODE_ABI, LABEL_NODE_VERSION, host_base};
use crate::image::{Base, rfc3339};
use crate::project::{BuildScript, ProjectConfig};
use crate::shared::{NoSharedLayers, SharedLayers};
use crate::start::{AppFiles, ENV_START};
use crate::{
    BuildError, Progress, Result, Step, build_step, native, node_version, npm, seen, start,
};

/// Manifest annotation: the runtime an image was built for.
pub const ANNOTATION_RUNTIME: &str = "dev.kiln.runtime";
/// Manifest annotation: digest of the app source and its dependency inputs.
pub const ANNOTATION_SOURCE: &str = "dev.kiln.source.digest";
/// Manifest annotation: base image name.
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
/// Manifest annotation: base image manifest digest.
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// Config label of a runtime base (`kiln runtime publish`): the runtime whose layer it holds.
pub const LABEL_RUNTIME: &str = "dev.kiln.runtime";

/// Where the base image comes from.
#[derive(Clone, Debug)]
pub enum BaseSource {
    /// Made from the host's `node` (on `PATH` when `None`): the offline default.
    Host(Option<PathBuf>),
    /// An image already in the cache store (pulled from a registry), by manifest.
    Stored {
        /// Its full reference, recorded as the base name.
        name: String,
        /// Its manifest in the cache store.
        manifest: Descriptor,
        /// Whether all of it was in the cache before (nothing pulled).
        cache_hit: bool,
    },
    /// An image in a local OCI layout, by reference name.
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// The reference name in its `index.json`.
        tag: String,
    },
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The app's source directory.
    pub source: PathBuf,
    /// Runtime name; detected from the source when `None`.
    pub runtime: Option<String>,
    /// The base image.
    pub base: BaseSource,
    /// Extra `KEY=value` environment for the image.
    pub env: Vec<String>,
    /// mtime of app and deps entries and the image's `created` (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: u64,
    /// The cache directory (an OCI layout plus key files).
    pub cache_dir: PathBuf,
    /// `--start`: the start command of an `app` image, over the project config and
    /// `scripts.start`.
    pub start: Option<String>,
    /// `--build-script NAME` / `--no-build`, over the project config.
    pub build_script: BuildScript,
}

/// A built image; its blobs are in `store`.
#[derive(Clone, Debug)]
pub struct Built {
    /// The image manifest.
    pub manifest: Descriptor,
    /// Every blob of the image: layers, config, manifest.
    pub blobs: Vec<Digest>,
    /// The store holding them (the cache layout).
    pub store: BlobStore,
}

impl Built {
    /// The image with manifest `manifest` (document `image`) whose blobs are in `store`.
    pub fn new(store: BlobStore, manifest: Descriptor, image: &ImageManifest) -> Built {
        let mut blobs: Vec<Digest> = image.layers.iter().map(|d| d.digest.clone()).collect();
        blobs.push(image.config.digest.clone());
        blobs.push(manifest.digest.clone());
        Built {
            manifest,
            blobs,
            store,
        }
    }
}

/// Builds the image `request` describes, reporting steps to `progress`.
pub fn build(request: &BuildRequest, progress: &dyn Progress) -> Result<Built> {
    build_with(request, progress, &NoSharedLayers)
}

/// [`build`], looking dependency layers up in `shared` when the local cache misses.
pub fn build_with(
    request: &BuildRequest,
    progress: &dyn Progress,
    shared: &dyn SharedLayers,
) -> Result<Built> {
    let source = &request.source;
    if !source.is_dir() {
        return Err(kiln_layers::Error::SourceMissing(source.clone()).into());
    }
    let packages = npm::read(source)?;
    let config = ProjectConfig::read(source, &packages.package)?;
    let (runtime_name, reason) = match (&request.runtime, &config.runtime) {
        (Some(name), _) => (name.clone(), "--runtime".to_owned()),
        (None, Some(name)) => (name.clone(), "kiln.runtime in package.json".to_owned()),
        (None, None) => {
            let (name, reason) = kiln_runtimes::detect(source);
            (name.to_owned(), format!("detected: {reason}"))
        }
    };
    let runtime = Runtime::get(&runtime_name)?;
    progress.step(Step::Runtime {
        name: runtime_name.clone(),
        reason,
    });
    let configured_env: Vec<String> = config.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut env = parse_env(&configured_env)?;
    env.extend(parse_env(&request.env)?);
    let build_script = build_step::choose(
        source,
        &packages.package,
        &config.build_script(&request.build_script),
    )?;

    let cache = LayerCache::open(&request.cache_dir)?;
    let store = cache.store().clone();
    let base = resolve_base(&request.base, &store, progress)?;
    if let Some(have) = base.label(LABEL_NODE_VERSION) {
        node_version::check(source, &packages.package, have)?;
    }

    let mut layers: Vec<(Layer, String)> = Vec::new();
    match base.label(LABEL_RUNTIME) {
        None => {
            let runtime_layer = runtime_layer(&runtime, &cache, progress)?;
            layers.push((runtime_layer, format!("kiln runtime {}", runtime.name)));
        }
        Some(name) if name == runtime.name => {
            if let Some(top) = base.manifest.layers.last() {
                progress.step(Step::Layer {
                    kind: "runtime",
                    detail: format!("{name}, in the runtime base"),
                    descriptor: top.clone(),
                    cache_hit: true,
                    cache_key: None,
                });
            }
        }
        Some(other) => {
            return Err(BuildError::Base {
                reference: base.name.clone(),
                problem: format!(
                    "is the runtime base of {other}, but the app uses runtime {}",
                    runtime.name
                ),
            });
        }
    }

    let epoch = request.source_date_epoch.to_string();
    let abi = base.label(LABEL_NODE_ABI).unwrap_or("unknown");
    let platform = format!(
        "{}/{}/{}",
        base.config.os,
        base.config.architecture,
        base.label(LABEL_LIBC).unwrap_or("unknown")
    );
    let deps_key = deps_layer(
        source,
        &packages,
        &cache,
        &runtime.name,
        abi,
        &platform,
        &epoch,
        &config,
        progress,
        shared,
    )?;
    if let Some((layer, key, detail)) = &deps_key {
        layers.push((
            layer.clone(),
            format!("kiln deps: {detail} ({})", key.hex()),
        ));
    }

    let tree = SourceTree::scan(
        source,
        &ScanOptions {
            ignore_files: true,
            exclude_top: vec!["node_modules".into()],
        },
    )?;
    let content = tree.content_key()?;
    let lockfile = packages.lockfile.as_deref();
    let (app_layer, app_key, hit, shipped) = match &build_script {
        None => {
            let app_key = CacheKey::new("app")
                .with("content", content.as_str())
                .with("mtime", &epoch);
            let (layer, hit) = cached_layer(&cache, &app_key, || {
                let mut layer = LayerBuilder::new(request.source_date_epoch);
                layer.add("app", Entry::dir());
                tree.add_to(&mut layer, "app");
                add_framework_dirs(&mut layer, &packages.package);
                Ok(layer.write_to(&store)?)
            })?;
            let shipped = tree.entries().iter().map(|e| e.rel.clone()).collect();
            (layer, app_key, hit, shipped)
        }
        Some(script) => {
            let app_key = build_step::key(&content, lockfile, script).with("mtime", &epoch);
            let timeout = config.script_timeout();
            let mut shipped = Vec::new();
            let (layer, hit) = cached_layer(&cache, &app_key, || {
                let built = build_step::run(&tree, lockfile, script, &cache, timeout, progress)?;
                let built_tree = SourceTree::scan(
                    built.path(),
                    &ScanOptions {
                        ignore_files: true,
                        exclude_top: vec!["node_modules".into()],
                    },
                )?;
                let mut layer = LayerBuilder::new(request.source_date_epoch);
                layer.add("app", Entry::dir());
                built_tree.add_to(&mut layer, "app");
                add_framework_dirs(&mut layer, &packages.package);
                shipped = built_tree.entries().iter().map(|e| e.rel.clone()).collect();
                Ok(layer.write_to(&store)?)
            })?;
            if hit {
                shipped = layer_paths(&store, &layer, "app/")?;
            }
            (layer, app_key, hit, shipped)
        }
    };
    let app_entries = shipped.len();
    if runtime.name == "app" {
        let shipped: std::collections::BTreeSet<String> = shipped.into_iter().collect();
        let has = |rel: &str| shipped.contains(rel);
        let files = AppFiles {
            source_dir: source,
            has: &has,
        };
        let chosen = start::choose(
            &files,
            &packages.package,
            request.start.as_deref(),
            config.start.as_deref(),
            &packages.lock,
        )?;
        if let Some(chosen) = chosen.filter(start::Start::needs_env) {
            progress.step(Step::Note(format!(
                "start: {} ({})",
                chosen.command, chosen.from
            )));
            env.retain(|(k, _)| k != ENV_START);
            env.push((ENV_START.to_owned(), chosen.command));
        }
    }
    progress.step(Step::Layer {
        kind: "app",
        detail: match &build_script {
            Some(script) => format!("{app_entries} entries, built by script \"{}\"", script.name),
            None => format!("{app_entries} entries"),
        },
        descriptor: app_layer.descriptor.clone(),
        cache_hit: hit,
        cache_key: Some(app_key.digest()),
    });
    layers.push((app_layer, "kiln app".into()));

    let source_digest = CacheKey::new("source")
        .with("app", content.as_str())
        .with(
            "deps",
            deps_key
                .as_ref()
                .map(|(_, k, _)| k.to_string())
                .unwrap_or_default(),
        )
        .digest();
    let annotations = BTreeMap::from([
        (ANNOTATION_BASE_NAME.to_owned(), base.name.clone()),
        (
            ANNOTATION_BASE_DIGEST.to_owned(),
            base.descriptor.digest.to_string(),
        ),
        (ANNOTATION_RUNTIME.to_owned(), runtime.name.clone()),
        (ANNOTATION_SOURCE.to_owned(), source_digest.to_string()),
    ]);
    let (manifest, image) = write_image(
        &store,
        &base,
        &runtime,
        &layers,
        env,
        request.source_date_epoch,
        annotations,
    )?;
    Ok(Built::new(store, manifest, &image))
}

/// Builds a runtime base: `base` plus the runtime's layer, its entrypoint, port and
/// environment, labelled [`LABEL_RUNTIME`], so app builds on it add only deps and app layers.
pub fn build_runtime_base(
    runtime: &str,
    base: &BaseSource,
    cache_dir: &Path,
    source_date_epoch: u64,
    progress: &dyn Progress,
) -> Result<Built> {
    let runtime = Runtime::get(runtime)?;
    let cache = LayerCache::open(cache_dir)?;
    let store = cache.store().clone();
    let mut base = resolve_base(base, &store, progress)?;
    if let Some(other) = base.label(LABEL_RUNTIME) {
        return Err(BuildError::Base {
            reference: base.name.clone(),
            problem: format!("is already the runtime base of {other}"),
        });
    }
    let layer = runtime_layer(&runtime, &cache, progress)?;
    base.config
        .config
        .labels
        .get_or_insert_default()
        .insert(LABEL_RUNTIME.into(), runtime.name.clone());
    let annotations = BTreeMap::from([
        (ANNOTATION_BASE_NAME.to_owned(), base.name.clone()),
        (
            ANNOTATION_BASE_DIGEST.to_owned(),
            base.descriptor.digest.to_string(),
        ),
        (ANNOTATION_RUNTIME.to_owned(), runtime.name.clone()),
    ]);
    let (manifest, image) = write_image(
        &store,
        &base,
        &runtime,
        &[(layer, format!("kiln runtime {}", runtime.name))],
        Vec::new(),
        source_date_epoch,
        annotations,
    )?;
    Ok(Built::new(store, manifest, &image))
}

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

fn resolve_base(base: &BaseSource, store: &BlobStore, progress: &dyn Progress) -> Result<Base> {
    let (base, cache_hit) = match base {
        BaseSource::Host(node) => {
            let (name, desc, hit) = host_base(store, node.as_deref())?;
            (Base::load(store, &name, desc)?, hit)
        }
        BaseSource::Stored {
            name,
            manifest,
            cache_hit,
        } => (Base::load(store, name, manifest.clone())?, *cache_hit),
        BaseSource::Layout { path, tag } => {
            let reference = format!("oci:{}:{tag}", path.display());
            let bad = |problem: String| BuildError::Base {
                reference: reference.clone(),
                problem,
            };
            let layout = BlobStore::open(path).map_err(|e| bad(e.to_string()))?;
            let desc = layout.resolve(tag).map_err(|e| bad(e.to_string()))?;
            let hit = store.contains(&desc.digest);
            store.import_blob(&layout, &desc.digest)?;
            let loaded = Base::load(store, &reference, desc)?;
            for blob in loaded
                .manifest
                .layers
                .iter()
                .chain([&loaded.manifest.config])
            {
                store
                    .import_blob(&layout, &blob.digest)
                    .map_err(|e| bad(e.to_string()))?;
            }
            (loaded, hit)
        }
    };
    progress.step(Step::Base {
        name: base.name.clone(),
        digest: base.descriptor.digest.to_string(),
        cache_hit,
    });
    Ok(base)
}

/// The layer for `key` from the cache, or made by `make`, written and recorded.
fn cached_layer(
    cache: &LayerCache,
    key: &CacheKey,
    make: impl FnOnce() -> Result<Layer>,
) -> Result<(Layer, bool)> {
    if let Some(layer) = cache.get(key) {
        return Ok((layer, true));
    }
    let layer = make()?;
    cache.put(key, &layer)?;
    Ok((layer, false))
}

fn runtime_layer(runtime: &Runtime, cache: &LayerCache, progress: &dyn Progress) -> Result<Layer> {
    let builder = runtime.layer()?;
    let tar = builder.write_tar(Vec::new())?;
    let key = CacheKey::new("runtime").with("tar", Digest::of(&tar).as_str());
    let (layer, hit) = cached_layer(cache, &key, || Ok(builder.write_to(cache.store())?))?;
    progress.step(Step::Layer {
        kind: "runtime",
        detail: runtime.name.clone(),
        descriptor: layer.descriptor.clone(),
        cache_hit: hit,
        cache_key: Some(key.digest()),
    });
    Ok(layer)
}

#[allow(clippy::too_many_arguments)]
fn deps_layer(
    source: &Path,
    packages: &npm::Manifest,
    cache: &LayerCache,
    runtime: &str,
    abi: &str,
    platform: &str,
    epoch: &str,
    config: &ProjectConfig,
    progress: &dyn Progress,
    shared: &dyn SharedLayers,
) -> Result<Option<(Layer, Digest, String)>> {
    let key = CacheKey::new("deps")
        .with("runtime", runtime)
        .with("abi", abi)
        .with("platform", platform)
        .with("mtime", epoch);
    let vendored = source.join("node_modules");
    let store = cache.store();
    let (key, detail, layer_of): (CacheKey, &str, Box<dyn FnOnce() -> Result<Layer> + '_>) =
        if vendored.is_dir() {
            let tree = SourceTree::scan(&vendored, &ScanOptions::default())?;
            let key = key.with("vendored", tree.stat_key().as_str());
            (
                key,
                "node_modules in source",
                Box::new(move || Ok(modules_layer(&tree, epoch).write_to(store)?)),
            )
        } else if let Some(lock) = &packages.lockfile {
            let scripted = native::skipped_install_scripts(&packages.lock);
            let (allowed, skipped): (Vec<String>, Vec<String>) = scripted
                .into_iter()
                .partition(|name| config.allow_scripts.contains(name));
            for name in &config.allow_scripts {
                if !allowed.contains(name) {
                    progress.step(Step::Note(format!(
                        "deps: kiln.allowScripts names {name}, which is not a production dependency with an install script"
                    )));
                }
            }
            let timeout = config.script_timeout();
            let key = key
                .with("lockfile", Digest::of(lock).as_str())
                .with("flags", npm::NPM_CI_FLAGS.join(" "))
                .with("scripts", allowed.join(","));
            let scratch_root = cache.store().root().join("tmp");
            let make = move || {
                std::fs::create_dir_all(&scratch_root)
                    .map_err(kiln_layers::Error::io("create directory", &scratch_root))?;
                let scratch = tempfile::tempdir_in(&scratch_root).map_err(
                    kiln_layers::Error::io("create scratch directory in", &scratch_root),
                )?;
                progress.step(Step::Installing);
                let modules = npm::install(source, scratch.path())?;
                if !modules.is_dir() {
                    std::fs::create_dir_all(&modules)
                        .map_err(kiln_layers::Error::io("create directory", &modules))?;
                }
                if !allowed.is_empty() {
                    build_step::run_install_scripts(
                        source,
                        scratch.path(),
                        &allowed,
                        timeout,
                        progress,
                    )?;
                }
                if !skipped.is_empty() {
                    progress.step(Step::Note(format!(
                        "deps: install scripts not run (--ignore-scripts): {}",
                        skipped.join(", ")
                    )));
                }
                let native = native::packages_with_native_code(&modules);
                if !native.is_empty() {
                    progress.step(Step::Note(format!(
                        "deps: native code in {} (layer keyed by Node ABI {abi} and {platform})",
                        native.join(", ")
                    )));
                }
                let tree = SourceTree::scan(&modules, &ScanOptions::default())?;
                let layer = modules_layer(&tree, epoch).write_to(store)?;
                drop(scratch);
                Ok(layer)
            };
            (key, "npm ci", Box::new(make))
        } else if packages.has_dependencies() {
            return Err(BuildError::MissingLockfile {
                path: source.join("package.json"),
            });
        } else {
            return Ok(None);
        };
    let (layer, hit, detail) = if let Some(layer) = cache.get(&key) {
        (layer, true, detail.to_owned())
    } else if let Some(found) = shared.get(&key.digest()) {
        // Made and pushed by another machine: the push mounts it from there.
        seen::record(store, &found.layer.descriptor.digest, &found.repository);
        (found.layer, true, format!("{detail}, shared cache"))
    } else {
        let layer = layer_of()?;
        cache.put(&key, &layer)?;
        (layer, false, detail.to_owned())
    };
    progress.step(Step::Layer {
        kind: "deps",
        detail: detail.clone(),
        descriptor: layer.descriptor.clone(),
        cache_hit: hit,
        cache_key: Some(key.digest()),
    });
    Ok(Some((layer, key.digest(), detail)))
}

fn add_framework_dirs(layer: &mut LayerBuilder, package: &serde_json::Value) {
    for (dir, mode) in start::framework_dirs(package) {
        layer.add(&format!("app/{dir}"), Entry::dir().with_mode(*mode));
    }
}

/// The paths under `prefix` in a layer of `store`, relative to it (files and links only).
fn layer_paths(store: &BlobStore, layer: &Layer, prefix: &str) -> Result<Vec<String>> {
    let path = store.blob_path(&layer.descriptor.digest);
    let file = std::fs::File::open(&path).map_err(kiln_layers::Error::io("open", &path))?;
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    let mut paths = Vec::new();
    for entry in archive
        .entries()
        .map_err(kiln_layers::Error::io("read", &path))?
    {
        let entry = entry.map_err(kiln_layers::Error::io("read", &path))?;
        let name = entry
            .path()
            .map_err(kiln_layers::Error::io("read", &path))?;
        if let Some(rel) = name.to_str().and_then(|n| n.strip_prefix(prefix)) {
            paths.push(rel.trim_end_matches('/').to_owned());
        }
    }
    Ok(paths)
}

fn modules_layer(tree: &SourceTree, epoch: &str) -> LayerBuilder {
    let mut layer = LayerBuilder::new(epoch.parse().unwrap_or(0));
    layer
        .add("app", Entry::dir())
        .add("app/node_modules", Entry::dir());
    tree.add_to(&mut layer, "app/node_modules");
    layer
}

fn write_image(
    store: &BlobStore,
    base: &Base,
    runtime: &Runtime,
    layers: &[(Layer, String)],
    env: Vec<(String, String)>,
    epoch: u64,
    annotations: BTreeMap<String, String>,
) -> Result<(Descriptor, ImageManifest)> {
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
    run.working_dir = Some("/app".into());
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
