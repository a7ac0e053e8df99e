//! Hostile source tarballs against a real `kiln worker`: every case in `fixtures/hostile/`
//! (made by `fixtures/hostile/make.py`, described in its README) is uploaded to the source
//! store as it is and submitted as a build job. The worker must refuse each one with a
//! non-retryable `failed` event naming the entry and the problem, write nothing outside its
//! scratch directory, leave no scratch directory behind, keep running, and then build a good
//! job.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::nats::TestNats;
use common::registry::TestRegistry;
use common::*;
use futures_util::StreamExt;
use kiln_queue::submit::{publish_job, submit};
use kiln_queue::{BuildJob, Event, EventKind, Queue};

/// Entry name used by the extractor for errors raised between entries.
const ARCHIVE: &[u8] = b"<archive>";

/// One hostile tarball and how its rejection must read.
struct Case {
    /// File in `fixtures/hostile/`.
    file: &'static str,
    /// The entry the rejection names, as raw bytes of the archive.
    entry: Vec<u8>,
    /// A phrase of the problem.
    phrase: &'static str,
}

fn case(file: &'static str, entry: impl AsRef<[u8]>, phrase: &'static str) -> Case {
    Case {
        file,
        entry: entry.as_ref().to_vec(),
        phrase,
    }
}

fn cases() -> Vec<Case> {
    const DOTDOT: &str = "`..` component";
    const DEVICE: &str = "device or fifo entries are not allowed";
    const CORRUPT: &str = "corrupt archive";
    vec![
        case(
            "path-traversal-dotdot.tar.gz",
            "src/../../escape-dotdot",
            DOTDOT,
        ),
        case(
            "path-traversal-to-tmp.tar.gz",
            format!("src/{}tmp/kiln-hostile-dotdot", "../".repeat(40)),
            DOTDOT,
        ),
        case(
            "pax-path-traversal.tar.gz",
            "src/../../../escape-pax",
            DOTDOT,
        ),
        case(
            "absolute-path.tar.gz",
            "/tmp/kiln-hostile-absolute",
            "absolute path",
        ),
        case(
            "symlink-escape-through-link.tar.gz",
            "src/link",
            "symlink target escapes the source root",
        ),
        case(
            "symlink-absolute-target.tar.gz",
            "src/etc",
            "absolute symlink target escapes the source root",
        ),
        case(
            "symlink-dotdot-after-name.tar.gz",
            "src/a",
            "symlink target has a `..` component after a name",
        ),
        case(
            "write-through-inner-symlink.tar.gz",
            "src/up/escape-through-inner-link",
            "path goes through a symlink",
        ),
        case(
            "file-replaces-symlink.tar.gz",
            "src/pkg",
            "a file would replace a symlink",
        ),
        case(
            "hardlink-etc-passwd.tar.gz",
            "src/passwd",
            "hard links are not allowed",
        ),
        case("char-device.tar.gz", "src/null", DEVICE),
        case("block-device.tar.gz", "src/sda", DEVICE),
        case("fifo.tar.gz", "src/pipe", DEVICE),
        case(
            "setuid-file.tar.gz",
            "src/setuid-shell",
            "setuid/setgid/sticky bits are not allowed",
        ),
        case(
            "file-replaces-directory.tar.gz",
            "src/d",
            "a file would replace a directory",
        ),
        case(
            "gzip-bomb.tar.gz",
            "src/zeros",
            "compression ratio above 200",
        ),
        case(
            "longname-header-bomb.tar.gz",
            ARCHIVE,
            "entry headers larger than 1048576 bytes",
        ),
        case(
            "file-too-large.tar.gz",
            "src/huge.bin",
            "file larger than 536870912 bytes",
        ),
        case(
            "path-too-deep.tar.gz",
            format!("src/{}deep.js", "d/".repeat(70)),
            "path deeper than 64 levels",
        ),
        case(
            "name-too-long.tar.gz",
            format!("src/{}", "n".repeat(5000)),
            "name longer than 4096 bytes",
        ),
        case(
            "name-not-utf8.tar.gz",
            b"src/bad\xff.js",
            "name is not UTF-8",
        ),
        case(
            "name-with-nul.tar.gz",
            b"src/nul.js\0/../../../escape-nul",
            "name contains a NUL byte",
        ),
        case("truncated-gzip.tar.gz", "src/functions/hello.js", CORRUPT),
        case("gzip-of-garbage.tar.gz", ARCHIVE, CORRUPT),
        case("not-a-tarball.tar.gz", ARCHIVE, CORRUPT),
    ]
}

