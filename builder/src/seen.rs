//! Which registry repositories a blob is known to be in, so a push can mount it from there
//! instead of uploading it. One small append-only file per blob under `<cache>/seen/`.

use std::fs::OpenOptions;
use std::io::Write;

use kiln_layers::{BlobStore, Digest};

/// Notes that `digest` is in `repository` (`host[:port]/path`). Best effort: the note only
/// saves uploads later.
pub fn record(store: &BlobStore, digest: &Digest, repository: &str) {
    if seen_in(store, digest).iter().any(|r| r == repository) {
        return;
    }
    let dir = store.root().join("seen");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut file) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(digest.hex()))
    {
        // One short write per line: appends from concurrent processes do not interleave.
        let _ = file.write_all(format!("{repository}\n").as_bytes());
    }
}

/// The repositories `digest` was seen in, oldest first.
pub fn seen_in(store: &BlobStore, digest: &Digest) -> Vec<String> {
    std::fs::read_to_string(store.root().join("seen").join(digest.hex()))
        .map(|text| {
            text.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_repository_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open_or_create(dir.path()).unwrap();
        let digest = Digest::of(b"x");
        assert!(seen_in(&store, &digest).is_empty());
        record(&store, &digest, "r:5000/a");
        record(&store, &digest, "r:5000/b");
        record(&store, &digest, "r:5000/a");
        assert_eq!(seen_in(&store, &digest), ["r:5000/a", "r:5000/b"]);
    }
}
