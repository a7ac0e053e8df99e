//! Safe extraction of untrusted source tarballs (gzip-compressed tar, as uploaded by app
//! developers).
//!
//! Only regular files, directories and symlinks are extracted; everything else is refused with
//! [`Error::UnsafeArchive`]. The extractor never follows a symlink while writing:
//!
//! - every path is created by walking down from `dest` one component at a time with
//!   [`fs::symlink_metadata`], creating missing directories and refusing any existing component
//!   that is a symlink or a file, so an entry can never be written through a symlink planted by an
//!   earlier entry;
//! - files are opened with `O_CREAT | O_EXCL` (`create_new`), which fails on any existing name,
//!   dangling symlinks included; a later file may replace an earlier regular file only, which is
//!   removed first;
//! - a symlink target must be relative and may use `..` only as leading components, no more of
//!   them than the link's depth below `dest`. Since every directory on the link's own path is a
//!   real directory, those `..` steps land on a real directory inside `dest`; the names after them
//!   only descend, through directories or through other links that obey the same rule, so the
//!   target stays inside `dest` also when it is reached through earlier symlinks. (A target like
//!   `b/..` is refused: if `b` were a link to `.`, `..` would leave `dest`.)
//!
//! Size, entry count, depth, name length, compression ratio and wall-clock time are bounded by
//! [`ExtractLimits`]; the ratio and time limits are checked on every read of the decompressed
//! stream, so a gzip bomb or an endless stream stops early. The headers the tar reader consumes
//! on its own before each entry (GNU long names, PAX records, skipped data) are capped at 1 MiB.

use std::cell::Cell;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;
use tar::EntryType;

use crate::{Error, Result};

/// The compression ratio limit applies only once the stream has expanded beyond this many bytes.
const RATIO_FLOOR: u64 = 10 << 20;
/// Most bytes the tar reader may consume on its own before handing out one entry.
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Entry name used in errors raised between entries.
const ARCHIVE: &str = "<archive>";
/// Entry names in error messages are cut to this many characters.
const MAX_SHOWN_NAME: usize = 200;

/// Limits on what an archive may contain.
#[derive(Clone, Debug)]
pub struct ExtractLimits {
    /// Most bytes of file content, summed over all files.
    pub max_total_bytes: u64,
    /// Most entries (files, directories, symlinks and skipped metadata entries).
    pub max_entries: u64,
    /// Most bytes in one file.
    pub max_file_bytes: u64,
    /// Most path components in an entry name.
    pub max_depth: usize,
    /// Highest ratio of uncompressed to compressed bytes, enforced once more than 10 MiB have
    /// been decompressed.
    pub max_ratio: u64,
    /// Longest entry name or symlink target, in bytes.
    pub max_name_len: usize,
    /// Longest the whole extraction may take.
    pub time_budget: Duration,
}

impl Default for ExtractLimits {
    /// 1 GiB in total, 200 000 entries, 512 MiB per file, depth 64, ratio 200, names of
    /// 4096 bytes, 120 s.
    fn default() -> Self {
        ExtractLimits {
            max_total_bytes: 1 << 30,
            max_entries: 200_000,
            max_file_bytes: 512 << 20,
            max_depth: 64,
            max_ratio: 200,
            max_name_len: 4096,
            time_budget: Duration::from_secs(120),
        }
    }
}

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

/// Extracts the gzip-compressed tar `input` into the existing empty directory `dest`.
///
/// Refuses anything unsafe with [`Error::UnsafeArchive`] (see the [module docs](self)). On any
/// error `dest` may hold a partial extraction: the caller must delete it.
pub fn extract_tar_gz(input: impl Read, dest: &Path, limits: &ExtractLimits) -> Result<Extracted> {
    check_dest(dest)?;
    let state = Rc::new(State {
        start: Instant::now(),
        limits: limits.clone(),
        compressed: Cell::new(0),
        uncompressed: Cell::new(0),
        header_bytes: Cell::new(None),
        violation: Cell::new(None),
        input_failed: Cell::new(false),
    });
    let input = CountingInput {
        inner: input,
        state: state.clone(),
    };
    let guarded = Guard {
        inner: MultiGzDecoder::new(input),
        state: state.clone(),
    };
    let mut archive = tar::Archive::new(guarded);
    let mut entries = archive
        .entries()
        .map_err(|e| state.stream_error(ARCHIVE, e))?;
    let mut extractor = Extractor {
        dest,
        limits,
        state: &state,
        out: Extracted::default(),
        entries: 0,
        buf: vec![0; 64 * 1024],
    };
    loop {
        state
            .check_time()
            .map_err(|problem| unsafe_archive(ARCHIVE, problem))?;
        state.header_bytes.set(Some(0));
        let next = entries.next();
        state.header_bytes.set(None);
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(|e| state.stream_error(ARCHIVE, e))?;
        extractor.entry(&mut entry)?;
    }
    Ok(extractor.out)
}

