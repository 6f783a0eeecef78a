//! Outages of the peers: the host logs them, retries, commits nothing it
//! has not finished, and loses nothing once the peer is back.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::kafka::{Tansu, consume, produce};
use support::process::{Host, HostEnv};
use support::{OwnRedis, data_dir, free_port};

fn load_lookups(redis_url: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["gen", "--count", "0", "--redis-url", redis_url, "--lookup-prefix", ""])
        .arg("--lookups-file")
        .arg(data_dir().join("lookups.json"))
        .status()
        .unwrap();
    assert!(status.success());
}

fn examples() -> Vec<(Option<String>, Vec<u8>)> {
    ["orders-webshop.jsonl", "orders-grocery.jsonl", "orders-delivery.jsonl", "invalid.jsonl"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(data_dir().join(f))
                .unwrap()
                .lines()
                .map(|l| (None, l.as_bytes().to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_then_back_loses_nothing_and_commits_nothing_meanwhile() {
    let tansu = Tansu::start();
    let port = free_port();
    let redis = OwnRedis::start(port);
    load_lookups(&redis.url());
    let env = HostEnv::new(&tansu.brokers(), "", "c:", "redis-outage").set("REDIS_URL", &redis.url());
    let mut host = Host::start(&env);
    host.wait_ready(Duration::from_secs(60));

    redis.stop();
    let records = examples();
    produce(&tansu.brokers(), "orders", &records).await;
    wait_for("the outage to be counted", Duration::from_secs(30), || {
        host.metric("sluice_errors_total{peer=\"redis\"}").is_some_and(|n| n >= 1.0)
    });
    assert_eq!(host.get("/ready").unwrap().0, 503, "not ready while Redis is down");
    wait_for("three retries of the batch", Duration::from_secs(30), || {
        host.metric("sluice_retries_total").is_some_and(|n| n >= 3.0)
    });
    assert_eq!(host.metric("sluice_records_in_total"), Some(0.0), "nothing is committed during the outage");
    let log = host.log_text();
    assert!(
        log.contains("waiting for lookups") && log.contains(&format!("127.0.0.1:{port}"))
            || log.contains("Connection refused"),
        "{log}"
    );

    let redis = OwnRedis::start(port);
    load_lookups(&redis.url());
    host.wait_records_in(records.len() as u64, Duration::from_secs(60));
    let enriched =
        consume(&tansu.brokers(), "orders.enriched", 7, Duration::from_secs(30), Duration::from_secs(2)).await;
    let dlq = consume(&tansu.brokers(), "orders.dlq", 6, Duration::from_secs(30), Duration::from_secs(2)).await;
    assert_eq!((enriched.len(), dlq.len()), (7, 6), "each record exactly once");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let orders: i64 = redis::cmd("HGET").arg("c:totals").arg("orders").query(&mut con).unwrap();
    let revenue: i64 = redis::cmd("HGET").arg("c:totals").arg("revenue_cents").query(&mut con).unwrap();
    assert_eq!((orders, revenue), (7, 500_164));
    assert_eq!(host.get("/ready").unwrap().0, 200, "ready again");
    assert!(host.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_at_start_is_logged_and_waited_for() {
    let port = free_port();
    let redis = OwnRedis::start(free_port());
    load_lookups(&redis.url());
    let env = HostEnv::new(&format!("127.0.0.1:{port}"), "", "c:", "broker-outage").set("REDIS_URL", &redis.url());
    let mut host = Host::start(&env);
    wait_for("a Kafka connection error in the log", Duration::from_secs(30), || {
        let log = host.log_text();
        log.contains("kafka") && log.contains("Connection refused")
    });
    assert_eq!(host.get("/ready").unwrap().0, 503, "not ready without a broker");

    let tansu = Tansu::start_on(port);
    tansu.create_topic("orders", 3);
    tansu.create_topic("orders.enriched", 3);
    tansu.create_topic("orders.dlq", 1);
    let records = examples();
    produce(&tansu.brokers(), "orders", &records).await;
    host.wait_ready(Duration::from_secs(90));
    host.wait_records_in(records.len() as u64, Duration::from_secs(60));
    let enriched =
        consume(&tansu.brokers(), "orders.enriched", 7, Duration::from_secs(30), Duration::from_secs(2)).await;
    assert_eq!(enriched.len(), 7);
    assert!(host.terminate().success());
}
