//! A build, start to end: read the project, resolve the base, run the stages
//! ([`crate::stages`]), check the start command against what ships, write config and
//! manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kiln_layers::source::ScanOptions;
use kiln_layers::{BlobStore, CacheKey, Layer, LayerCache, SourceTree};
use kiln_runtimes::Runtime;

use crate::base::{self, BaseSource};
use crate::built::{Built, LayerKind, LayerRecord};
use crate::host_base::{LABEL_LIBC, LABEL_NODE_VERSION};
use crate::image_config::{Settings, parse_env, write_image};
use crate::lockfile::Platform;
use crate::pipeline::{self, Context};
use crate::project::{BuildScript, ProjectConfig};
use crate::shared::{NoSharedLayers, SharedLayers};
use crate::start::{AppFiles, ENV_START};
use crate::{
    BuildError, Progress, Result, Step, build_step, installer, node_version, npm, stages, start,
    workspace,
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
    /// `--workspace NAME`: the package of the monorepo at `source` to build.
    pub workspace: Option<String>,
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
    if !request.source.is_dir() {
        return Err(kiln_layers::Error::SourceMissing(request.source.clone()).into());
    }
    let ws = workspace::locate(&request.source, request.workspace.as_deref())?;
    let (root, app_dir) = match &ws {
        Some(ws) => {
            progress.step(Step::Note(format!(
                "workspace: {} ({}) of the monorepo at {}, with {}",
                ws.name,
                ws.dir,
                ws.root.display(),
                ws.members.join(", ")
            )));
            (ws.root.clone(), ws.root.join(&ws.dir))
        }
        None => (request.source.clone(), request.source.clone()),
    };
    let source = &app_dir;
    let packages = match &ws {
        Some(ws) => npm::read_workspace(ws)?,
        None => npm::read(source)?,
    };
    let config = ProjectConfig::read(source, &packages.package)?;
    let runtime = choose_runtime(source, request, &config, progress)?;
    let configured_env: Vec<String> = config.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut env = parse_env(&configured_env)?;
    env.extend(parse_env(&request.env)?);
    let build_script = build_step::choose(
        source,
        &packages.package,
        &config.build_script(&request.build_script),
    )?;
    if let (Some(ws), Some(script)) = (&ws, &build_script) {
        return Err(BuildError::PackageJson {
            path: source.join("package.json"),
            problem: format!(
                "the build script \"{}\" of workspace package {}: a build step inside a monorepo is not supported yet (build it first and pass --no-build, or set \"kiln\": {{\"buildScript\": false}})",
                script.name, ws.name
            ),
        });
    }

    let cache = LayerCache::open(&request.cache_dir)?;
    let store = cache.store().clone();
    let base = base::load(&request.base, &store, progress)?;
    if let Some(have) = base.label(LABEL_NODE_VERSION) {
        node_version::check(source, &packages.package, have)?;
    }
    let scan = |dir: &Path| SourceTree::scan(dir, &ScanOptions::app());
    let tree = scan(source)?;
    let mut content = tree.content_key()?;
    // In a monorepo, the workspace packages the app depends on ship beside it.
    let mut members = Vec::new();
    if let Some(ws) = &ws {
        let mut key = CacheKey::new("workspace").with(&ws.dir, content.as_str());
        for dir in ws.members.iter().skip(1) {
            let member = scan(&root.join(dir))?;
            key = key.with(dir, member.content_key()?.as_str());
            members.push((dir.clone(), member));
        }
        content = key.digest();
    }
    let platform = Platform::of_image(
        &base.config.os,
        &base.config.architecture,
        base.label(LABEL_LIBC),
    );
    let installer = installer::choose(
        source,
        ws.as_ref(),
        &packages,
        &config.allow_scripts,
        &platform,
    )?;
    let cx = Context {
        source,
        root: &root,
        workspace: ws.as_ref(),
        installer: installer.as_deref(),
        members: &members,
        packages: &packages,
        config: &config,
        runtime: &runtime,
        base: &base,
        tree: &tree,
        content: &content,
        cache: &cache,
        epoch: request.source_date_epoch,
        progress,
    };
    let built_by_script = build_script.is_some();
    let (staged, in_base) = pipeline::run(&stages::for_app(build_script), &cx, shared)?;

    if runtime.name == "app" {
        let app = staged.iter().find(|s| s.record.kind == LayerKind::App);
        let shipped: BTreeSet<String> = match app {
            Some(app) if built_by_script => layer_paths(&store, &app.layer, "app/")?
                .into_iter()
                .collect(),
            _ => tree.entries().iter().map(|e| e.rel.clone()).collect(),
        };
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

    let deps_key = staged
        .iter()
        .find(|s| s.record.kind == LayerKind::Deps)
        .and_then(|s| s.record.cache_key.as_ref());
    let source_digest = CacheKey::new("source")
        .with("app", content.as_str())
        .with("deps", deps_key.map(|k| k.to_string()).unwrap_or_default())
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
    let layers: Vec<(Layer, String)> = staged
        .iter()
        .map(|s| (s.layer.clone(), history_line(&s.record, s.key.as_ref())))
        .collect();
    let working_dir = match &ws {
        Some(ws) => format!("/app/{}", ws.dir),
        None => "/app".to_owned(),
    };
    let (manifest, image) = write_image(
        &store,
        &base,
        Settings {
            runtime: &runtime,
            layers: &layers,
            env,
            epoch: request.source_date_epoch,
            annotations,
            working_dir: &working_dir,
        },
    )?;
    let records = base_records(&base, in_base)
        .into_iter()
        .chain(staged.into_iter().map(|s| s.record))
        .collect();
    Ok(Built::new(
        store,
        manifest,
        image,
        records,
        runtime.name.clone(),
        base.name.clone(),
    ))
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
    let mut base = base::load(base, &store, progress)?;
    if let Some(other) = base.label(LABEL_RUNTIME) {
        return Err(crate::BuildError::Base {
            reference: base.name.clone(),
            problem: crate::error::BaseProblem::AlreadyRuntimeBase(other.to_owned()),
        });
    }
    let (layer, key, hit) = stages::runtime_layer(&runtime, &cache)?;
    progress.step(Step::Layer {
        kind: LayerKind::Runtime,
        detail: runtime.name.clone(),
        descriptor: layer.descriptor.clone(),
        cache_hit: hit,
        cache_key: Some(key.digest()),
    });
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
        Settings {
            runtime: &runtime,
            layers: &[(layer.clone(), format!("kiln runtime {}", runtime.name))],
            env: Vec::new(),
            epoch: source_date_epoch,
            annotations,
            working_dir: "/app",
        },
    )?;
    let record = LayerRecord {
        kind: LayerKind::Runtime,
        descriptor: layer.descriptor,
        diff_id: layer.diff_id,
        cache_key: Some(key.digest()),
        cache_hit: hit,
        shared: false,
        detail: runtime.name.clone(),
        millis: 0,
    };
    let mut records = base_records(&base, Vec::new());
    records.push(record);
    Ok(Built::new(
        store,
        manifest,
        image,
        records,
        runtime.name.clone(),
        base.name.clone(),
    ))
}

