//! A TCP proxy on loopback that counts bytes and can drop the next connections, to put
//! connection faults between kiln and a real server.

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
                let up = bytes_up.clone();
                std::thread::spawn(move || pipe(client, server, Some(up)));
                std::thread::spawn(move || pipe(s2, c2, None));
            }
        });
        proxy
    }

    /// Makes the next `n` connections fail (read a little, then close).
    pub fn drop_next(&self, n: usize) {
        self.drop_next.store(n, Ordering::SeqCst);
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

fn pipe(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(c) = &count {
                    c.fetch_add(n as u64, Ordering::SeqCst);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