/// How the rejection names `entry`: `source archive entry "<name>": ` with the name as lossy
/// UTF-8, cut to 200 characters.
fn entry_prefix(entry: &[u8]) -> String {
    let name = String::from_utf8_lossy(entry);
    let shown = match name.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.into_owned(),
    };
    format!("source archive entry {shown:?}: ")
}

/// Paths outside any scratch directory that the cases aim at.
const TARGETS: &[&str] = &[
    "/tmp/kiln-hostile-absolute",
    "/tmp/kiln-hostile-dotdot",
    "/etc/kiln-hostile",
];

/// Names a successful escape would leave behind.
fn escaped_name(name: &str) -> bool {
    name.starts_with("escape-") || name.starts_with("kiln-hostile")
}

/// Every path below `dir` (recursively, symlinks not followed) with an escaped name. The
/// scratch directories themselves (`<cache>/jobs/<tmp>/x`, where a job's source is extracted)
/// are not searched: what is written inside them has not escaped.
fn find_escaped(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    for entry in listing.flatten() {
        let path = entry.path();
        if escaped_name(&entry.file_name().to_string_lossy()) {
            found.push(path.clone());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) && !is_scratch(&path) {
            find_escaped(&path, found);
        }
    }
}

/// `<…>/jobs/<tmp>/x`: a job's scratch directory.
fn is_scratch(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "x")
        && path
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .is_some_and(|n| n == "jobs")
}

/// Escaped names directly in `dir`.
fn escaped_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new();
    };
    listing
        .flatten()
        .filter(|e| escaped_name(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect()
}

/// What the cases aim at that exists: the fixed targets, any escaped name in `trees`
/// (recursively, scratch directories excepted), or at the top of `/`, `/tmp`, `/etc` or the
/// worker's working directory.
fn escaped(trees: &[&Path]) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = TARGETS
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    for tree in trees {
        find_escaped(tree, &mut found);
    }
    for dir in ["/", "/tmp", "/etc"] {
        found.extend(escaped_in(Path::new(dir)));
    }
    found.extend(escaped_in(&root()));
    found.sort();
    found.dedup();
    found
}

/// Nothing the cases aim at exists: see [`escaped`], with the whole temporary directory of the
/// test (the worker's cache and its scratch root included).
fn assert_nothing_escaped(tmp: &Path, when: &str) {
    let found = escaped(&[tmp]);
    assert!(found.is_empty(), "{when}: found {found:?}");
}

/// Looks for escaped files over and over while the jobs run, until stopped: the scratch root
/// (where an escape from a job's scratch directory lands, and which the worker deletes once
/// the job is over, so only a look during the job can see it) and the fixed targets on every
/// round, the whole temporary directory every tenth.
struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<(Duration, PathBuf)>)>,
}

impl Watch {
    fn start(tmp: &Path, scratch_root: &Path) -> Watch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tmp, scratch_root) = (tmp.to_owned(), scratch_root.to_owned());
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut rounds = 0u64;
            let mut seen = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                let tree: &Path = if rounds.is_multiple_of(10) {
                    &tmp
                } else {
                    &scratch_root
                };
                for path in escaped(&[tree]) {
                    if !seen.iter().any(|(_, p)| *p == path) {
                        seen.push((started.elapsed(), path));
                    }
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (rounds, seen)
        });
        Watch { stop, thread }
    }

    /// Stops watching; asserts that nothing was seen at any point.
    fn finish(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (rounds, seen) = self.thread.join().expect("the watch thread panicked");
        eprintln!("watched for escapes during the jobs: {rounds} rounds");
        assert!(rounds >= 10, "only {rounds} rounds of watching");
        assert!(
            seen.is_empty(),
            "during the jobs: found (time, path) {seen:?}"
        );
    }
}

