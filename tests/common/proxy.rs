//! A TCP proxy on loopback that counts bytes and can drop, delay or truncate connections, to
//! put connection faults between kiln and a real server. Every fault is counted where it
//! takes effect: a refusal when a connection is refused, a truncation when a request is cut
//! with bytes withheld, a cut for each open connection shut down.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// An accepted connection and whether both of its directions are still forwarding.
type LiveConn = (TcpStream, Arc<AtomicBool>);

/// A running proxy to one upstream address.
pub struct Proxy {
    /// `127.0.0.1:PORT` to connect to instead of the upstream.
    pub addr: String,
    drop_next: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    truncate: Arc<Truncate>,
    delay_ms: Arc<AtomicU64>,
    bytes_up: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<LiveConn>>>,
}

impl Proxy {
    /// Starts forwarding to `upstream`.
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let proxy = Proxy {
            addr,
            drop_next: Arc::default(),
            dropped: Arc::default(),
            truncate: Arc::default(),
            delay_ms: Arc::default(),
            bytes_up: Arc::default(),
            stop: Arc::default(),
            live: Arc::default(),
        };
        let (drop_next, dropped, bytes_up, stop, live) = (
            proxy.drop_next.clone(),
            proxy.dropped.clone(),
            proxy.bytes_up.clone(),
            proxy.stop.clone(),
            proxy.live.clone(),
        );
        let (truncate, delay_ms) = (proxy.truncate.clone(), proxy.delay_ms.clone());
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut client) = client else { continue };
                let drop_it = drop_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if drop_it {
                    // Read part of the request, then cut the connection.
                    let mut buf = [0u8; 64];
                    let _ = client.read(&mut buf);
                    let _ = client.shutdown(Shutdown::Both);
                    dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let open = Arc::new(AtomicBool::new(true));
                {
                    let mut live = live.lock().unwrap();
                    live.retain(|(_, open)| open.load(Ordering::SeqCst));
                    live.push((client.try_clone().unwrap(), open.clone()));
                }
                let up = Link {
                    count: Some(bytes_up.clone()),
                    truncate: Some(truncate.clone()),
                    delay_ms: delay_ms.clone(),
                    open: open.clone(),
                };
                let down = Link {
                    count: None,
                    truncate: None,
                    delay_ms: delay_ms.clone(),
                    open,
                };
                std::thread::spawn(move || pipe(client, server, up));
                std::thread::spawn(move || pipe(s2, c2, down));
            }
        });
        proxy
    }

    /// Makes the next `n` connections fail (read a little, then close).
    pub fn drop_next(&self, n: usize) {
        self.drop_next.store(n, Ordering::SeqCst);
    }

    /// Refusals asked for by [`Proxy::drop_next`] that have not happened yet.
    pub fn drops_pending(&self) -> usize {
        self.drop_next.load(Ordering::SeqCst)
    }

    /// Connections dropped so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Cuts the next `n` connections, open or new, that carry more than `bytes` from the
    /// client from now on: the first `bytes` reach the upstream, the rest of that chunk is
    /// withheld and the connection is cut both ways (a request cut off in the middle). Once
    /// `n` have been cut the others carry on untouched, so exactly `n` truncations happen
    /// given enough traffic. Replaces any truncations still pending.
    pub fn truncate_next(&self, n: usize, bytes: u64) {
        let t = &self.truncate;
        t.pending.store(0, Ordering::SeqCst);
        t.limit.store(bytes, Ordering::SeqCst);
        t.epoch.fetch_add(1, Ordering::SeqCst);
        t.pending.store(n, Ordering::SeqCst);
    }

    /// Truncations asked for by [`Proxy::truncate_next`] that have not happened yet.
    pub fn truncations_pending(&self) -> usize {
        self.truncate.pending.load(Ordering::SeqCst)
    }

    /// Connections cut so far at their byte limit with bytes withheld (counted when cut).
    pub fn truncated(&self) -> usize {
        self.truncate.done.load(Ordering::SeqCst)
    }

    /// Delays every chunk forwarded from now on, both directions, by `delay`.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Cuts every open connection at once (both directions); returns how many were still
    /// open (forwarding both ways) when cut.
    pub fn cut_all(&self) -> usize {
        let mut cut = 0;
        for (conn, open) in self.live.lock().unwrap().drain(..) {
            if open.swap(false, Ordering::SeqCst) {
                cut += 1;
            }
            let _ = conn.shutdown(Shutdown::Both);
        }
        cut
    }

    /// Bytes sent from clients to the upstream so far.
    pub fn bytes_up(&self) -> u64 {
        self.bytes_up.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Truncations asked for, shared by every connection of a proxy.
#[derive(Default)]
struct Truncate {
    /// Truncations still to do.
    pending: AtomicUsize,
    /// Bytes a connection may carry upstream, counted from the last `truncate_next`.
    limit: AtomicU64,
    /// Bumped by each `truncate_next`: connections count their bytes from it.
    epoch: AtomicU64,
    /// Truncations done.
    done: AtomicUsize,
}

/// One direction of a proxied connection.
struct Link {
    /// Counts the bytes forwarded.
    count: Option<Arc<AtomicU64>>,
    /// Cut both ways once more than the limit is to be forwarded (while cuts are pending).
    truncate: Option<Arc<Truncate>>,
    /// Wait before forwarding each chunk.
    delay_ms: Arc<AtomicU64>,
    /// Cleared when either direction stops forwarding.
    open: Arc<AtomicBool>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream, link: Link) {
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes forwarded since truncation epoch `.0`.
    let mut watched = (0u64, 0u64);
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let delay = link.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(delay));
                }
                // Past the limit while a truncation is pending: take it and cut here.
                let mut cut_at = None;
                if let Some(t) = &link.truncate
                    && t.pending.load(Ordering::SeqCst) > 0
                {
                    let epoch = t.epoch.load(Ordering::SeqCst);
                    if watched.0 != epoch {
                        watched = (epoch, 0);
                    }
                    let limit = t.limit.load(Ordering::SeqCst);
                    if watched.1 + n as u64 > limit
                        && t.pending
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| p.checked_sub(1))
                            .is_ok()
                    {
                        cut_at = Some(limit.saturating_sub(watched.1) as usize);
                    }
                }
                let n = cut_at.unwrap_or(n);
                if let Some(c) = &link.count {
                    c.fetch_add(n as u64, Ordering::SeqCst);
                }
                if to.write_all(&buf[..n]).is_err() {
                    if let (Some(t), Some(_)) = (&link.truncate, cut_at) {
                        // Not cut by us after all: the truncation is still to do.
                        t.pending.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
                watched.1 += n as u64;
                if cut_at.is_some() {
                    link.open.store(false, Ordering::SeqCst);
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    if let Some(t) = &link.truncate {
                        t.done.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
            }
        }
    }
    link.open.store(false, Ordering::SeqCst);
    let _ = to.shutdown(Shutdown::Write);
}
