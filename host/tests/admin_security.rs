//! The admin API is safe by default: beyond loopback it serves only with a
//! token, unless pipeline.toml says `admin.insecure = true`. With a token,
//! the reads that show data need it as much as the changes do; the probes,
//! the metrics and the dashboard's page do not. The endpoints that change
//! something take only JSON, so that no web page of another site can reach
//! them, and answer only names of this host.

mod support;

use std::time::Duration;
use support::kafka::Tansu;
use support::process::{Host, HostEnv};
use support::workdir::Workdir;
use support::{RedisPrefix, free_port};

/// The token of the hosts started with one.
const TOKEN: &str = "s3cret-admin-token";
/// The reads that show the pipeline's data (stage configs, canary examples
/// with record values, counters, the sales report), with a field each
/// answer has.
const DATA: [(&str, &str); 3] = [("/api/pipeline", "stages"), ("/api/stats", "records_in"), ("/api/report", "orders")];
/// What probes and scrapers read, and the dashboard's page and script,
/// which hold no data.
const OPEN: [&str; 5] = ["/health", "/ready", "/metrics", "/", "/assets/chart.umd.min.js"];
/// What a web page can send to another site without asking it first (a
/// `<form>`, `fetch` of a string, `navigator.sendBeacon`), and no type.
const NOT_JSON: [Option<&str>; 5] = [
    Some("text/plain"),
    Some("text/plain;charset=UTF-8"),
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=x"),
    None,
];
/// An order as ingest takes it.
const ORDER: &[u8] = br#"{"order_id":"x","product_id":"P-100","quantity":1,"timestamp":"2025-03-10T10:00:00Z"}"#;

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

/// A host with its admin API on loopback, `SLUICE_ADMIN_TOKEN` set to
/// `token` if any, and ready (its pipeline live), on a broker whose topics
/// have one partition (so that an offset counts every record written).
fn ready_host(name: &str, token: Option<&str>) -> (Tansu, RedisPrefix, Host) {
    let tansu = Tansu::start_with_partitions(1);
    let prefix = RedisPrefix::new(name);
    let mut env = HostEnv::new(&tansu.brokers(), "", &prefix.0, name);
    if let Some(token) = token {
        env = env.set("SLUICE_ADMIN_TOKEN", token);
    }
    let mut host = Host::start(&env);
    host.wait_ready(Duration::from_secs(60));
    (tansu, prefix, host)
}

/// A POST of `body` with `Content-Type: content_type` (if any) and the
/// token as `Authorization: Bearer` (if any).
fn post(
    host: &Host,
    path: &str,
    content_type: Option<&str>,
    token: Option<&str>,
    body: &[u8],
) -> support::process::Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = [("Content-Type", content_type), ("Authorization", bearer.as_deref())]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect();
    host.exchange("POST", path, &headers, body)
}

/// Whether any reload has been asked for, as `GET /api/pipeline` says.
fn reloaded(host: &Host, token: Option<&str>) -> bool {
    let (code, live) = match token {
        Some(token) => host.json_with_token("GET", "/api/pipeline", token),
        None => host.json("GET", "/api/pipeline"),
    };
    assert_eq!(code, 200, "{live}");
    !live["last_reload"].is_null()
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
    let json = "Content-Type: application/json";
    let same = format!(
        "POST /api/reload HTTP/1.1\r\n{here}\r\n{json}\r\nOrigin: http://127.0.0.1:{port}\r\nSec-Fetch-Site: same-origin"
    );
    let (code, body) = raw(port, &same);
    assert_eq!(code, 200, "{body}");
    let (code, body) = raw(port, &format!("POST /api/reload HTTP/1.1\r\n{here}\r\n{json}"));
    assert_eq!(code, 200, "{body}");
}

