//! How an admitted entry lands under `dest`: walking down real directories only, never
//! writing through a symlink, creating files with `O_EXCL`, counting what was written.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::budget::Budget;
use super::error::{shown_name, unsafe_archive};
use super::kind::{Kind, admit};
use super::limits::ExtractLimits;
use super::names::{check_link_target, parse_name};
use crate::{Error, Result};

/// What was extracted.
#[derive(Clone, Debug, Default)]
pub struct Extracted {
    /// Regular files created (a file replaced by a later entry counts once).
    pub files: u64,
    /// Directories created, explicit or implied by a deeper entry.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Writes entries below `dest`.
pub(super) struct Writer<'a> {
    dest: &'a Path,
    limits: &'a ExtractLimits,
    budget: &'a Budget,
    out: Extracted,
    entries: u64,
    buf: Vec<u8>,
}

impl<'a> Writer<'a> {
    pub(super) fn new(dest: &'a Path, limits: &'a ExtractLimits, budget: &'a Budget) -> Self {
        Writer {
            dest,
            limits,
            budget,
            out: Extracted::default(),
            entries: 0,
            buf: vec![0; 64 * 1024],
        }
    }

    /// What was written so far.
    pub(super) fn finish(self) -> Extracted {
        self.out
    }

    /// Checks one entry and writes it, or refuses it.
    pub(super) fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let name = shown_name(&entry.path_bytes());
        let fail = |problem: String| unsafe_archive(&name, problem);
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(fail(format!(
                "more than {} entries",
                self.limits.max_entries
            )));
        }
        let Some(kind) = admit(entry.header()).map_err(&fail)? else {
            return Ok(());
        };
        let raw_name = entry.path_bytes();
        let components = parse_name(&raw_name, self.limits).map_err(&fail)?;
        let Some((last, parents)) = components.split_last() else {
            // `./`, the root itself.
            return match kind {
                Kind::Dir => Ok(()),
                _ => Err(fail("empty name".into())),
            };
        };

        match kind {
            Kind::Dir => {
                let path = self.make_parents(&name, parents)?.join(last);
                self.dir(&name, &path)
            }
            Kind::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default();
                let target = check_link_target(&target, parents.len(), self.limits)
                    .map_err(&fail)?
                    .to_owned();
                let path = self.make_parents(&name, parents)?.join(last);
                self.symlink(&name, &target, &path)
            }
            Kind::File { perm } => {
                let size = entry.size();
                self.check_size(&name, size)?;
                let path = self.make_parents(&name, parents)?.join(last);
                self.file(entry, &name, &path, perm, size)
            }
        }
    }

    /// Creates the directory `path` unless it is one already.
    fn dir(&mut self, name: &str, path: &Path) -> Result<()> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(meta) if meta.is_symlink() => {
                Err(unsafe_archive(name, "a directory would replace a symlink"))
            }
            Ok(_) => Err(unsafe_archive(name, "a directory would replace a file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.make_dir(path),
            Err(e) => Err(Error::io("inspect", path)(e)),
        }
    }

    /// Creates the symlink `path` to `target`, where nothing is yet.
    fn symlink(&mut self, name: &str, target: &str, path: &Path) -> Result<()> {
        match fs::symlink_metadata(path) {
            Ok(_) => Err(unsafe_archive(
                name,
                "a symlink would replace an existing entry",
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::os::unix::fs::symlink(target, path)
                    .map_err(Error::io("create symlink", path))?;
                self.out.symlinks += 1;
                Ok(())
            }
            Err(e) => Err(Error::io("inspect", path)(e)),
        }
    }

    /// Refuses a file whose declared `size` breaks the per-file or total limit.
    fn check_size(&self, name: &str, size: u64) -> Result<()> {
        let limits = self.limits;
        if size > limits.max_file_bytes {
            return Err(unsafe_archive(
                name,
                format!("file larger than {} bytes", limits.max_file_bytes),
            ));
        }
        if self.out.bytes.saturating_add(size) > limits.max_total_bytes {
            return Err(unsafe_archive(
                name,
                format!("archive expands beyond {} bytes", limits.max_total_bytes),
            ));
        }
        Ok(())
    }

    /// Writes the file `path` with mode `perm`, replacing an earlier regular file only.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        path: &Path,
        perm: u32,
        size: u64,
    ) -> Result<()> {
        let replaced = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => {
                fs::remove_file(path).map_err(Error::io("replace", path))?;
                true
            }
            Ok(meta) if meta.is_dir() => {
                return Err(unsafe_archive(name, "a file would replace a directory"));
            }
            Ok(_) => return Err(unsafe_archive(name, "a file would replace a symlink")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io("inspect", path)(e)),
        };
        self.write_file(entry, name, path, perm, size)?;
        if !replaced {
            self.out.files += 1;
        }
        Ok(())
    }

    /// Walks from `dest` down `components`, creating missing directories and refusing to pass
    /// through anything but a real directory. Returns the deepest directory.
    fn make_parents(&mut self, name: &str, components: &[&str]) -> Result<PathBuf> {
        let mut path = self.dest.to_path_buf();
        for component in components {
            path.push(component);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.is_symlink() => {
                    return Err(unsafe_archive(name, "path goes through a symlink"));
                }
                Ok(_) => return Err(unsafe_archive(name, "a directory would replace a file")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.make_dir(&path)?,
                Err(e) => return Err(Error::io("inspect", &path)(e)),
            }
        }
        Ok(path)
    }

    /// Creates one directory with mode 0755 (whatever the umask).
    fn make_dir(&mut self, path: &Path) -> Result<()> {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(path)
            .map_err(Error::io("create", path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(Error::io("chmod", path))?;
        self.out.dirs += 1;
        Ok(())
    }

    /// Creates the new file `path` and copies the entry's `size` bytes into it, counting them.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        path: &Path,
        perm: u32,
        size: u64,
    ) -> Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(perm)
            .open(path)
            .map_err(Error::io("create", path))?;
        file.set_permissions(fs::Permissions::from_mode(perm))
            .map_err(Error::io("chmod", path))?;
        let limits = self.limits;
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.budget.stream_error(name, e)),
            };
            written += n as u64;
            self.out.bytes += n as u64;
            if written > limits.max_file_bytes {
                let problem = format!("file larger than {} bytes", limits.max_file_bytes);
                return Err(unsafe_archive(name, problem));
            }
            if self.out.bytes > limits.max_total_bytes {
                let problem = format!("archive expands beyond {} bytes", limits.max_total_bytes);
                return Err(unsafe_archive(name, problem));
            }
            file.write_all(&self.buf[..n])
                .map_err(Error::io("write", path))?;
        }
        if written != size {
            return Err(unsafe_archive(
                name,
                "corrupt archive: file data is truncated",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::extract::ExtractLimits;
    use crate::extract::testing::{Tgz, assert_refused, assert_refused_with, names};

    #[test]
    fn extract_never_writes_through_symlinks() {
        // A link inside the tree may not be used as a directory by later entries…
        let tgz = Tgz::new()
            .dir("sub")
            .symlink("l", "sub")
            .file("l/x", 0o644, b"x")
            .build();
        let sb = assert_refused(tgz, "path goes through a symlink");
        assert!(names(&sb.dest.join("sub")).is_empty());
        // …nor be overwritten by a file, which would write through it.
        let tgz = Tgz::new()
            .file("sub/f", 0o644, b"old")
            .symlink("l", "sub/f")
            .file("l", 0o644, b"new")
            .build();
        let sb = assert_refused(tgz, "a file would replace a symlink");
        assert_eq!(fs::read(sb.dest.join("sub/f")).unwrap(), b"old");
    }

    #[test]
    fn extract_refuses_type_changes() {
        let tgz = Tgz::new()
            .dir("d")
            .file("d/inner", 0o644, b"x")
            .file("d", 0o644, b"x")
            .build();
        assert_refused(tgz, "a file would replace a directory");
        let tgz = Tgz::new().file("f", 0o644, b"x").dir("f").build();
        assert_refused(tgz, "a directory would replace a file");
        let tgz = Tgz::new()
            .file("f", 0o644, b"x")
            .file("f/g", 0o644, b"x")
            .build();
        assert_refused(tgz, "a directory would replace a file");
    }

    #[test]
    fn extract_refuses_too_many_entries() {
        let limits = ExtractLimits {
            max_entries: 3,
            ..ExtractLimits::default()
        };
        let mut tgz = Tgz::new();
        for i in 0..5 {
            tgz = tgz.file(&format!("f{i}"), 0o644, b"x");
        }
        assert_refused_with(tgz.build(), &limits, "more than 3 entries");
    }

    #[test]
    fn extract_refuses_oversized_content() {
        let limits = ExtractLimits {
            max_total_bytes: 100,
            ..ExtractLimits::default()
        };
        let tgz = Tgz::new()
            .file("a", 0o644, &[1; 60])
            .file("b", 0o644, &[2; 60])
            .build();
        assert_refused_with(tgz, &limits, "archive expands beyond 100 bytes");
        let limits = ExtractLimits {
            max_file_bytes: 10,
            ..ExtractLimits::default()
        };
        let tgz = Tgz::new()
            .file("a", 0o644, &[1; 10])
            .file("b", 0o644, &[2; 11])
            .build();
        assert_refused_with(tgz, &limits, "file larger than 10 bytes");
    }
}
