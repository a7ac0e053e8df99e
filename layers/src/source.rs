//! Listing a source tree for a layer: ignore rules, entries that never ship, symlink checks,
//! normalized modes, and the keys that let a cache skip rebuilding a layer.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use sha2::{Digest as _, Sha256};

use crate::{Digest, Entry, Error, LayerBuilder, Result};

/// Ignore files read at the root of a source, first found wins.
pub const IGNORE_FILES: [&str; 2] = [".kilnignore", ".dockerignore"];

/// True for names that never enter a layer: `.git`, `.env*`, `.npmrc`.
pub fn never_ships(name: &str) -> bool {
    name == ".git" || name == ".npmrc" || name.starts_with(".env")
}

/// What a source entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Size in bytes.
        size: u64,
        /// Any execute bit set.
        executable: bool,
    },
    /// A symlink whose target stays inside the tree.
    Symlink(String),
}

/// One listed entry.
#[derive(Clone, Debug)]
pub struct SourceEntry {
    /// Path relative to the tree root, `/`-separated.
    pub rel: String,
    /// Path on disk.
    pub path: PathBuf,
    /// What it is.
    pub kind: SourceKind,
    stamp: [i64; 5],
}

/// How to list a tree.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Apply `.kilnignore` (else `.dockerignore`) found at the root.
    pub ignore_files: bool,
    /// Top-level names to leave out (e.g. `node_modules`, which gets its own layer).
    pub exclude_top: Vec<String>,
}

impl ScanOptions {
    /// An app's own files, as its app layer ships them: the ignore rules applied,
    /// `node_modules` left out (the dependencies have their own layer).
    pub fn app() -> ScanOptions {
        ScanOptions {
            ignore_files: true,
            exclude_top: vec!["node_modules".into()],
        }
    }
}

/// A listed source tree, entries in sorted order.
#[derive(Clone, Debug)]
pub struct SourceTree {
    root: PathBuf,
    entries: Vec<SourceEntry>,
}

impl SourceTree {
    /// Lists `root` under `options`; fails on escaping symlinks, special files, non-UTF-8 names.
    pub fn scan(root: &Path, options: &ScanOptions) -> Result<Self> {
        if !fs::metadata(root).map(|m| m.is_dir()).unwrap_or(false) {
            return Err(Error::SourceMissing(root.into()));
        }
        let ignore = if options.ignore_files {
            load_ignore(root)?
        } else {
            Gitignore::empty()
        };
        let walker = Walker {
            ignore: &ignore,
            options,
        };
        let entries = walker.walk_root(root)?;
        Ok(SourceTree {
            root: root.into(),
            entries,
        })
    }

    /// The directory that was listed.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entries, parents before children, siblings sorted by name.
    pub fn entries(&self) -> &[SourceEntry] {
        &self.entries
    }

    /// The same tree with only the entries `keep` accepts.
    pub fn filtered(&self, keep: impl Fn(&SourceEntry) -> bool) -> SourceTree {
        SourceTree {
            root: self.root.clone(),
            entries: self.entries.iter().filter(|e| keep(e)).cloned().collect(),
        }
    }

    /// Adds every entry to `layer` under `prefix` (e.g. `app`).
    pub fn add_to(&self, layer: &mut LayerBuilder, prefix: &str) {
        for e in &self.entries {
            let path = format!("{prefix}/{}", e.rel);
            let entry = match &e.kind {
                SourceKind::Dir => Entry::dir(),
                SourceKind::File { size, executable } => Entry::file(&e.path, *size, *executable),
                SourceKind::Symlink(target) => Entry::symlink(target.clone()),
            };
            layer.add(&path, entry);
        }
    }

    /// A key over names, kinds, modes and file contents: equal trees give equal keys
    /// wherever they are and whatever their mtimes.
    pub fn content_key(&self) -> Result<Digest> {
        let mut h = Sha256::new();
        for e in &self.entries {
            h.update(e.rel.as_bytes());
            match &e.kind {
                SourceKind::Dir => h.update(b"\0d\0"),
                SourceKind::Symlink(t) => h.update(format!("\0l{t}\0").as_bytes()),
                SourceKind::File { size, executable } => {
                    h.update(format!("\0f{size}:{executable}\0").as_bytes());
                    let mut file = File::open(&e.path).map_err(Error::io("read", &e.path))?;
                    io::copy(&mut file, &mut h).map_err(Error::io("read", &e.path))?;
                }
            }
        }
        Ok(Digest::from_hasher(h))
    }

