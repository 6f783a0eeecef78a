//! A slow but healthy peer: a TCP proxy that forwards everything, and
//! holds each answer back for a fixed time (a Redis across a slow link).
//! It also counts what clients send, to tell round trips apart.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Listens on a free port of 127.0.0.1 and forwards to `target`, delaying
/// what comes back by `delay`; runs until the test process ends.
pub struct SlowProxy {
    /// The port it listens on.
    pub port: u16,
    /// Every chunk clients sent, as read by the proxy: a request, or a
    /// pipeline of requests sent at once.
    pub sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl SlowProxy {
    pub fn start(target: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = target.to_string();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let log = log.clone();
                std::thread::spawn(move || pipe(c, s, Duration::ZERO, Some(log)));
                std::thread::spawn(move || pipe(server, client, delay, None));
            }
        });
        Self { port, sent }
    }

    /// The chunks sent so far that contain `text`.
    pub fn sent_containing(&self, text: &str) -> Vec<String> {
        let sent = self.sent.lock().unwrap();
        sent.iter()
            .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
            .filter(|chunk| chunk.contains(text))
            .collect()
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration, log: Option<Arc<Mutex<Vec<Vec<u8>>>>>) {
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Some(log) = &log {
            log.lock().unwrap().push(buf[..n].to_vec());
        }
        std::thread::sleep(delay);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
