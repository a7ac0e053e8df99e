//! A TCP proxy on loopback that counts bytes and can drop, delay or truncate connections, to
//! put connection faults between kiln and a real server.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A running proxy to one upstream address.
pub struct Proxy {
    /// `127.0.0.1:PORT` to connect to instead of the upstream.
    pub addr: String,
    drop_next: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    truncate: Arc<Mutex<Option<(usize, u64)>>>,
    truncated: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    bytes_up: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
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
            truncated: Arc::default(),
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
        let (truncate, truncated, delay_ms) = (
            proxy.truncate.clone(),
            proxy.truncated.clone(),
            proxy.delay_ms.clone(),
        );
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
                {
                    let mut live = live.lock().unwrap();
                    live.retain(|s| s.peer_addr().is_ok());
                    live.push(client.try_clone().unwrap());
                }
                // A truncated connection forwards `limit` bytes upstream, then is cut.
                let limit = {
                    let mut truncate = truncate.lock().unwrap();
                    match truncate.as_mut() {
                        Some((n, bytes)) if *n > 0 => {
                            *n -= 1;
                            truncated.fetch_add(1, Ordering::SeqCst);
                            Some(*bytes)
                        }
                        _ => None,
                    }
                };
                let up = Link {
                    count: Some(bytes_up.clone()),
                    limit,
                    delay_ms: delay_ms.clone(),
                };
                let down = Link {
                    count: None,
                    limit: None,
                    delay_ms: delay_ms.clone(),
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

    /// Makes the next `n` connections carry only `bytes` from the client, then cuts them
    /// (a request cut off in the middle).
    pub fn truncate_next(&self, n: usize, bytes: u64) {
        *self.truncate.lock().unwrap() = Some((n, bytes));
    }

    /// Connections truncated so far.
    pub fn truncated(&self) -> usize {
        self.truncated.load(Ordering::SeqCst)
    }

    /// Delays every chunk forwarded from now on, both directions, by `delay`.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Cuts every open connection at once (both directions).
    pub fn cut_all(&self) {
        for conn in self.live.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Connections dropped so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
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

/// One direction of a proxied connection.
struct Link {
    /// Counts the bytes forwarded.
    count: Option<Arc<AtomicU64>>,
    /// Cut both ways after this many bytes.
    limit: Option<u64>,
    /// Wait before forwarding each chunk.
    delay_ms: Arc<AtomicU64>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream, link: Link) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let delay = link.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(delay));
                }
                let n = match link.limit {
                    Some(limit) => n.min(limit.saturating_sub(sent) as usize),
                    None => n,
                };
                if let Some(c) = &link.count {
                    c.fetch_add(n as u64, Ordering::SeqCst);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n as u64;
                if link.limit.is_some_and(|limit| sent >= limit) {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
