//! A slow but healthy peer: a TCP proxy that forwards everything, and
//! holds each answer back for a fixed time (a Redis across a slow link).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

/// Listens on a free port of 127.0.0.1 and forwards to `target`, delaying
/// what comes back by `delay`; runs until the test process ends.
pub struct SlowProxy {
    /// The port it listens on.
    pub port: u16,
}

impl SlowProxy {
    pub fn start(target: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = target.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(c, s, Duration::ZERO));
                std::thread::spawn(move || pipe(server, client, delay));
            }
        });
        Self { port }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        std::thread::sleep(delay);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
