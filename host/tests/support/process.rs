//! The sluice binary as a child process, running the repository's
//! pipeline.toml with the test's environment.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A request with no body to the admin API on `port`, as a JSON client
/// sends it (a method other than GET says `Content-Type: application/json`,
/// which the endpoints that change something require): status code and
/// body, or `None` if nothing answered.
pub fn request(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let json = if method == "GET" { "" } else { "Content-Type: application/json\r\n" };
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: localhost\r\n{json}Content-Length: 0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// The value of an unlabelled metric of the host whose admin API is on
/// `port`.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = request(port, "GET", "/metrics")?;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `sluice_records_in_total` of the host on `port` reaches `n`;
/// fails with what `log` returns.
pub fn wait_records_in(port: u16, n: u64, timeout: Duration, log: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = metric(port, "sluice_records_in_total").unwrap_or(0.0) as u64;
        if got >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {got} of {n} records in within {timeout:?}:\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An answer of the admin API.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The value of the header `name` (lower case), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (fails the test if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{} `{}`: {e}", self.code, self.body))
    }

    /// The `error` of a JSON body, or "".
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_string()
    }
}

/// Where a host connects and what it is called.
#[derive(Clone)]
pub struct HostEnv {
    pub vars: BTreeMap<String, String>,
}

impl HostEnv {
    /// The default pipeline against `brokers`, with per-test Redis prefixes
    /// and consumer group.
    pub fn new(brokers: &str, lookup_prefix: &str, redis_prefix: &str, group: &str) -> Self {
        let vars = super::env_of(&[
            ("KAFKA_BROKERS", brokers),
            ("REDIS_URL", super::REDIS_URL),
            ("SLUICE_LOOKUP_PREFIX", lookup_prefix),
            ("SLUICE_REDIS_PREFIX", redis_prefix),
            ("SLUICE_GROUP", group),
            ("SLUICE_SESSION_TIMEOUT_MS", "6000"),
        ]);
        Self { vars }
    }

    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.vars.insert(key.into(), value.into());
        self
    }
}

/// A running `sluice run`.
pub struct Host {
    child: Option<Child>,
    pub http_port: u16,
    pub log: PathBuf,
}

impl Host {
    /// Starts `sluice run pipeline.toml`.
    pub fn start(env: &HostEnv) -> Self {
        Self::start_with(env, &super::repo_root().join("pipeline.toml"))
    }

    /// Starts `sluice run` on the pipeline file `pipeline`, its admin API
    /// on `SLUICE_HTTP_ADDR` if `env` sets it, else on a free loopback port.
    pub fn start_with(env: &HostEnv, pipeline: &std::path::Path) -> Self {
        let addr = env.vars.get("SLUICE_HTTP_ADDR").cloned();
        let http_port = addr.as_ref().map_or_else(super::free_port, |a| a.rsplit(':').next().unwrap().parse().unwrap());
        let addr = addr.unwrap_or_else(|| format!("127.0.0.1:{http_port}"));
        let log = std::env::temp_dir().join(format!("sluice-host-{}-{http_port}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg(pipeline)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .envs(&env.vars)
            .env("SLUICE_HTTP_ADDR", addr)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child: Some(child), http_port, log }
    }

    /// Waits until `GET /ready` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sluice exited with {status}:\n{}", self.log_text());
            }
            if self.get("/ready").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "sluice not ready within {timeout:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A GET on the admin API: status code and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path)
    }

    /// A request with no body on the admin API: status code and body.
    pub fn request(&self, method: &str, path: &str) -> Option<(u16, String)> {
        request(self.http_port, method, path)
    }

    /// A request with headers and a body: status code and body.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
        let answer = self.exchange(method, path, headers, body);
        (answer.code, answer.body)
    }

    /// A request with exactly `headers` (besides `Host` and
    /// `Content-Length`) and a body: the whole answer.
    pub fn exchange(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        // The server may answer (413) and close before reading all of it.
        let _ = stream.write_all(body);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response).into_owned();
        let code = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{response}"));
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        Answer { code, headers, body: body.to_string() }
    }

    /// A request with the admin token as `Authorization: Bearer`, no body,
    /// and an answer that is JSON: status code and parsed body.
    pub fn json_with_token(&self, method: &str, path: &str, token: &str) -> (u16, serde_json::Value) {
        let bearer = format!("Bearer {token}");
        let mut headers = vec![("Authorization", bearer.as_str())];
        if method != "GET" {
            headers.push(("Content-Type", "application/json"));
        }
        let answer = self.exchange(method, path, &headers, b"");
        (answer.code, answer.json())
    }

    /// A request whose answer is JSON: status code and parsed body.
    pub fn json(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let (code, body) = self.request(method, path).unwrap_or_else(|| panic!("{method} {path}: no answer"));
        let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {code} `{body}`: {e}"));
        (code, value)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The value of an unlabelled metric.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric(self.http_port, name)
    }

    /// Waits until `sluice_records_in_total` reaches `n`.
    /// Waits until the host's log contains `needle`; fails with the log after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.log_text().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "`{needle}` not logged within {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_records_in(&self, n: u64, timeout: Duration) {
        wait_records_in(self.http_port, n, timeout, || self.log_text());
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sluice did not stop within 60 s of SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to end by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "sluice still running after {timeout:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the host with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Everything the host logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
