//! Build errors: each names the file or input at fault and what is wrong with it.

use std::path::PathBuf;

/// Result with a [`BuildError`].
pub type Result<T, E = BuildError> = std::result::Result<T, E>;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// From the layer engine (I/O, symlinks, ignore files, …).
    #[error(transparent)]
    Layers(#[from] kiln_layers::Error),
    /// From a registry.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// From the runtime catalog.
    #[error(transparent)]
    Runtime(#[from] kiln_runtimes::Error),
    /// `package.json` is not valid.
    #[error("{path}: invalid package.json: {problem}")]
    PackageJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The project config (`kiln.toml`) is not valid.
    #[error("{path}: {problem}")]
    ProjectConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// `package-lock.json` is not valid.
    #[error("{path}: invalid lockfile: {problem}")]
    Lockfile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// `package.json` and `package-lock.json` disagree.
    #[error(
        "{path}: lockfile out of sync with package.json: {problem} (run npm install and commit the lockfile)"
    )]
    LockfileOutOfSync {
        /// The lockfile.
        path: PathBuf,
        /// The first difference.
        problem: String,
    },
    /// Dependencies are declared but there is neither a lockfile nor `node_modules`.
    #[error(
        "{path}: declares dependencies but there is no lockfile (package-lock.json, pnpm-lock.yaml, yarn.lock) or node_modules (run npm, pnpm or yarn install and keep the lockfile)"
    )]
    MissingLockfile {
        /// The package.json.
        path: PathBuf,
    },
    /// A package named by the lockfile could not be laid into the deps layer: its archive
    /// does not match the lockfile's integrity, is not a readable tarball, or is missing.
    #[error("package {package} ({path}): {problem}")]
    Package {
        /// `name@version`.
        package: String,
        /// Its install path in the lockfile (`node_modules/a/node_modules/b`).
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// `npm ci` could not be started or failed.
    #[error("npm ci for {source_dir} failed ({status}): {output}")]
    Npm {
        /// The source directory whose dependencies were installed.
        source_dir: PathBuf,
        /// Exit status or spawn error.
        status: String,
        /// The end of npm's output.
        output: String,
    },
    /// pnpm or yarn could not be started or failed.
    #[error("{command} for {source_dir} failed ({status}): {output}")]
    Install {
        /// What ran (`pnpm@9.15.9 install`).
        command: String,
        /// The source directory whose dependencies were installed.
        source_dir: PathBuf,
        /// Exit status or spawn error.
        status: String,
        /// The end of its output.
        output: String,
    },
    /// The package manager could not be fetched.
    #[error("fetching {tool} with npm pack: {problem}")]
    FetchTool {
        /// `pnpm@9.15.9`.
        tool: String,
        /// What went wrong.
        problem: String,
    },
    /// The host's node could not be made into a base image.
    #[error("base from host node {node}: {problem}")]
    HostBase {
        /// The node binary.
        node: PathBuf,
        /// What failed.
        problem: String,
    },
    /// A base image reference that cannot be used.
    #[error("base image {reference}: {problem}")]
    Base {
        /// The reference as given.
        reference: String,
        /// What is wrong.
        problem: BaseProblem,
    },
    /// An invalid option value (`--env`, `--tag`, …).
    #[error("invalid {what} {value:?}: {problem}")]
    InvalidOption {
        /// Which option.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// The start command of an `app` image would fail when the image starts.
    #[error(transparent)]
    Start(Box<StartError>),
    /// The app's build script failed, timed out or could not run.
    #[error(transparent)]
    BuildScript(Box<BuildScriptError>),
    /// The base's Node does not satisfy what the app asks for.
    #[error(
        "{source_dir}: {from} asks for Node {wanted}, but the base has Node {have}; pick a base with a matching Node (--base) or change {from}"
    )]
    NodeVersion {
        /// The app source.
        source_dir: PathBuf,
        /// `engines.node`, `.nvmrc` or `.node-version`.
        from: String,
        /// The range asked for.
        wanted: String,
        /// The base's Node version.
        have: String,
    },
}

fn tail_text(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last output:\n{}", lines.join("\n"))
    }
}

/// A start command that cannot work in the image.
#[derive(Debug, thiserror::Error)]
#[error("{source_dir}: {from} \"{command}\" {problem}; {fix}")]
pub struct StartError {
    /// The app source.
    pub source_dir: PathBuf,
    /// Where the command came from (`scripts.start`, `--start`, …).
    pub from: String,
    /// The command.
    pub command: String,
    /// What is missing.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

/// A build script that failed, timed out or could not run.
#[derive(Debug, thiserror::Error)]
#[error(
    "{source_dir}: build script \"{script}\" ({command}) {problem}{}",
    tail_text(output)
)]
pub struct BuildScriptError {
    /// The app source.
    pub source_dir: PathBuf,
    /// The script name.
    pub script: String,
    /// Its command.
    pub command: String,
    /// What went wrong (exit status, time limit, sandbox).
    pub problem: String,
    /// Its last output lines.
    pub output: Vec<String>,
}

/// What is wrong with a base image (or with an image to rebase).
#[derive(Debug, thiserror::Error)]
pub enum BaseProblem {
    /// A document that is not what it should be.
    #[error("{document}: {error}")]
    Document {
        /// `manifest`, `config`, `image index`.
        document: &'static str,
        /// What the parser said.
        error: String,
    },
    /// The registry sent something that is not a manifest or index kiln can read.
    #[error("{0}")]
    NotAManifest(String),
    /// A manifest type kiln cannot use.
    #[error("unsupported manifest type {0}")]
    ManifestType(String),
    /// A layer type kiln cannot use.
    #[error("layer {digest} has unsupported media type {media_type}")]
    LayerType {
        /// The layer.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// An index without the platform asked for.
    #[error("the index has no {want} entry (it has: {available})")]
    NoPlatform {
        /// The platform asked for.
        want: String,
        /// What the index has.
        available: String,
    },
    /// An image of another platform.
    #[error("image is {have}, not {want}")]
    WrongPlatform {
        /// Its platform.
        have: String,
        /// The platform asked for.
        want: String,
    },
    /// A digest that does not match or does not parse.
    #[error("{0}")]
    Digest(String),
    /// A runtime base of another runtime.
    #[error("is the runtime base of {have}, but the app uses runtime {want}")]
    OtherRuntime {
        /// The runtime the base holds.
        have: String,
        /// The app's runtime.
        want: String,
    },
    /// A runtime base given where a plain base is needed.
    #[error("is already the runtime base of {0}")]
    AlreadyRuntimeBase(String),
    /// A local OCI layout that cannot be read.
    #[error("{0}")]
    Layout(String),
    /// A layer the config has no diff id for.
    #[error("layer {0} has no diff id in its config")]
    NoDiffId(String),
    /// An image that cannot be rebased, and why.
    #[error("{0}")]
    NotRebasable(String),
}