/// The `cases in the corpus` row of RELIABILITY.md, `N (kind, kind ×k, …)`: N, and the sum
/// of its breakdown (a kind counts 1, `kind ×k` counts k).
fn documented_breakdown() -> (usize, usize) {
    let doc = fs::read_to_string(root().join("RELIABILITY.md")).unwrap();
    let row = doc
        .lines()
        .find_map(|l| l.strip_prefix("| cases in the corpus | "))
        .expect("RELIABILITY.md has a `cases in the corpus` row");
    let (total, rest) = row.split_once(" (").expect("`N (breakdown)`");
    let breakdown = rest.split_once(") |").expect("`(breakdown) |`").0;
    let sum: usize = breakdown
        .split(", ")
        .map(|kind| match kind.rsplit_once(" ×") {
            Some((_, k)) => k.parse::<usize>().expect("`kind ×k`"),
            None => 1,
        })
        .sum();
    (total.parse().expect("a count of cases"), sum)
}

/// The entries left in the worker's scratch root.
fn scratch_left(cache: &Path) -> Vec<String> {
    match fs::read_dir(cache.join("jobs")) {
        Ok(listing) => listing
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("list the scratch root: {e}"),
    }
}

struct Worker {
    process: TestWorker,
    log: PathBuf,
}

impl Worker {
    fn assert_alive(&mut self, when: &str) {
        let status = self.process.child.try_wait().expect("worker status");
        assert!(
            status.is_none(),
            "{when}: the worker exited with {status:?}\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `kiln worker` with its own cache directory; its log goes to `log`.
fn worker(
    nats: &TestNats,
    reg: &TestRegistry,
    base: &str,
    cache: &Path,
    npm: &Path,
    log: &Path,
) -> Worker {
    let args = ["--ack-wait-secs", "3", "--grace-secs", "10", "--jobs", "4"];
    let stderr = Stdio::from(fs::File::create(log).unwrap());
    Worker {
        process: start_worker(&nats.url, &reg.addr, base, cache, npm, &args, stderr),
        log: log.to_owned(),
    }
}

/// `hostile-<file stem>`: a valid job id.
fn job_id(file: &str) -> String {
    format!("hostile-{}", file.trim_end_matches(".tar.gz"))
}

#[test]
fn worker_refuses_every_hostile_tarball_and_then_builds_a_good_job() {
    let dir = root().join("fixtures/hostile");
    let cases = cases();

    // Every tarball in the corpus has an expectation here and a row in the README.
    let on_disk: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tar.gz"))
        .collect();
    let expected: BTreeSet<String> = cases.iter().map(|c| c.file.to_owned()).collect();
    assert_eq!(on_disk, expected, "fixtures/hostile and the test disagree");
    assert_eq!(
        cases.len(),
        on_disk.len(),
        "a file has two cases in cases()"
    );
    // What RELIABILITY.md says of the corpus adds up to it.
    let (documented, breakdown) = documented_breakdown();
    assert_eq!(
        (documented, breakdown),
        (on_disk.len(), on_disk.len()),
        "RELIABILITY.md: cases in the corpus, and the sum of its breakdown"
    );
    let readme = fs::read_to_string(dir.join("README.md")).unwrap();
    for c in &cases {
        assert!(
            readme.contains(&format!("`{}`", c.file)),
            "{} is not in fixtures/hostile/README.md",
            c.file
        );
        let size = fs::metadata(dir.join(c.file)).unwrap().len();
        assert!(size < 1 << 20, "{} is {size} bytes", c.file);
    }
    let rows = readme.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(rows, cases.len(), "rows in fixtures/hostile/README.md");

    let tmp = tempfile::tempdir().unwrap();
    assert_nothing_escaped(
        tmp.path(),
        "before the run (stale files from an earlier run?)",
    );
    let npm = npm_cache(tmp.path());
    let nats = TestNats::start();
    let reg = TestRegistry::start();
    let base = push_host_base(&reg.addr, &npm, &[]);
    let cache = tmp.path().join("worker-cache");
    let mut w = worker(
        &nats,
        &reg,
        &base,
        &cache,
        &npm,
        &tmp.path().join("worker.log"),
    );

    let watch = Watch::start(tmp.path(), &cache.join("jobs"));
    let rt = tokio_rt();
    rt.block_on(async {
        let queue = Queue::connect(&nats.url).await.unwrap();
        let mut events = queue.client.subscribe("kiln.events.>").await.unwrap();

        // Upload each tarball as it is (named by its digest, as the worker checks) and
        // publish its job.
        let mut pending: BTreeMap<String, &Case> = BTreeMap::new();
        for c in &cases {
            let path = dir.join(c.file);
            let bytes = fs::read(&path).unwrap();
            let name = kiln_queue::source::object_name(&kiln_layers::Digest::of(&bytes));
            kiln_queue::source::upload(&queue, &name, &path)
                .await
                .unwrap();
            let job = BuildJob {
                schema_version: 1,
                job_id: job_id(c.file),
                app: "hostile".into(),
                source: name,
                runtime: None,
                base: None,
                env: vec![],
                deploy: Default::default(),
            };
            publish_job(&queue, &job).await.unwrap();
            pending.insert(job.job_id, c);
        }

        // Each one fails, for good, with its phrase.
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
        let mut reasons = BTreeMap::new();
        while !pending.is_empty() {
            let Ok(msg) = tokio::time::timeout_at(deadline, events.next()).await else {
                panic!(
                    "no final event for {:?}\nworker log:\n{}",
                    pending.keys().collect::<Vec<_>>(),
                    w.log()
                );
            };
            let event: Event = serde_json::from_slice(&msg.unwrap().payload).unwrap();
            let Some(c) = pending.get(&event.job_id) else {
                continue;
            };
            match event.kind {
                EventKind::Failed { reason, retryable } => {
                    assert!(
                        !retryable,
                        "{}: refused as retryable (it would be tried again): {reason}",
                        c.file
                    );
                    let prefix = entry_prefix(&c.entry);
                    assert!(
                        reason.contains(&prefix) && reason.contains(c.phrase),
                        "{}: expected {prefix:?} and {:?} in the reason, got {reason:?}",
                        c.file,
                        c.phrase
                    );
                    assert!(
                        !reason.chars().any(char::is_control),
                        "{}: control characters in the reason: {reason:?}",
                        c.file
                    );
                    reasons.insert(c.file, reason);
                    pending.remove(&event.job_id);
                }
                EventKind::Revision { revision } => {
                    panic!("{}: ACCEPTED as revision {}", c.file, revision.name)
                }
                _ => {}
            }
        }
        eprintln!(
            "{} hostile tarballs refused in {:?}:",
            cases.len(),
            started.elapsed()
        );
        for (file, reason) in &reasons {
            let reason: String = reason.chars().take(160).collect();
            eprintln!("  {file}: {reason}");
        }

        // Nothing escaped (at any time while they ran, nor now), no scratch directory is
        // left, the worker is still there.
        watch.finish();
        assert_nothing_escaped(tmp.path(), "after the hostile jobs");
        let left = scratch_left(&cache);
        assert!(left.is_empty(), "scratch directories left: {left:?}");
        w.assert_alive("after the hostile jobs");

        // Refused jobs left the work queue: none will come back.
        let mut jobs = queue.js.get_stream("KILN_JOBS").await.unwrap();
        let drained = Instant::now() + Duration::from_secs(10);
        while jobs.info().await.unwrap().state.messages != 0 {
            assert!(Instant::now() < drained, "hostile jobs left in KILN_JOBS");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // And a good job still builds.
        let submission = submission(
            root().join("fixtures/faas-hello"),
            "good",
            "good-after-hostile",
        );
        submit(&queue, &submission, &tmp.path().join("submit"))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let revision = loop {
            let Ok(msg) = tokio::time::timeout_at(deadline, events.next()).await else {
                panic!("no revision for the good job\nworker log:\n{}", w.log());
            };
            let event: Event = serde_json::from_slice(&msg.unwrap().payload).unwrap();
            if event.job_id != "good-after-hostile" {
                continue;
            }
            match event.kind {
                EventKind::Revision { revision } => break revision,
                EventKind::Failed { reason, .. } => panic!("the good job failed: {reason}"),
                _ => {}
            }
        };
        assert_eq!(revision.name, "good-00001");
        assert!(
            revision
                .image
                .starts_with(&format!("{}/apps/good@sha256:", reg.addr)),
            "{}",
            revision.image
        );
    });

    w.assert_alive("after the good job");
    assert_nothing_escaped(tmp.path(), "after the good job");
    let left = scratch_left(&cache);
    assert!(left.is_empty(), "scratch directories left: {left:?}");
}
