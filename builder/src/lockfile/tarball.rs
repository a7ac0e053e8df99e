//! One package tarball laid straight into a layer, as npm's extraction (pacote) lays it on
//! disk: the first path component stripped, regular files only (links and directories in the
//! archive are not extracted; directories come from the paths), `.gitignore` renamed
//! `.npmignore` unless one was seen, executable when any x bit is set or it is a bin (whose
//! `#!` line loses a Windows line end), paths with `..` skipped. The tarball is hashed while
//! it is read and checked against the lockfile's integrity at its end.

use std::collections::HashSet;
use std::io::{self, BufReader, Read};

use kiln_layers::{Entry, LayerStream};

use super::LockedPackage;
use super::bins;
use crate::{BuildError, Result};

/// Directories already written to a layer, so each is written once, before what is in it.
#[derive(Default)]
pub(crate) struct Dirs(HashSet<String>);

impl Dirs {
    /// Writes `dir` and its missing parents.
    pub fn ensure(&mut self, layer: &mut LayerStream, dir: &str) -> Result<()> {
        if dir.is_empty() || self.0.contains(dir) {
            return Ok(());
        }
        if let Some((parent, _)) = dir.rsplit_once('/') {
            self.ensure(layer, parent)?;
        }
        layer.entry(dir, &Entry::dir())?;
        self.0.insert(dir.to_owned());
        Ok(())
    }

    /// Writes the parents of `path`.
    pub fn parents(&mut self, layer: &mut LayerStream, path: &str) -> Result<()> {
        match path.rsplit_once('/') {
            Some((parent, _)) => self.ensure(layer, parent),
            None => Ok(()),
        }
    }
}

/// What laying out one package found.
#[derive(Debug, Default)]
pub(crate) struct LaidOut {
    /// Files written.
    pub files: usize,
    /// Bytes written (uncompressed).
    pub bytes: u64,
    /// It holds native code (a `.node` binary or a `binding.gyp`).
    pub native: bool,
}

/// Lays `package`'s tarball (`archive`, the bytes npm's cache holds) into `layer` under
/// `prefix` (`app/node_modules/a`). A tarball that does not match the lockfile's integrity or
/// cannot be read is an error naming the package.
pub(crate) fn lay_out(
    layer: &mut LayerStream,
    dirs: &mut Dirs,
    prefix: &str,
    package: &LockedPackage,
    archive: impl Read,
) -> Result<LaidOut> {
    let problem = |problem: String| BuildError::Package {
        package: package.spec(),
        path: package.path.clone(),
        problem,
    };
    let mut hashed = package.integrity.reader(archive);
    let laid = {
        let gz =
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(256 * 1024, &mut hashed));
        let mut tar = tar::Archive::new(gz);
        entries(layer, dirs, prefix, package, &mut tar)
    };
    // The integrity is checked over the whole archive, also when it could not be read: a
    // corrupt cache entry is named as such.
    let check = package
        .integrity
        .check(hashed)
        .map_err(|e| problem(format!("cannot read its tarball: {e}")))?;
    if let Err(found) = check {
        return Err(problem(format!(
            "its tarball does not match the lockfile's integrity (expected {}, found {found})",
            package.integrity
        )));
    }
    laid.map_err(|e| match e {
        Unreadable::Archive(e) => problem(format!("not a readable tarball: {e}")),
        Unreadable::Layer(e) => e,
    })
}

enum Unreadable {
    Archive(io::Error),
    Layer(BuildError),
}

fn entries<R: Read>(
    layer: &mut LayerStream,
    dirs: &mut Dirs,
    prefix: &str,
    package: &LockedPackage,
    tar: &mut tar::Archive<R>,
) -> std::result::Result<LaidOut, Unreadable> {
    let bin_targets = bins::targets(package);
    let mut npmignores: HashSet<String> = HashSet::new();
    let mut laid = LaidOut::default();
    for entry in tar.entries().map_err(Unreadable::Archive)? {
        let mut entry = entry.map_err(Unreadable::Archive)?;
        let header = entry.header();
        if !matches!(
            header.entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        let mode = header.mode().map_err(Unreadable::Archive)?;
        let size = entry.size();
        let raw = entry.path_bytes();
        let Some(mut rel) = strip_first(&String::from_utf8_lossy(&raw)) else {
            continue;
        };
        let base = rel.rsplit('/').next().unwrap_or_default().to_owned();
        if base == ".npmignore" {
            npmignores.insert(rel.clone());
        } else if base == ".gitignore" {
            let renamed = format!("{}npmignore", &rel[..rel.len() - "gitignore".len()]);
            if npmignores.contains(&renamed) {
                continue;
            }
            rel = renamed;
        }
        let is_bin = bin_targets.contains(rel.as_str());
        laid.native |= base.ends_with(".node") || rel == "binding.gyp";
        let path = format!("{prefix}/{rel}");
        dirs.parents(layer, &path).map_err(Unreadable::Layer)?;
        let mode = if is_bin || mode & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let written = if is_bin {
            write_bin(layer, &path, size, &mut entry)
        } else {
            layer.reader(&path, mode, size, &mut entry)
        };
        written.map_err(|e| match e {
            kiln_layers::Error::Io {
                op: "read", source, ..
            } => Unreadable::Archive(source),
            other => Unreadable::Layer(other.into()),
        })?;
        laid.files += 1;
        laid.bytes += size;
    }
    Ok(laid)
}

/// A bin: executable, and a `#!` first line ending in `\r\n` ends in `\n` (npm's bin-links
/// does this to the first line only).
fn write_bin(
    layer: &mut LayerStream,
    path: &str,
    size: u64,
    data: &mut impl Read,
) -> kiln_layers::Result<()> {
    let mut head = Vec::with_capacity(2048);
    data.by_ref()
        .take(size.min(2048))
        .read_to_end(&mut head)
        .map_err(|source| kiln_layers::Error::Io {
            op: "read",
            path: path.into(),
            source,
        })?;
    let rest = size - head.len() as u64;
    if head.starts_with(b"#!")
        && let Some(end) = head.iter().position(|b| *b == b'\n')
        && end > 2
        && head[end - 1] == b'\r'
    {
        head.remove(end - 1);
    }
    let size = head.len() as u64 + rest;
    layer.reader(path, 0o755, size, head.as_slice().chain(data))
}

/// The path below the archive's first component, `.` parts dropped; `None` for the top
/// itself and for paths that climb out with `..`.
fn strip_first(path: &str) -> Option<String> {
    let mut parts = path.split('/').filter(|p| !p.is_empty() && *p != ".");
    parts.next()?;
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() || rest.contains(&"..") {
        return None;
    }
    Some(rest.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_lose_their_first_part_and_never_climb_out() {
        assert_eq!(strip_first("package/lib/a.js").as_deref(), Some("lib/a.js"));
        assert_eq!(strip_first("./node-v1/./a.js").as_deref(), Some("a.js"));
        assert_eq!(strip_first("package"), None);
        assert_eq!(strip_first("package/../../etc/passwd"), None);
        assert_eq!(strip_first("/package/x").as_deref(), Some("x"));
    }
}