/// `--runtime`, else `kiln.runtime`, else detected from the source; reported with why.
fn choose_runtime(
    source: &Path,
    request: &BuildRequest,
    config: &ProjectConfig,
    progress: &dyn Progress,
) -> Result<Runtime> {
    let (runtime, reason) = runtime_for(source, request.runtime.as_deref(), config)?;
    progress.step(Step::Runtime {
        name: runtime.name.clone(),
        reason,
    });
    Ok(runtime)
}

/// The runtime of the app in `source` and why: `flag` (`--runtime`), else the project
/// config's `runtime`, else detected from the source. `kiln build` and `kiln dev` choose
/// alike.
pub fn runtime_for(
    source: &Path,
    flag: Option<&str>,
    config: &ProjectConfig,
) -> Result<(Runtime, String)> {
    let (name, reason) = match (flag, &config.runtime) {
        (Some(name), _) => (name.to_owned(), "--runtime".to_owned()),
        (None, Some(name)) => (name.clone(), "project config".to_owned()),
        (None, None) => {
            let (name, reason) = kiln_runtimes::detect(source);
            (name.to_owned(), format!("detected: {reason}"))
        }
    };
    Ok((Runtime::get(&name)?, reason))
}

/// Records of the base's layers; the top ones are those the stages found in it.
fn base_records(base: &crate::image::Base, in_base: Vec<LayerRecord>) -> Vec<LayerRecord> {
    let own = base.manifest.layers.len().saturating_sub(in_base.len());
    base.manifest.layers[..own]
        .iter()
        .zip(&base.config.rootfs.diff_ids)
        .map(|(d, diff_id)| LayerRecord {
            kind: LayerKind::Base,
            descriptor: d.clone(),
            diff_id: diff_id.clone(),
            cache_key: None,
            cache_hit: true,
            shared: false,
            detail: base.name.clone(),
            millis: 0,
        })
        .chain(in_base)
        .collect()
}

fn history_line(record: &LayerRecord, key: Option<&CacheKey>) -> String {
    match (record.kind, key) {
        (LayerKind::Deps, Some(key)) => {
            format!("kiln deps: {} ({})", record.detail, key.digest().hex())
        }
        (LayerKind::Runtime, _) => format!("kiln runtime {}", record.detail),
        (kind, _) => format!("kiln {kind}"),
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
