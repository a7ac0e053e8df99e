//! The budget of the decompressed stream: compression ratio, header bytes and wall-clock time,
//! checked on every read, so a gzip bomb or an endless stream stops early.

use std::cell::Cell;
use std::io::{self, Read};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use flate2::read::MultiGzDecoder;

use super::error::{printable, unsafe_archive};
use super::limits::ExtractLimits;
use crate::Error;

/// The compression ratio limit applies only once the stream has expanded beyond this many bytes.
const RATIO_FLOOR: u64 = 10 << 20;
/// Most bytes the tar reader may consume on its own before handing out one entry.
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Counters and limits shared by the readers and the writer.
pub(super) struct Budget {
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

impl Budget {
    /// A budget starting now.
    pub(super) fn new(limits: &ExtractLimits) -> Budget {
        Budget {
            start: Instant::now(),
            limits: limits.clone(),
            compressed: Cell::new(0),
            uncompressed: Cell::new(0),
            header_bytes: Cell::new(None),
            violation: Cell::new(None),
            input_failed: Cell::new(false),
        }
    }

    /// The decompressed stream of the gzip `input`, counted against `budget` on every read.
    pub(super) fn reader<R: Read>(budget: &Rc<Budget>, input: R) -> impl Read + use<R> {
        let input = CountingInput {
            inner: input,
            budget: budget.clone(),
        };
        Guard {
            inner: MultiGzDecoder::new(input),
            budget: budget.clone(),
        }
    }

    /// Runs `next` (the tar reader looking for its next entry), counting the bytes it consumes
    /// against the header cap.
    pub(super) fn counting_headers<T>(&self, next: impl FnOnce() -> T) -> T {
        self.header_bytes.set(Some(0));
        let next = next();
        self.header_bytes.set(None);
        next
    }

    pub(super) fn check_time(&self) -> std::result::Result<(), String> {
        let limit = self.limits.time_budget;
        if self.start.elapsed() >= limit {
            return Err(format!(
                "extraction took longer than {} s",
                limit.as_secs_f64()
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
    pub(super) fn stream_error(&self, entry: &str, source: io::Error) -> Error {
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

/// Counts the compressed bytes read from the caller's input.
struct CountingInput<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for CountingInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                let budget = &self.budget;
                budget
                    .compressed
                    .set(budget.compressed.get().saturating_add(n as u64));
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.budget.input_failed.set(true);
                }
                Err(e)
            }
        }
    }
}

/// Enforces the ratio, header and time limits on the decompressed stream.
struct Guard<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let budget = &self.budget;
        let violation = |problem: String| {
            let error = io::Error::other(problem.clone());
            budget.violation.set(Some(problem));
            error
        };
        budget.check_time().map_err(violation)?;
        let n = self.inner.read(buf)?;
        budget.count_uncompressed(n).map_err(violation)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::{self, Read};
    use std::time::Duration;

    use tar::{EntryType, Header};

    use crate::extract::ExtractLimits;
    use crate::extract::testing::{Tgz, assert_refused, assert_refused_with, names};

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
}