/// `dest` must be an existing, empty directory.
fn check_dest(dest: &Path) -> Result<()> {
    let mut listing = fs::read_dir(dest).map_err(Error::io("open", dest))?;
    match listing.next() {
        None => Ok(()),
        Some(Err(e)) => Err(Error::io("list", dest)(e)),
        Some(Ok(_)) => Err(Error::io("extract into", dest)(io::Error::new(
            io::ErrorKind::DirectoryNotEmpty,
            "the destination must be an empty directory",
        ))),
    }
}

fn unsafe_archive(entry: &str, problem: impl Into<String>) -> Error {
    Error::UnsafeArchive {
        entry: entry.to_owned(),
        problem: problem.into(),
    }
}

/// Entry name for messages: lossy UTF-8, cut to a readable length.
fn shown_name(raw: &[u8]) -> String {
    let name = String::from_utf8_lossy(raw);
    match name.char_indices().nth(MAX_SHOWN_NAME) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.into_owned(),
    }
}

/// Counters and limits shared by the readers and the extractor.
struct State {
    start: Instant,
    limits: ExtractLimits,
    /// Bytes read from the caller's input.
    compressed: Cell<u64>,
    /// Bytes of the decompressed tar stream read so far.
    uncompressed: Cell<u64>,
    /// Bytes the tar reader consumed since it was asked for the next entry, while it is.
    header_bytes: Cell<Option<u64>>,
    /// A limit a reader hit, reported to the tar reader as an I/O error.
    violation: Cell<Option<String>>,
    /// Whether an I/O error came from the caller's input rather than from decoding.
    input_failed: Cell<bool>,
}

impl State {
    fn check_time(&self) -> std::result::Result<(), String> {
        let budget = self.limits.time_budget;
        if self.start.elapsed() >= budget {
            return Err(format!(
                "extraction took longer than {} s",
                budget.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// Counts `n` decompressed bytes and checks the stream-wide limits.
    fn count_uncompressed(&self, n: usize) -> std::result::Result<(), String> {
        let total = self.uncompressed.get().saturating_add(n as u64);
        self.uncompressed.set(total);
        let max_ratio = self.limits.max_ratio;
        if total > RATIO_FLOOR && total > self.compressed.get().saturating_mul(max_ratio) {
            return Err(format!("compression ratio above {max_ratio}"));
        }
        if let Some(header) = self.header_bytes.get() {
            let header = header.saturating_add(n as u64);
            self.header_bytes.set(Some(header));
            if header > MAX_HEADER_BYTES {
                return Err(format!(
                    "entry headers larger than {MAX_HEADER_BYTES} bytes"
                ));
            }
        }
        self.check_time()
    }

    /// Turns an error from the tar reader into the error to report.
    fn stream_error(&self, entry: &str, source: io::Error) -> Error {
        if let Some(problem) = self.violation.take() {
            unsafe_archive(entry, problem)
        } else if self.input_failed.get() {
            Error::Io {
                op: "read",
                path: PathBuf::from("source archive"),
                source,
            }
        } else {
            unsafe_archive(
                entry,
                format!("corrupt archive: {}", printable(&source.to_string())),
            )
        }
    }
}

/// `text` without control characters (an archive's bytes can reach error texts: no terminal
/// or log injection through a `failed` reason), at most 300 characters.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(300)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// Counts the compressed bytes read from the caller's input.
struct CountingInput<R> {
    inner: R,
    state: Rc<State>,
}

impl<R: Read> Read for CountingInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                let state = &self.state;
                state
                    .compressed
                    .set(state.compressed.get().saturating_add(n as u64));
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.state.input_failed.set(true);
                }
                Err(e)
            }
        }
    }
}

/// Enforces the ratio, header and time limits on the decompressed stream.
struct Guard<R> {
    inner: R,
    state: Rc<State>,
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let state = &self.state;
        let violation = |problem: String| {
            let error = io::Error::other(problem.clone());
            state.violation.set(Some(problem));
            error
        };
        state.check_time().map_err(violation)?;
        let n = self.inner.read(buf)?;
        state.count_uncompressed(n).map_err(violation)?;
        Ok(n)
    }
}

