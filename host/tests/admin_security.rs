//! The admin API is safe by default: beyond loopback it serves only with a
//! token, unless pipeline.toml says `admin.insecure = true`.

mod support;

use std::time::Duration;
use support::kafka::Tansu;
use support::process::{Host, HostEnv};
use support::workdir::Workdir;
use support::{RedisPrefix, free_port};

fn env(tansu: &Tansu, prefix: &RedisPrefix, group: &str) -> HostEnv {
    HostEnv::new(&tansu.brokers(), "", &prefix.0, group).set("SLUICE_HTTP_ADDR", &format!("0.0.0.0:{}", free_port()))
}

#[test]
fn beyond_loopback_without_a_token_it_refuses_to_start_and_says_why() {
    let tansu = Tansu::start();
    let prefix = RedisPrefix::new("exposure-refused");
    let mut host = Host::start(&env(&tansu, &prefix, "exposure-refused"));
    let status = host.wait_exit(Duration::from_secs(30));
    let log = host.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains("beyond loopback, with no token"), "{log}");
    assert!(log.contains("SLUICE_ADMIN_TOKEN") && log.contains("admin.insecure = true"), "{log}");
    assert!(host.get("/health").is_none(), "nothing listens");
}

#[test]
fn beyond_loopback_with_a_token_it_serves() {
    let tansu = Tansu::start();
    let prefix = RedisPrefix::new("exposure-token");
    let host = Host::start(&env(&tansu, &prefix, "exposure-token").set("SLUICE_ADMIN_TOKEN", "t0ken"));
    wait_health(&host);
}

#[test]
fn beyond_loopback_admin_insecure_serves_open_with_a_warning() {
    let tansu = Tansu::start();
    let prefix = RedisPrefix::new("exposure-insecure");
    let text = std::fs::read_to_string(support::repo_root().join("pipeline.toml")).unwrap();
    let work = Workdir::new("exposure-insecure", &text.replace("[admin]\n", "[admin]\ninsecure = true\n"));
    let env = env(&tansu, &prefix, "exposure-insecure").set("SLUICE_PLUGIN_DIR", &work.plugin_dir());
    let host = Host::start_with(&env, &work.pipeline());
    wait_health(&host);
    assert!(host.log_text().contains("listens beyond loopback with no token"), "{}", host.log_text());
}

/// Polls `seen` until `done` holds for what it returns, and returns that;
/// fails after `timeout` with what `what` says and the last thing seen.
fn poll<T: std::fmt::Debug>(
    what: impl Fn() -> String,
    timeout: Duration,
    mut seen: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let value = seen();
        if done(&value) {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "{} within {timeout:?}; last seen: {value:?}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_health(host: &Host) {
    let code = || host.get("/health").map(|(code, _)| code);
    poll(|| format!("no /health:\n{}", host.log_text()), Duration::from_secs(60), code, |c| *c == Some(200));
}

/// A host with its admin API on loopback and no token, serving.
fn loopback_host(name: &str) -> (Tansu, RedisPrefix, Host) {
    let tansu = Tansu::start();
    let prefix = RedisPrefix::new(name);
    let host = Host::start(&HostEnv::new(&tansu.brokers(), "", &prefix.0, name));
    wait_health(&host);
    (tansu, prefix, host)
}

/// Sends `head` (request line and headers, without the blank line) and
/// returns the status code and body.
fn raw(port: u16, head: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(stream, "{head}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{response}"));
    (code, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[test]
fn a_host_name_of_another_site_is_refused_and_addresses_are_served() {
    let (_tansu, _prefix, host) = loopback_host("exposure-host");
    let port = host.http_port;
    for name in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")] {
        assert_eq!(raw(port, &format!("GET /health HTTP/1.1\r\nHost: {name}")).0, 200, "{name}");
    }
    // A name that resolves here by an attacker's DNS (rebinding).
    for path in ["/health", "/api/stats", "/metrics"] {
        let (code, body) = raw(port, &format!("GET {path} HTTP/1.1\r\nHost: rebind.evil.example:{port}"));
        assert_eq!(code, 403, "{path}: {body}");
        assert!(body.contains("admin.allowed_hosts"), "{body}");
    }
}

#[test]
fn a_web_page_of_another_origin_cannot_change_anything() {
    let (_tansu, _prefix, host) = loopback_host("exposure-origin");
    let port = host.http_port;
    let here = format!("Host: 127.0.0.1:{port}");
    for (path, header) in [
        ("/api/reload", "Origin: https://evil.example".to_string()),
        ("/api/ingest/orders", "Origin: null".to_string()),
        ("/api/promote/categorize", "Sec-Fetch-Site: cross-site".to_string()),
        ("/api/reload", format!("Origin: http://localhost:{port}")),
    ] {
        let (code, body) = raw(port, &format!("POST {path} HTTP/1.1\r\n{here}\r\n{header}"));
        assert_eq!(code, 403, "{path} with {header}: {body}");
        assert!(body.contains("another origin"), "{body}");
    }
    // The same origin, and clients that are no browser, go through.
    let same = format!(
        "POST /api/reload HTTP/1.1\r\n{here}\r\nOrigin: http://127.0.0.1:{port}\r\nSec-Fetch-Site: same-origin"
    );
    let (code, body) = raw(port, &same);
    assert_ne!(code, 403, "{body}");
    let (code, body) = raw(port, &format!("POST /api/reload HTTP/1.1\r\n{here}"));
    assert_ne!(code, 403, "{body}");
}

/// `HGETALL` calls the Redis at `port` has answered so far.
fn hgetall_calls(port: u16) -> u64 {
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut con).unwrap();
    let line = info.lines().find_map(|l| l.strip_prefix("cmdstat_hgetall:calls="));
    line.map_or(0, |l| l.split(',').next().unwrap().parse().unwrap())
}

#[test]
fn polling_the_sales_report_costs_redis_one_read_per_interval() {
    let tansu = Tansu::start();
    let redis = support::OwnRedis::start(free_port());
    let env = HostEnv::new(&tansu.brokers(), "", "c:", "report-cache").set("REDIS_URL", &redis.url());
    let host = Host::start(&env);
    wait_health(&host);
    let before = hgetall_calls(redis.port);
    let started = std::time::Instant::now();
    // As twenty dashboards polling at once would.
    std::thread::scope(|s| {
        for _ in 0..20 {
            s.spawn(|| assert_eq!(host.get("/api/report").map(|(code, _)| code), Some(200)));
        }
    });
    let reads = (started.elapsed().as_secs() / 2 + 1) * 7;
    let calls = hgetall_calls(redis.port) - before;
    assert!((7..=reads).contains(&calls), "{calls} HGETALLs for 20 reports (one read is 7)");
}

#[test]
fn ingest_serves_a_few_requests_at_once_and_asks_the_others_to_retry() {
    use std::io::Write;
    let (_tansu, _prefix, host) = loopback_host("ingest-slots");
    let port = host.http_port;
    let ingest = format!("POST /api/ingest/orders HTTP/1.1\r\nHost: 127.0.0.1:{port}");

    // Four requests whose bodies are still on their way hold the four slots.
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(stream, "{ingest}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{").unwrap();
            stream
        })
        .collect();
    let wait = Duration::from_secs(30);
    let (_, body) =
        poll(|| "no 429 for a fifth request while four are served".into(), wait, || raw(port, &ingest), |r| r.0 == 429);
    assert!(body.contains("retry shortly"), "{body}");

    // Once they are gone, ingest answers again.
    drop(held);
    poll(|| "the slots were not given back".into(), wait, || raw(port, &ingest), |r| r.0 != 429);
}
