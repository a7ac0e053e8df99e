//! Progress of a build, reported step by step to whoever drives it (CLI, worker).

use std::fmt;

use kiln_layers::Descriptor;

/// One step of a build.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "step", content = "data", rename_all = "snake_case")]
pub enum Step {
    /// The runtime in use, and why (given, or what was detected).
    Runtime {
        /// Runtime name.
        name: String,
        /// `--runtime` or the detection reason.
        reason: String,
    },
    /// The base image in use.
    Base {
        /// Its name.
        name: String,
        /// Its manifest digest.
        digest: String,
        /// True when it was already in the cache.
        cache_hit: bool,
    },
    /// A layer is ready.
    Layer {
        /// Which part of the image.
        kind: crate::LayerKind,
        /// Where it came from (`npm ci`, `node_modules in source`, …).
        detail: String,
        /// The layer blob.
        descriptor: Descriptor,
        /// True when the cache had it.
        cache_hit: bool,
        /// The cache key it is stored under, when it is cached by key.
        cache_key: Option<kiln_layers::Digest>,
    },
    /// Installing dependencies (can take a while): what runs, as shown.
    Installing(String),
    /// The app's build script starts (in the sandbox).
    BuildScript {
        /// Its name in `scripts`.
        name: String,
        /// Its command line.
        command: String,
    },
    /// A line of the build script's output.
    BuildOutput(String),
    /// Something the user should know about a choice kiln made.
    Note(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Runtime { name, reason } => write!(f, "runtime: {name} ({reason})"),
            Step::Base {
                name,
                digest,
                cache_hit,
            } => {
                write!(
                    f,
                    "base: {name} {digest}{}",
                    if *cache_hit { " (cached)" } else { " (built)" }
                )
            }
            Step::Layer {
                kind,
                detail,
                descriptor,
                cache_hit,
                ..
            } => write!(
                f,
                "{kind} layer: {} {} bytes, {}{detail}",
                descriptor.digest,
                descriptor.size,
                if *cache_hit { "cache hit, " } else { "" }
            ),
            Step::Installing(what) => f.write_str(what),
            Step::BuildScript { name, command } => {
                write!(
                    f,
                    "build: running script \"{name}\" ({command}) in a sandbox"
                )
            }
            Step::BuildOutput(line) => write!(f, "build | {line}"),
            Step::Note(note) => write!(f, "{note}"),
        }
    }
}

/// Receives build steps.
pub trait Progress {
    /// Called once per step, in order.
    fn step(&self, step: Step);
}

/// Discards progress.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&self, _: Step) {}
}

impl<F: Fn(Step)> Progress for F {
    fn step(&self, step: Step) {
        self(step)
    }
}
