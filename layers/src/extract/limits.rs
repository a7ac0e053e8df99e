//! The limits an archive is extracted under.

use std::time::Duration;

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
