//! Test helpers: a sandbox around `dest`, an in-memory tar.gz builder, refusal assertions.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use super::{ExtractLimits, Extracted, extract_tar_gz};
use crate::{Error, Result};

/// `root/a/dest` is extracted into; `root/outside` must stay empty, and nothing else may
/// appear under `root`.
pub(super) struct Sandbox {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    pub(super) dest: PathBuf,
    outside: PathBuf,
}

pub(super) fn sandbox() -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let dest = root.join("a/dest");
    let outside = root.join("outside");
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir(&outside).unwrap();
    Sandbox {
        _tmp: tmp,
        root,
        dest,
        outside,
    }
}

pub(super) fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

impl Sandbox {
    pub(super) fn assert_nothing_outside(&self) {
        assert_eq!(names(&self.root), ["a", "outside"]);
        assert_eq!(names(&self.root.join("a")), ["dest"]);
        assert!(
            names(&self.outside).is_empty(),
            "something was written outside dest"
        );
    }
}

/// Builds a gzip-compressed tar in memory.
pub(super) struct Tgz(pub(super) tar::Builder<GzEncoder<Vec<u8>>>);

impl Tgz {
    pub(super) fn new() -> Self {
        Tgz(tar::Builder::new(GzEncoder::new(
            Vec::new(),
            Compression::default(),
        )))
    }

    pub(super) fn file(mut self, name: &str, mode: u32, data: &[u8]) -> Self {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        self.0.append_data(&mut header, name, data).unwrap();
        self
    }

    pub(super) fn dir(mut self, name: &str) -> Self {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        self.0.append_data(&mut header, name, io::empty()).unwrap();
        self
    }

    pub(super) fn symlink(mut self, name: &str, target: &str) -> Self {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        self.0.append_link(&mut header, name, target).unwrap();
        self
    }

    /// Appends a header whose name and link name are written as raw bytes, unchecked.
    pub(super) fn raw(
        mut self,
        name: &[u8],
        kind: EntryType,
        mode: u32,
        link: &[u8],
        data: &[u8],
    ) -> Self {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    pub(super) fn build(self) -> Vec<u8> {
        self.0.into_inner().unwrap().finish().unwrap()
    }
}

pub(super) fn extract(sb: &Sandbox, tgz: &[u8], limits: &ExtractLimits) -> Result<Extracted> {
    extract_tar_gz(tgz, &sb.dest, limits)
}

/// Extracts `tgz` with `limits`, expects a refusal mentioning `phrase`, and checks that
/// nothing was written outside `dest`.
pub(super) fn assert_refused_with(tgz: Vec<u8>, limits: &ExtractLimits, phrase: &str) -> Sandbox {
    let sb = sandbox();
    match extract(&sb, &tgz, limits) {
        Err(Error::UnsafeArchive { problem, .. }) => {
            assert!(
                problem.contains(phrase),
                "expected {phrase:?}, got {problem:?}"
            );
        }
        other => panic!("expected an UnsafeArchive error with {phrase:?}, got {other:?}"),
    }
    sb.assert_nothing_outside();
    sb
}

pub(super) fn assert_refused(tgz: Vec<u8>, phrase: &str) -> Sandbox {
    assert_refused_with(tgz, &ExtractLimits::default(), phrase)
}

pub(super) fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}
