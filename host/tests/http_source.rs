//! An HTTP source against a local HTTP server the test controls, tansu and
//! the real Redis: pages walked with a cursor, duplicates skipped, a 500, a
//! slow answer and an answer that is not JSON waited out, ETags honoured,
//! and a restart of the host resuming where it stopped, while the rest of
//! the pipeline keeps running.

mod support;

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::RedisPrefix;
use support::inputs::{SHARED_REDIS, generated, keyed, load_lookups};
use support::kafka::{Tansu, consume, produce};
use support::process::{Host, HostEnv};

/// What the server does with the next request instead of answering.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Status500,
    NotJson,
    /// Answers after 3 s (the source's timeout is 1 s).
    Slow,
}

/// A partner's orders API: `GET /orders?since=N` answers
/// `{"data": {"orders": [...]}}` with up to 3 orders whose `updated_at`
/// is at least N (the order at the cursor comes again: a duplicate), with
/// an ETag, and 304 when `If-None-Match` matches.
#[derive(Default)]
struct State {
    orders: Vec<Value>,
    faults: VecDeque<Fault>,
    /// Every request: its path and query, and its headers (lower-case).
    requests: Vec<(String, Vec<(String, String)>)>,
    not_modified: usize,
}

struct Api {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Api {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || answer(stream, &state));
            }
        });
        Self { port, state }
    }

    fn add_orders(&self, ids: std::ops::RangeInclusive<u64>) {
        let mut state = self.state.lock().unwrap();
        for id in ids {
            state.orders.push(json!({"id": format!("p-{id}"), "updated_at": id, "total_cents": id * 100}));
        }
    }
}

