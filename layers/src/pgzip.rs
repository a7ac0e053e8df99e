//! Parallel, reproducible gzip: the stream is cut into fixed-size chunks, each compressed as
//! an independent gzip member on a worker thread, and the members are written in order.
//!
//! A concatenation of gzip members is one valid gzip stream (RFC 1952 §2.2) that every
//! registry and runtime reads. Chunk boundaries depend only on byte offsets, so the output
//! depends only on the input. Memory is bounded by the chunks in flight, not the stream size.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compression, GzBuilder};

/// Bytes of input per gzip member.
pub const CHUNK_SIZE: usize = 1 << 20;
/// The pinned compression level (part of [`crate::LAYER_FORMAT`]).
pub const LEVEL: u32 = 6;

type Job = (Vec<u8>, SyncSender<io::Result<Vec<u8>>>);

/// A gzip writer that compresses chunks on a small thread pool, started on the first full chunk.
pub struct ParallelGzWriter<W: Write> {
    inner: W,
    chunk: Vec<u8>,
    pool: Option<Pool>,
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    threads: usize,
    members: u64,
}

struct Pool {
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl<W: Write> ParallelGzWriter<W> {
    /// A writer using one compression thread per available core.
    pub fn new(inner: W) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(inner, threads)
    }

    /// A writer using `threads` compression threads (output does not depend on it).
    pub fn with_threads(inner: W, threads: usize) -> Self {
        ParallelGzWriter {
            inner,
            chunk: Vec::with_capacity(CHUNK_SIZE),
            pool: None,
            pending: VecDeque::new(),
            threads: threads.max(1),
            members: 0,
        }
    }

    /// Compresses what is buffered, writes every member and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.chunk.is_empty() || self.members == 0 {
            // An empty stream still gets one (empty) member, so the output is valid gzip.
            let chunk = std::mem::take(&mut self.chunk);
            self.drain(0)?;
            let member = compress(&chunk)?;
            self.inner.write_all(&member)?;
        }
        self.drain(0)?;
        drop(self.pool.take());
        Ok(self.inner)
    }

    fn submit_chunk(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_SIZE));
        self.members += 1;
        if self.threads == 1 {
            let member = compress(&chunk)?;
            return self.inner.write_all(&member);
        }
        let threads = self.threads;
        let pool = self.pool.get_or_insert_with(|| Pool::start(threads));
        let (tx, rx) = mpsc::sync_channel(1);
        pool.jobs
            .as_ref()
            .expect("pool is running")
            .send((chunk, tx))
            .map_err(|_| io::Error::other("gzip worker stopped"))?;
        self.pending.push_back(rx);
        self.drain(threads * 2)
    }

    /// Writes finished members until at most `keep` are in flight.
    fn drain(&mut self, keep: usize) -> io::Result<()> {
        while self.pending.len() > keep {
            let rx = self.pending.pop_front().expect("non-empty");
            let member = rx
                .recv()
                .map_err(|_| io::Error::other("gzip worker stopped"))??;
            self.inner.write_all(&member)?;
        }
        Ok(())
    }
}

impl Pool {
    fn start(threads: usize) -> Pool {
        let (jobs, rx) = mpsc::sync_channel::<Job>(threads * 2);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&rx);
                std::thread::spawn(move || {
                    loop {
                        let job = rx.lock().map(|rx| rx.recv());
                        let Ok(Ok((chunk, reply))) = job else { return };
                        let _ = reply.send(compress(&chunk));
                    }
                })
            })
            .collect();
        Pool {
            jobs: Some(jobs),
            workers,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.chunk.len();
        let n = room.min(buf.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == CHUNK_SIZE {
            self.submit_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One gzip member: no file name, mtime 0, OS "unknown", level [`LEVEL`].
fn compress(chunk: &[u8]) -> io::Result<Vec<u8>> {
    let out = Vec::with_capacity(chunk.len() / 3 + 64);
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(out, Compression::new(LEVEL));
    gz.write_all(chunk)?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 31) % 251) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    fn gz(data: &[u8], threads: usize) -> Vec<u8> {
        let mut w = ParallelGzWriter::with_threads(Vec::new(), threads);
        for part in data.chunks(70_001) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn output_round_trips_and_does_not_depend_on_thread_count() {
        for len in [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 12_345] {
            let data = sample(len);
            let one = gz(&data, 1);
            assert!(
                one == gz(&data, 2) && one == gz(&data, 5),
                "output depends on threads at len {len}"
            );
            let mut back = Vec::new();
            flate2::read::MultiGzDecoder::new(one.as_slice())
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
        }
    }
}