    /// A key over names and file metadata (size, mtime, ctime, inode) without reading contents:
    /// cheap for large trees; a changed file changes its ctime, so the key changes.
    pub fn stat_key(&self) -> Digest {
        let mut h = Sha256::new();
        for e in &self.entries {
            h.update(e.rel.as_bytes());
            match &e.kind {
                SourceKind::Dir => h.update(b"\0d"),
                SourceKind::File { executable, .. } => {
                    h.update(if *executable { b"\0x" } else { b"\0f" })
                }
                SourceKind::Symlink(target) => {
                    h.update(b"\0l");
                    h.update(target.as_bytes());
                    h.update(b"\0");
                }
            }
            for n in e.stamp {
                h.update(n.to_le_bytes());
            }
        }
        Digest::from_hasher(h)
    }
}

/// Subdirectories at the root of a tree from which its listing is split across threads.
const PARALLEL_FROM: usize = 4;

/// Lists a tree under one set of ignore rules.
struct Walker<'a> {
    ignore: &'a Gitignore,
    options: &'a ScanOptions,
}

impl Walker<'_> {
    /// Lists the whole tree under `root`. The subtrees of the root's directories are listed
    /// on up to four threads (stat calls dominate on large trees such as `node_modules`)
    /// and joined in order, so the result does not depend on the split.
    fn walk_root(&self, root: &Path) -> Result<Vec<SourceEntry>> {
        let top = self.children(root, "")?;
        let dirs: Vec<usize> = (0..top.len())
            .filter(|&i| top[i].kind == SourceKind::Dir)
            .collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4);
        let mut subtrees: Vec<Option<Result<Vec<SourceEntry>>>> =
            (0..top.len()).map(|_| None).collect();
        if dirs.len() < PARALLEL_FROM || threads < 2 {
            for &i in &dirs {
                let mut out = Vec::new();
                subtrees[i] = Some(self.walk(&top[i].path, &top[i].rel, &mut out).map(|()| out));
            }
        } else {
            let next = std::sync::atomic::AtomicUsize::new(0);
            let done = std::sync::Mutex::new(&mut subtrees);
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        loop {
                            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&i) = dirs.get(k) else { break };
                            let mut out = Vec::new();
                            let listed = self.walk(&top[i].path, &top[i].rel, &mut out);
                            done.lock().expect("lock")[i] = Some(listed.map(|()| out));
                        }
                    });
                }
            });
        }
        let mut entries = Vec::new();
        for (entry, subtree) in top.into_iter().zip(subtrees) {
            entries.push(entry);
            if let Some(subtree) = subtree {
                entries.extend(subtree?);
            }
        }
        Ok(entries)
    }

    /// Appends the entries under `dir` (depth first, siblings sorted) to `out`.
    fn walk(&self, dir: &Path, rel_dir: &str, out: &mut Vec<SourceEntry>) -> Result<()> {
        for entry in self.children(dir, rel_dir)? {
            let is_dir = entry.kind == SourceKind::Dir;
            let (path, rel) = (entry.path.clone(), entry.rel.clone());
            out.push(entry);
            if is_dir {
                self.walk(&path, &rel, out)?;
            }
        }
        Ok(())
    }

    /// The entries directly in `dir`, sorted by name, without those that never ship or are
    /// ignored.
    fn children(&self, dir: &Path, rel_dir: &str) -> Result<Vec<SourceEntry>> {
        let (ignore, options) = (self.ignore, self.options);
        let mut children = Vec::new();
        for item in fs::read_dir(dir).map_err(Error::io("read directory", dir))? {
            let item = item.map_err(Error::io("read directory", dir))?;
            let path = item.path();
            let name = item
                .file_name()
                .into_string()
                .map_err(|_| Error::NonUtf8Name(path.clone()))?;
            // lstat relative to the open directory: no walk of the whole path per entry.
            let meta = item.metadata().map_err(Error::io("stat", &path))?;
            children.push((name, path, meta));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries = Vec::with_capacity(children.len());
        for (name, path, meta) in children {
            if never_ships(&name) || (rel_dir.is_empty() && options.exclude_top.contains(&name)) {
                continue;
            }
            let rel = if rel_dir.is_empty() {
                name
            } else {
                format!("{rel_dir}/{name}")
            };
            let ft = meta.file_type();
            if ignore.matched(&rel, ft.is_dir()).is_ignore() {
                continue;
            }
            let stamp = [
                meta.size() as i64,
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime_nsec() ^ meta.ctime(),
                meta.ino() as i64,
            ];
            let kind = if ft.is_dir() {
                SourceKind::Dir
            } else if ft.is_file() {
                SourceKind::File {
                    size: meta.len(),
                    executable: meta.permissions().mode() & 0o111 != 0,
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(Error::io("read symlink", &path))?;
                if !stays_inside(&rel, &target) {
                    return Err(Error::SymlinkEscapes { path, target });
                }
                let target = target
                    .to_str()
                    .ok_or_else(|| Error::NonUtf8Name(path.clone()))?
                    .to_owned();
                SourceKind::Symlink(target)
            } else {
                return Err(Error::UnsupportedFileType(path));
            };
            entries.push(SourceEntry {
                rel,
                path,
                kind,
                stamp,
            });
        }
        Ok(entries)
    }
}

/// Reads the first ignore file present at `root` (gitignore semantics, anchored at `root`).
fn load_ignore(root: &Path) -> Result<Gitignore> {
    let Some(file) = IGNORE_FILES
        .iter()
        .map(|f| root.join(f))
        .find(|p| p.is_file())
    else {
        return Ok(Gitignore::empty());
    };
    let mut builder = GitignoreBuilder::new(root);
    if let Some(err) = builder.add(&file) {
        return Err(Error::IgnoreFile {
            path: file,
            message: err.to_string(),
        });
    }
    builder.build().map_err(|e| Error::IgnoreFile {
        path: file,
        message: e.to_string(),
    })
}

/// True when a link at `rel` (relative to the tree root) with `target` resolves inside the
/// tree, judged on the path alone: absolute targets and `..` above the root are outside.
fn stays_inside(rel: &str, target: &Path) -> bool {
    let mut depth: Vec<&std::ffi::OsStr> = Path::new(rel)
        .parent()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(part) => depth.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths under `dir`, depth first with siblings sorted: the order a listing must have.
    fn reference_listing(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for name in names {
            let rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            out.push(rel.clone());
            let path = dir.join(&name);
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                reference_listing(&path, &rel, out);
            }
        }
    }

    #[test]
    fn a_listing_split_across_threads_keeps_depth_first_sorted_order() {
        let tmp = tempfile::tempdir().unwrap();
        for (i, pkg) in ["zeta", "alpha", "mid", "beta", "@scope", "omega"]
            .iter()
            .enumerate()
        {
            let dir = tmp.path().join(pkg).join("lib").join("deep");
            fs::create_dir_all(&dir).unwrap();
            for f in 0..=i {
                fs::write(dir.join(format!("f{f}.js")), "x").unwrap();
                fs::write(tmp.path().join(pkg).join(format!("{f}.json")), "{}").unwrap();
            }
        }
        fs::write(tmp.path().join("top.txt"), "t").unwrap();
        let tree = SourceTree::scan(tmp.path(), &ScanOptions::default()).unwrap();
        let listed: Vec<String> = tree.entries().iter().map(|e| e.rel.clone()).collect();
        let mut expected = Vec::new();
        reference_listing(tmp.path(), "", &mut expected);
        assert_eq!(listed, expected);
        let again = SourceTree::scan(tmp.path(), &ScanOptions::default()).unwrap();
        assert_eq!(tree.stat_key(), again.stat_key());
        fs::write(tmp.path().join("mid/lib/deep/f0.js"), "changed").unwrap();
        let changed = SourceTree::scan(tmp.path(), &ScanOptions::default()).unwrap();
        assert_ne!(tree.stat_key(), changed.stat_key());
    }

    #[test]
    fn symlink_targets_are_judged_against_the_root() {
        assert!(stays_inside("a/link", Path::new("../b")));
        assert!(stays_inside("link", Path::new("./x/y")));
        assert!(!stays_inside("link", Path::new("../x")));
        assert!(!stays_inside("a/b/link", Path::new("../../../etc/passwd")));
        assert!(!stays_inside("link", Path::new("/etc/passwd")));
    }

    #[test]
    fn never_ships_secrets_or_git() {
        for name in [".git", ".env", ".env.local", ".npmrc"] {
            assert!(never_ships(name), "{name}");
        }
        assert!(!never_ships("env.js"));
    }
}