/// Writes entries below `dest`.
struct Extractor<'a> {
    dest: &'a Path,
    limits: &'a ExtractLimits,
    state: &'a State,
    out: Extracted,
    entries: u64,
    buf: Vec<u8>,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let name = shown_name(&entry.path_bytes());
        let fail = |problem: String| unsafe_archive(&name, problem);
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(fail(format!(
                "more than {} entries",
                self.limits.max_entries
            )));
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular | EntryType::Directory | EntryType::Symlink => {}
            // PAX global headers (`git archive` writes one) only carry metadata: skip them.
            EntryType::XGlobalHeader => return Ok(()),
            EntryType::Link => return Err(fail("hard links are not allowed".into())),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(fail("device or fifo entries are not allowed".into()));
            }
            other => {
                let byte = other.as_byte();
                return Err(fail(format!("unsupported entry type {:?}", byte as char)));
            }
        }
        let mode = entry
            .header()
            .mode()
            .map_err(|_| fail("invalid mode field".into()))?;
        if mode & 0o7000 != 0 {
            return Err(fail("setuid/setgid/sticky bits are not allowed".into()));
        }
        let raw_name = entry.path_bytes();
        let components = parse_name(&raw_name, self.limits).map_err(&fail)?;
        let Some((last, parents)) = components.split_last() else {
            // `./`, the root itself.
            return match kind {
                EntryType::Directory => Ok(()),
                _ => Err(fail("empty name".into())),
            };
        };

        match kind {
            EntryType::Directory => {
                let path = self.make_parents(&name, parents)?.join(last);
                match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => Ok(()),
                    Ok(meta) if meta.is_symlink() => {
                        Err(fail("a directory would replace a symlink".into()))
                    }
                    Ok(_) => Err(fail("a directory would replace a file".into())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => self.make_dir(&path),
                    Err(e) => Err(Error::io("inspect", &path)(e)),
                }
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default();
                let target = check_link_target(&target, parents.len(), self.limits)
                    .map_err(&fail)?
                    .to_owned();
                let path = self.make_parents(&name, parents)?.join(last);
                match fs::symlink_metadata(&path) {
                    Ok(_) => Err(fail("a symlink would replace an existing entry".into())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        std::os::unix::fs::symlink(&target, &path)
                            .map_err(Error::io("create symlink", &path))?;
                        self.out.symlinks += 1;
                        Ok(())
                    }
                    Err(e) => Err(Error::io("inspect", &path)(e)),
                }
            }
            _ => {
                let size = entry.size();
                let limits = self.limits;
                if size > limits.max_file_bytes {
                    return Err(fail(format!(
                        "file larger than {} bytes",
                        limits.max_file_bytes
                    )));
                }
                if self.out.bytes.saturating_add(size) > limits.max_total_bytes {
                    return Err(fail(format!(
                        "archive expands beyond {} bytes",
                        limits.max_total_bytes
                    )));
                }
                let path = self.make_parents(&name, parents)?.join(last);
                let replaced = match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_file() => {
                        fs::remove_file(&path).map_err(Error::io("replace", &path))?;
                        true
                    }
                    Ok(meta) if meta.is_dir() => {
                        return Err(fail("a file would replace a directory".into()));
                    }
                    Ok(_) => return Err(fail("a file would replace a symlink".into())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(Error::io("inspect", &path)(e)),
                };
                let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                self.write_file(entry, &name, &path, perm, size)?;
                if !replaced {
                    self.out.files += 1;
                }
                Ok(())
            }
        }
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
                Err(e) => return Err(self.state.stream_error(name, e)),
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

/// Checks an entry name and splits it into its normal components (`.` and empty ones dropped).
fn parse_name<'n>(
    raw: &'n [u8],
    limits: &ExtractLimits,
) -> std::result::Result<Vec<&'n str>, String> {
    if raw.is_empty() {
        return Err("empty name".into());
    }
    if raw.len() > limits.max_name_len {
        return Err(format!("name longer than {} bytes", limits.max_name_len));
    }
    if raw.contains(&0) {
        return Err("name contains a NUL byte".into());
    }
    let name = std::str::from_utf8(raw).map_err(|_| "name is not UTF-8".to_owned())?;
    if name.starts_with('/') {
        return Err("absolute path".into());
    }
    let mut components = Vec::new();
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("`..` component".into()),
            _ => components.push(component),
        }
    }
    if components.len() > limits.max_depth {
        return Err(format!("path deeper than {} levels", limits.max_depth));
    }
    Ok(components)
}

