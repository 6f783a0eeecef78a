//! Test inputs: generated orders, the shared examples, and the lookup
//! tables they refer to; and the exactness check of a whole run.

use super::kafka::{Consumed, consume, consume_with};
use super::model::{self, Expect, Summary, Tables};
use super::{REDIS_URL, data_dir};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

/// `sluice gen --print` output for a seed: the records as produced.
pub fn generated(count: u64, seed: u64, invalid_ratio: f64) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["gen", "--print", "--count", &count.to_string(), "--seed", &seed.to_string()])
        .args(["--invalid-ratio", &invalid_ratio.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

/// The lines of the shared example files.
pub fn example_values() -> Vec<String> {
    ["orders-webshop.jsonl", "orders-grocery.jsonl", "orders-delivery.jsonl", "invalid.jsonl"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(data_dir().join(f)).unwrap().lines().map(str::to_string).collect::<Vec<_>>()
        })
        .collect()
}

/// The generator's lookup tables merged with shared/data/lookups.json.
pub fn all_tables() -> Tables {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice")).args(["gen", "--print-lookups"]).output().unwrap();
    let mut tables: Tables = serde_json::from_slice(&out.stdout).unwrap();
    let text = std::fs::read_to_string(data_dir().join("lookups.json")).unwrap();
    let shared: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (table, rows) in shared.as_object().unwrap() {
        for (id, fields) in rows.as_object().unwrap() {
            for (field, v) in fields.as_object().unwrap() {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                tables.entry(table.clone()).or_default().entry(id.clone()).or_default().insert(field.clone(), v);
            }
        }
    }
    tables
}

/// Loads every lookup table (the generator's and the shared ones) into the
/// Redis at `url` under `prefix`.
pub async fn load_lookups(url: &str, prefix: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["gen", "--load-lookups", "--count", "0", "--lookup-prefix", prefix, "--redis-url", url])
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["gen", "--count", "0", "--lookup-prefix", prefix, "--redis-url", url, "--lookups-file"])
        .arg(data_dir().join("lookups.json"))
        .status()
        .unwrap();
    assert!(status.success());
}

/// A delivery order by `user` at `ts` (RFC 3339), with `quantity` of each of
/// two soups (641.00 and 169.00).
pub fn delivery(id: u64, user: &str, ts: &str, quantity: u32) -> String {
    serde_json::json!({
        "object_id": id, "object_type": "order", "sent_dttm": ts,
        "payload": {
            "restaurant": {"id": "af69ef12f4f34c6d86441c69"}, "date": ts, "user": {"id": user},
            "order_items": [
                {"name": "какой-то суп", "price": 641, "category": "Супы", "id": "97a91f3df3b44224bb8d67a4", "quantity": quantity},
                {"name": "еще суп", "price": 169, "category": "Супы", "id": "22a38d8dbb584051b8b72f15", "quantity": quantity},
            ],
            "final_status": "CLOSED",
        },
    })
    .to_string()
}

/// The records as Kafka (key, value) pairs without keys.
pub fn keyed(values: &[String]) -> Vec<(Option<String>, Vec<u8>)> {
    values.iter().map(|v| (None, v.as_bytes().to_vec())).collect()
}

/// What a whole input must become, by the independent model.
pub struct Expected {
    pub orders: Vec<Summary>,
    pub dead: BTreeMap<&'static str, usize>,
    pub filtered: usize,
}

impl Expected {
    pub fn of(values: &[String]) -> Self {
        let tables = all_tables();
        let mut e = Self { orders: Vec::new(), dead: BTreeMap::new(), filtered: 0 };
        for v in values {
            match model::expect(v, &tables) {
                Expect::Order(s) => e.orders.push(s),
                Expect::Dead(reason) => *e.dead.entry(reason).or_default() += 1,
                Expect::Filtered => e.filtered += 1,
            }
        }
        e
    }

    pub fn dead_total(&self) -> usize {
        self.dead.values().sum()
    }
}

pub fn order_ids(records: &[Consumed]) -> Vec<String> {
    records.iter().map(|r| r.json()["order_id"].as_str().unwrap().to_string()).collect()
}

/// Whether the broker hides the records of aborted transactions from
/// read_committed consumers, as Apache Kafka does. tansu 0.6 does not: there
/// the outputs of a transaction aborted by a crash or a fault stay visible.
pub async fn broker_hides_aborted_transactions(tansu: &super::kafka::Tansu) -> bool {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let topic = format!("probe-{}", super::free_port());
    tansu.create_topic(&topic, 1);
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .set("transactional.id", &topic)
        .create()
        .unwrap();
    let t = Duration::from_secs(10);
    producer.init_transactions(t).unwrap();
    for (value, commit) in [("aborted", false), ("committed", true)] {
        producer.begin_transaction().unwrap();
        producer.send(FutureRecord::<(), _>::to(&topic).payload(value), t).await.map_err(|(e, _)| e).unwrap();
        if commit { producer.commit_transaction(t).unwrap() } else { producer.abort_transaction(t).unwrap() }
    }
    let got = consume(&tansu.brokers(), &topic, 1, Duration::from_secs(30), Duration::from_secs(2)).await;
    let hides = got.iter().all(|r| r.value != b"aborted");
    eprintln!("broker hides aborted transactions: {hides}");
    hides
}