fn answer(stream: std::net::TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let _ = reader.take(0).read_to_end(&mut Vec::new());
    let since: u64 = target.split("since=").nth(1).and_then(|s| s.split('&').next()?.parse().ok()).unwrap_or(0);
    let if_none_match = headers.iter().find(|(n, _)| n == "if-none-match").map(|(_, v)| v.clone());
    let (status, etag, body, delay) = {
        let mut state = state.lock().unwrap();
        state.requests.push((target, headers));
        match state.faults.pop_front() {
            Some(Fault::Status500) => ("500 Internal Server Error", String::new(), "oops".to_string(), None),
            Some(Fault::NotJson) => ("200 OK", String::new(), "<html>maintenance</html>".to_string(), None),
            fault => {
                let page: Vec<&Value> =
                    state.orders.iter().filter(|o| o["updated_at"].as_u64().unwrap() >= since).take(3).collect();
                let etag = format!("\"{since}-{}\"", page.len());
                let delay = matches!(fault, Some(Fault::Slow)).then_some(Duration::from_secs(3));
                if if_none_match.as_deref() == Some(etag.as_str()) {
                    state.not_modified += 1;
                    ("304 Not Modified", etag, String::new(), delay)
                } else {
                    ("200 OK", etag, json!({"data": {"orders": page}}).to_string(), delay)
                }
            }
        }
    };
    if let Some(delay) = delay {
        std::thread::sleep(delay);
    }
    let etag = if etag.is_empty() { String::new() } else { format!("ETag: {etag}\r\n") };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{etag}Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The default pipeline with the HTTP source `partner` polling `api`.
fn pipeline(api: &Api) -> (std::path::PathBuf, std::path::PathBuf) {
    let text = std::fs::read_to_string(support::repo_root().join("pipeline.toml")).unwrap();
    let plugins = support::repo_root().join("plugins/dist");
    let text = text.replace("${SLUICE_PLUGIN_DIR:-plugins/dist}", plugins.to_str().unwrap())
        + &format!(
            r#"
[http_sources.partner]
url = "http://127.0.0.1:{}/orders?page_size=3"
topic = "partner.orders"
interval_ms = 200
timeout_ms = 1000
headers = {{ Authorization = "Bearer ${{PARTNER_TOKEN}}" }}
items = "data.orders"
id = "id"
cursor = {{ param = "since", field = "updated_at" }}
"#,
            api.port
        );
    let dir = std::env::temp_dir().join(format!("sluice-http-source-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

async fn partner_orders(brokers: &str, n: usize) -> Vec<support::kafka::Consumed> {
    consume(brokers, "partner.orders", n, Duration::from_secs(60), Duration::from_secs(2)).await
}

fn ids(records: &[support::kafka::Consumed]) -> Vec<String> {
    records.iter().map(|r| r.json()["id"].as_str().unwrap().to_string()).collect()
}

fn want(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(|id| format!("p-{id}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_api_is_polled_into_a_topic_once_per_object_through_faults_and_a_restart() {
    let tansu = Tansu::start();
    tansu.create_topic("partner.orders", 1);
    let (lookups, counters) = (RedisPrefix::new("http-lookups"), RedisPrefix::new("http-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let api = Api::start();
    api.add_orders(1..=10);
    // The first polls fail three ways; the pipeline runs meanwhile.
    api.state.lock().unwrap().faults.extend([Fault::Status500, Fault::NotJson, Fault::Slow, Fault::Status500]);
    let (dir, path) = pipeline(&api);
    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "http-source").set("PARTNER_TOKEN", "s3cret");
    let mut host = Host::start_with(&env, &path);
    host.wait_ready(Duration::from_secs(90));
    let orders = generated(50, 31, 0.0);
    produce(&tansu.brokers(), "orders", &keyed(&orders)).await;
    host.wait_records_in(50, Duration::from_secs(60));

    // Pages of 3 whose first is the last of the page before: each object once.
    let got = partner_orders(&tansu.brokers(), 10).await;
    assert_eq!(ids(&got), want(1..=10));
    assert_eq!(got[0].key.as_deref(), Some("p-1"), "the key is the id");
    assert_eq!(got[0].headers.get("sluice.http.source").map(String::as_str), Some("partner"));
    assert_eq!(got[9].json(), json!({"id": "p-10", "updated_at": 10, "total_cents": 1000}));
    // Caught up: the same question is answered 304.
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.state.lock().unwrap().not_modified == 0 {
        assert!(Instant::now() < deadline, "never asked with If-None-Match");
        std::thread::sleep(Duration::from_millis(100));
    }
    let metric = |result: &str| {
        host.metric(&format!("sluice_http_source_polls_total{{source=\"partner\",result=\"{result}\"}}")).unwrap_or(0.0)
    };
    assert!(metric("error") >= 4.0, "the 500s, the timeout and the HTML were counted: {}", metric("error"));
    assert!(metric("not_modified") >= 1.0);
    let duplicates = "sluice_http_source_objects_total{source=\"partner\",outcome=\"duplicate\"}";
    assert!(host.metric(duplicates).unwrap_or(0.0) >= 3.0, "the repeated objects were skipped");
    {
        let state = api.state.lock().unwrap();
        let authorized = |(_, headers): &(String, Vec<(String, String)>)| {
            headers.iter().any(|(n, v)| n == "authorization" && v == "Bearer s3cret")
        };
        assert!(state.requests.iter().all(authorized), "every request carries the token");
        assert!(state.requests.iter().all(|(target, _)| target.contains("page_size=3")), "the URL's own query is kept");
    }
    let log = host.log_text();
    assert!(log.contains("HTTP 500"), "{log}");
    assert!(log.contains("the answer is not JSON"), "{log}");
    assert_eq!(host.get("/ready").map(|(code, _)| code), Some(200), "a failing API does not make the host unready");
    assert!(host.terminate().success());

    // Restarted, it asks from the cursor it kept and produces only what is new.
    api.add_orders(11..=14);
    let asked = api.state.lock().unwrap().requests.len();
    let mut host = Host::start_with(&env, &path);
    host.wait_ready(Duration::from_secs(90));
    let got = partner_orders(&tansu.brokers(), 14).await;
    assert_eq!(ids(&got), want(1..=14));
    let first_after = api.state.lock().unwrap().requests[asked].0.clone();
    assert!(first_after.contains("since=10"), "the first request after the restart: {first_after}");
    assert!(host.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}