/// Checks a symlink target for a link whose parent is `parent_depth` directories below `dest`.
fn check_link_target<'t>(
    raw: &'t [u8],
    parent_depth: usize,
    limits: &ExtractLimits,
) -> std::result::Result<&'t str, String> {
    if raw.is_empty() {
        return Err("empty symlink target".into());
    }
    if raw.len() > limits.max_name_len {
        return Err(format!(
            "symlink target longer than {} bytes",
            limits.max_name_len
        ));
    }
    if raw.contains(&0) {
        return Err("symlink target contains a NUL byte".into());
    }
    let target = std::str::from_utf8(raw).map_err(|_| "symlink target is not UTF-8".to_owned())?;
    if target.starts_with('/') {
        return Err("absolute symlink target escapes the source root".into());
    }
    let mut ups = 0;
    let mut seen_name = false;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if seen_name => {
                return Err("symlink target has a `..` component after a name".into());
            }
            ".." => ups += 1,
            _ => seen_name = true,
        }
    }
    if ups > parent_depth {
        return Err("symlink target escapes the source root".into());
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use tar::Header;

    /// `root/a/dest` is extracted into; `root/outside` must stay empty, and nothing else may
    /// appear under `root`.
    struct Sandbox {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        dest: PathBuf,
        outside: PathBuf,
    }

    fn sandbox() -> Sandbox {
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

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    impl Sandbox {
        fn assert_nothing_outside(&self) {
            assert_eq!(names(&self.root), ["a", "outside"]);
            assert_eq!(names(&self.root.join("a")), ["dest"]);
            assert!(
                names(&self.outside).is_empty(),
                "something was written outside dest"
            );
        }
    }

    /// Builds a gzip-compressed tar in memory.
    struct Tgz(tar::Builder<GzEncoder<Vec<u8>>>);

    impl Tgz {
        fn new() -> Self {
            Tgz(tar::Builder::new(GzEncoder::new(
                Vec::new(),
                Compression::default(),
            )))
        }

        fn file(mut self, name: &str, mode: u32, data: &[u8]) -> Self {
            let mut header = Header::new_gnu();
            header.set_entry_type(EntryType::Regular);
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            self.0.append_data(&mut header, name, data).unwrap();
            self
        }

        fn dir(mut self, name: &str) -> Self {
            let mut header = Header::new_gnu();
            header.set_entry_type(EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            self.0.append_data(&mut header, name, io::empty()).unwrap();
            self
        }

        fn symlink(mut self, name: &str, target: &str) -> Self {
            let mut header = Header::new_gnu();
            header.set_entry_type(EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            self.0.append_link(&mut header, name, target).unwrap();
            self
        }

        /// Appends a header whose name and link name are written as raw bytes, unchecked.
        fn raw(
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

        fn build(self) -> Vec<u8> {
            self.0.into_inner().unwrap().finish().unwrap()
        }
    }

    fn extract(sb: &Sandbox, tgz: &[u8], limits: &ExtractLimits) -> Result<Extracted> {
        extract_tar_gz(tgz, &sb.dest, limits)
    }

    /// Extracts `tgz` with `limits`, expects a refusal mentioning `phrase`, and checks that
    /// nothing was written outside `dest`.
    fn assert_refused_with(tgz: Vec<u8>, limits: &ExtractLimits, phrase: &str) -> Sandbox {
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

    fn assert_refused(tgz: Vec<u8>, phrase: &str) -> Sandbox {
        assert_refused_with(tgz, &ExtractLimits::default(), phrase)
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn extract_normal_archive() {
        let long_dir = format!("app/{}", "d".repeat(60));
        let long_file = format!("{long_dir}/{}.js", "f".repeat(60));
        assert!(long_file.len() > 100);
        let tgz = Tgz::new()
            .dir("./")
            .dir("app/")
            .file("./app/package.json", 0o600, b"{}")
            .file("app/src/index.js", 0o644, b"console.log(1)")
            .file("app/bin/run", 0o700, b"#!/bin/sh\n")
            .symlink("app/node_modules/.bin/run", "../../bin/run")
            .symlink("app/current", "src")
            .file(&long_file, 0o644, b"long")
            .file("app/dup.txt", 0o644, b"first")
            .file("app/dup.txt", 0o644, b"second")
            .build();
        let sb = sandbox();
        let out = extract(&sb, &tgz, &ExtractLimits::default()).unwrap();
        sb.assert_nothing_outside();

        let app = sb.dest.join("app");
        assert_eq!(fs::read(app.join("package.json")).unwrap(), b"{}");
        assert_eq!(
            fs::read(app.join("src/index.js")).unwrap(),
            b"console.log(1)"
        );
        assert_eq!(fs::read(sb.dest.join(&long_file)).unwrap(), b"long");
        assert_eq!(fs::read(app.join("dup.txt")).unwrap(), b"second");
        assert_eq!(mode_of(&app.join("package.json")), 0o644);
        assert_eq!(mode_of(&app.join("bin/run")), 0o755);
        assert_eq!(mode_of(&app.join("src")), 0o755);
        let link = app.join("node_modules/.bin/run");
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("../../bin/run"));
        assert_eq!(fs::read(&link).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            fs::read_link(app.join("current")).unwrap(),
            Path::new("src")
        );

        assert_eq!(out.files, 5);
        assert_eq!(out.symlinks, 2);
        // app, src, bin, node_modules, .bin, the long directory.
        assert_eq!(out.dirs, 6);
        assert_eq!(out.bytes, (2 + 14 + 10 + 4 + 5 + 6) as u64);
    }

    #[test]
    fn extract_long_symlink_target_and_pax_path() {
        let target = format!("{}/x", "t".repeat(120));
        let mut builder = Tgz::new().symlink("l", &target);
        builder
            .0
            .append_pax_extensions([("path", b"pax/name.txt".as_slice())])
            .unwrap();
        let tgz = builder.file("ignored-by-pax", 0o644, b"pax").build();
        let sb = sandbox();
        extract(&sb, &tgz, &ExtractLimits::default()).unwrap();
        assert_eq!(
            fs::read_link(sb.dest.join("l")).unwrap(),
            Path::new(&target)
        );
        assert_eq!(fs::read(sb.dest.join("pax/name.txt")).unwrap(), b"pax");
        assert!(!sb.dest.join("ignored-by-pax").exists());
    }

    #[test]
    fn extract_refuses_parent_component() {
        assert_refused(
            Tgz::new()
                .raw(b"../evil", EntryType::Regular, 0o644, b"", b"x")
                .build(),
            "`..` component",
        );
        assert_refused(
            Tgz::new()
                .raw(b"ok/../../evil", EntryType::Regular, 0o644, b"", b"x")
                .build(),
            "`..` component",
        );
    }

    #[test]
    fn extract_refuses_parent_component_in_pax_path() {
        let mut builder = Tgz::new();
        builder
            .0
            .append_pax_extensions([("path", b"../outside/evil".as_slice())])
            .unwrap();
        assert_refused(builder.file("fine", 0o644, b"x").build(), "`..` component");
    }

    #[test]
    fn extract_refuses_absolute_path() {
        assert_refused(
            Tgz::new()
                .raw(b"/abs", EntryType::Regular, 0o644, b"", b"x")
                .build(),
            "absolute path",
        );
    }

    #[test]
    fn extract_refuses_escaping_symlink() {
        let tgz = Tgz::new()
            .raw(b"link", EntryType::Symlink, 0o777, b"../../outside", b"")
            .raw(b"link/x", EntryType::Regular, 0o644, b"", b"evil")
            .build();
        let sb = assert_refused(tgz, "symlink target escapes the source root");
        assert!(names(&sb.dest).is_empty());
        let tgz = Tgz::new().symlink("sub/up", "../..").build();
        assert_refused(tgz, "symlink target escapes the source root");
    }

    #[test]
    fn extract_refuses_absolute_symlink() {
        let tgz = Tgz::new()
            .raw(b"etc", EntryType::Symlink, 0o777, b"/etc", b"")
            .build();
        assert_refused(tgz, "symlink target escapes the source root");
    }

    #[test]
    fn extract_refuses_escape_through_earlier_symlinks() {
        // With `b -> .`, `b/b/..` lexically stays inside but really is the parent of dest.
        let tgz = Tgz::new()
            .symlink("b", ".")
            .raw(b"a", EntryType::Symlink, 0o777, b"b/b/..", b"")
            .build();
        assert_refused(tgz, "symlink target has a `..` component after a name");
    }

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
    fn extract_refuses_hard_link() {
        let tgz = Tgz::new()
            .file("a", 0o644, b"x")
            .raw(b"b", EntryType::Link, 0o644, b"a", b"")
            .build();
        assert_refused(tgz, "hard links are not allowed");
    }

    #[test]
    fn extract_refuses_devices_and_fifos() {
        for kind in [EntryType::Fifo, EntryType::Char, EntryType::Block] {
            let tgz = Tgz::new().raw(b"dev", kind, 0o644, b"", b"").build();
            assert_refused(tgz, "device or fifo entries are not allowed");
        }
    }

    #[test]
    fn extract_refuses_special_mode_bits() {
        for mode in [0o4755, 0o2755, 0o1755] {
            assert_refused(
                Tgz::new().file("f", mode, b"x").build(),
                "setuid/setgid/sticky bits are not allowed",
            );
        }
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
    fn extract_refuses_bad_names() {
        assert_refused(
            Tgz::new()
                .raw(b"bad\xff", EntryType::Regular, 0o644, b"", b"")
                .build(),
            "name is not UTF-8",
        );
        let long = "n".repeat(5000);
        assert_refused(
            Tgz::new().file(&long, 0o644, b"").build(),
            "name longer than 4096 bytes",
        );
        let limits = ExtractLimits {
            max_depth: 3,
            ..ExtractLimits::default()
        };
        assert_refused_with(
            Tgz::new().file("a/b/c/d", 0o644, b"").build(),
            &limits,
            "path deeper than 3 levels",
        );
        assert_refused(
            Tgz::new()
                .raw(b".", EntryType::Regular, 0o644, b"", b"")
                .build(),
            "empty name",
        );
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

    /// A tar.gz holding one file of `size` zero bytes, built without holding it in memory.
    fn zeros_tgz(size: u64) -> Vec<u8> {
        let mut tgz = Tgz::new();
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(size);
        tgz.0
            .append_data(&mut header, "zeros", io::repeat(0).take(size))
            .unwrap();
        tgz.build()
    }

    #[test]
    fn extract_stops_gzip_bomb_early() {
        let tgz = zeros_tgz(50 << 20);
        assert!(tgz.len() < 1 << 20);
        let limits = ExtractLimits {
            max_ratio: 100,
            ..ExtractLimits::default()
        };
        let sb = assert_refused_with(tgz.clone(), &limits, "compression ratio above 100");
        let written = fs::metadata(sb.dest.join("zeros")).unwrap().len();
        assert!(
            written < 12 << 20,
            "{written} bytes written before the bomb was stopped"
        );

        let limits = ExtractLimits {
            max_ratio: 100,
            max_total_bytes: 1 << 20,
            ..ExtractLimits::default()
        };
        let sb = assert_refused_with(tgz, &limits, "archive expands beyond 1048576 bytes");
        assert!(names(&sb.dest).is_empty());
    }

    #[test]
    fn extract_caps_headers() {
        // A GNU long name of 50 MiB of zeros: the tar reader would buffer it whole.
        let mut tgz = Tgz::new();
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        header.set_entry_type(EntryType::GNULongName);
        header.set_size(50 << 20);
        header.set_cksum();
        tgz.0
            .append(&header, io::repeat(b'a').take(50 << 20))
            .unwrap();
        let tgz = tgz.file("f", 0o644, b"x").build();
        assert_refused(tgz, "entry headers larger than 1048576 bytes");
    }

    #[test]
    fn extract_enforces_time_budget() {
        let limits = ExtractLimits {
            time_budget: Duration::ZERO,
            ..ExtractLimits::default()
        };
        let tgz = Tgz::new().file("f", 0o644, b"x").build();
        assert_refused_with(tgz, &limits, "extraction took longer than 0 s");
    }

    #[test]
    fn extract_refuses_corrupt_and_requires_empty_dest() {
        let mut tgz = Tgz::new().file("f", 0o644, &[7; 4000]).build();
        tgz.truncate(tgz.len() / 2);
        assert_refused(tgz, "corrupt archive");
        assert_refused(b"not gzip at all".to_vec(), "corrupt archive");

        let sb = sandbox();
        fs::write(sb.dest.join("existing"), b"").unwrap();
        let tgz = Tgz::new().file("f", 0o644, b"x").build();
        assert!(matches!(
            extract(&sb, &tgz, &ExtractLimits::default()),
            Err(Error::Io { .. })
        ));
    }
}