#[test]
fn with_a_token_reading_data_needs_it_and_probes_and_the_page_do_not() {
    let (_tansu, _prefix, host) = ready_host("token-reads", Some(TOKEN));
    let bearer = format!("Bearer {TOKEN}");
    for (path, field) in DATA {
        let none = host.exchange("GET", path, &[], b"");
        assert_eq!(none.code, 401, "{path}: {}", none.body);
        assert!(none.error().contains("Authorization: Bearer"), "{path}: {}", none.body);
        let challenge = none.header("www-authenticate");
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer")), "{path}: {none:?}");
        assert_eq!(host.exchange("GET", path, &[("Authorization", TOKEN)], b"").code, 401, "{path}: no scheme");
        // A wrong token, a prefix of the right one and the right one with
        // more: all wrong.
        for wrong in ["Bearer nope", &bearer[..bearer.len() - 1], &format!("{bearer}x")] {
            let answer = host.exchange("GET", path, &[("Authorization", wrong)], b"");
            assert_eq!((answer.code, answer.error().as_str()), (403, "wrong admin token"), "{path} with {wrong}");
        }
        let right = host.exchange("GET", path, &[("Authorization", &bearer)], b"");
        assert_eq!(right.code, 200, "{path}: {}", right.body);
        assert!(!right.json()[field].is_null(), "{path}: {}", right.body);
    }
    for path in OPEN {
        assert_eq!(host.get(path).map(|(code, _)| code), Some(200), "{path} stays open");
    }
}

#[test]
fn without_a_token_on_loopback_reads_stay_open_but_changes_still_take_only_json() {
    let (_tansu, _prefix, host) = ready_host("open-reads", None);
    for (path, field) in DATA {
        let (code, body) = host.json("GET", path);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(!body[field].is_null(), "{path}: {body}");
    }
    for path in OPEN {
        assert_eq!(host.get(path).map(|(code, _)| code), Some(200), "{path}");
    }
    // No token to keep a web page of another site out: the type does.
    for content_type in NOT_JSON {
        let answer = post(&host, "/api/reload", content_type, None, b"{}");
        assert_eq!(answer.code, 415, "{content_type:?}: {}", answer.body);
    }
    assert!(!reloaded(&host, None), "a refused request reloaded");
    let answer = post(&host, "/api/reload", Some("application/json"), None, b"");
    assert_eq!((answer.code, answer.json()["result"].as_str()), (200, Some("unchanged")), "{}", answer.body);
    assert!(reloaded(&host, None));
}

#[test]
fn a_change_that_is_not_json_is_refused_415_and_changes_nothing() {
    let (_tansu, _prefix, host) = ready_host("json-only", Some(TOKEN));
    for path in ["/api/ingest/orders", "/api/reload", "/api/promote/categorize"] {
        for content_type in NOT_JSON.into_iter().chain([Some("application/jsonp"), Some("text/json")]) {
            let answer = post(&host, path, content_type, Some(TOKEN), ORDER);
            assert_eq!(answer.code, 415, "{path} as {content_type:?}: {}", answer.body);
            let why = answer.error();
            assert!(why.contains("Content-Type: application/json"), "{path}: {why}");
            if let Some(content_type) = content_type {
                assert!(why.contains(content_type), "names what it got: {why}");
            }
        }
        // Without the token, the token is what is missing.
        assert_eq!(post(&host, path, Some("text/plain"), None, ORDER).code, 401, "{path}");
    }
    assert!(!reloaded(&host, Some(TOKEN)), "a refused request reloaded");

    // As JSON, with the token: the first record on the topic (nothing
    // refused was written), and a reload.
    let answer = post(&host, "/api/ingest/orders", Some("application/json; charset=utf-8"), Some(TOKEN), ORDER);
    assert_eq!(answer.code, 200, "{}", answer.body);
    assert_eq!(answer.json(), serde_json::json!({"topic": "orders", "records": [{"partition": 0, "offset": 0}]}));
    host.wait_records_in(1, Duration::from_secs(60));
    assert_eq!(host.metric("sluice_records_in_total"), Some(1.0));
    let answer = post(&host, "/api/reload", Some("Application/JSON"), Some(TOKEN), b"");
    assert_eq!((answer.code, answer.json()["result"].as_str()), (200, Some("unchanged")), "{}", answer.body);
    assert!(reloaded(&host, Some(TOKEN)));
    let answer = post(&host, "/api/promote/categorize", Some("application/json"), Some(TOKEN), b"");
    assert_eq!(answer.code, 409, "past the type, to the stage's missing canary: {}", answer.body);
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
    let ingest =
        format!("POST /api/ingest/orders HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json");

    // Four requests whose bodies are still on their way hold the four slots.
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(stream, "{ingest}\r\nContent-Length: 100\r\n\r\n{{").unwrap();
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