/// How strict [`assert_exact`] is about outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    /// Every record exactly once.
    ExactlyOnce,
    /// Every record at least once; a repeat must be identical to the first
    /// copy (a replay of an aborted transaction the broker did not hide).
    /// Read uncommitted: such a broker never ends the open transaction of a
    /// killed instance that does not come back, which would hold
    /// read_committed readers back for good.
    AbortsVisible,
}

/// Reads both output topics (read_committed) and checks that every valid
/// order is on `orders.enriched` and every invalid record on `orders.dlq`
/// with its reason, exactly once (or, with [`Outputs::AbortsVisible`], at
/// least once with identical repeats), and that the counters under
/// `counters_prefix` in the Redis at `redis_url` equal the model's sums
/// exactly in either case.
pub async fn assert_exact(brokers: &str, want: &Expected, redis_url: &str, counters_prefix: &str, outputs: Outputs) {
    let linger = Duration::from_secs(5);
    let isolation = if outputs == Outputs::ExactlyOnce { "read_committed" } else { "read_uncommitted" };
    // Where repeats are allowed, only the first of each order or dead
    // letter counts towards the number awaited.
    let exact = outputs == Outputs::ExactlyOnce;
    let mut ids = BTreeSet::new();
    let first_of_order = |r: &Consumed| exact || ids.insert(r.json()["order_id"].as_str().unwrap_or("").to_string());
    let (orders, wait) = (want.orders.len(), Duration::from_secs(240));
    let enriched = consume_with(brokers, "orders.enriched", orders, wait, linger, isolation, first_of_order).await;
    let mut first: BTreeMap<String, &Vec<u8>> = BTreeMap::new();
    let mut repeats = 0;
    for r in &enriched {
        let id = r.json()["order_id"].as_str().unwrap().to_string();
        if let Some(earlier) = first.insert(id.clone(), &r.value) {
            repeats += 1;
            assert_eq!(earlier, &r.value, "order {id} emitted twice with different content");
        }
    }
    eprintln!("orders.enriched: {} records, {} distinct, {repeats} repeated", enriched.len(), first.len());
    if exact {
        assert_eq!(repeats, 0, "orders emitted more than once");
    }
    let want_ids: BTreeSet<&String> = want.orders.iter().map(|o| &o.order_id).collect();
    let got_ids: BTreeSet<&String> = first.keys().collect();
    let missing: Vec<_> = want_ids.difference(&got_ids).take(10).collect();
    let unexpected: Vec<_> = got_ids.difference(&want_ids).take(10).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "orders.enriched: {} of {} orders; missing (up to 10): {missing:?}; not valid orders (up to 10): {unexpected:?}",
        got_ids.len(),
        want_ids.len()
    );

    let mut sources = BTreeSet::new();
    let first_of_source = |r: &Consumed| exact || sources.insert(source_of(r));
    let (dead, wait) = (want.dead_total(), Duration::from_secs(120));
    let dlq = consume_with(brokers, "orders.dlq", dead, wait, linger, isolation, first_of_source).await;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for r in &dlq {
        if seen.insert(source_of(r)) || exact {
            *reasons.entry(r.headers["sluice.error.reason"].clone()).or_default() += 1;
        }
    }
    let want_reasons: BTreeMap<String, usize> = want.dead.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(reasons, want_reasons, "dead letters by reason");

    // The last batch's effects may land just after its outputs are readable.
    let want_counters = model::counters(&want.orders);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut counters = super::read_counters_at(redis_url, counters_prefix).await;
    while counters != want_counters && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        counters = super::read_counters_at(redis_url, counters_prefix).await;
    }
    assert!(
        counters == want_counters,
        "Redis counters differ from the model's sums: totals {:?} vs {:?}",
        counters.get("totals"),
        want_counters.get("totals")
    );
}

/// Where a dead letter's record came from: its source partition and offset.
fn source_of(r: &Consumed) -> (String, String) {
    (r.headers["sluice.source.partition"].clone(), r.headers["sluice.source.offset"].clone())
}

/// The Redis every machine runs, for [`assert_exact`].
pub const SHARED_REDIS: &str = REDIS_URL;
