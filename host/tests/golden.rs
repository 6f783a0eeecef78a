//! Golden tests: every example in shared/data through the default chain
//! (real plugins, lookups from a real Redis) gives exactly the checked-in
//! canonical orders, dead letters and counters.
//!
//! `SLUICE_BLESS=1 cargo test --release --test golden` rewrites the
//! expected files; review the diff before committing it.

mod support;

use serde_json::{Value, json};
use sluice::lookup::{LookupSource, Row, Unavailable};
use sluice::pipeline::Chain;
use sluice::record::{Header, Record};
use sluice::redis::{Fence, RecordEffect, RedisEffects, RedisLookups};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::slow::SlowProxy;
use support::{RedisPrefix, data_dir, repo_root};

const FILES: [&str; 4] = ["orders-webshop.jsonl", "orders-grocery.jsonl", "orders-delivery.jsonl", "invalid.jsonl"];

fn records(file: &str) -> Vec<Record> {
    let text = std::fs::read_to_string(data_dir().join(file)).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, line)| Record {
            key: None,
            value: Some(line.as_bytes().to_vec()),
            headers: vec![Header { name: "origin".into(), value: file.as_bytes().to_vec() }],
            topic: "orders".into(),
            partition: 0,
            offset: i as i64,
            timestamp_ms: None,
        })
        .collect()
}

fn expected_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn check(name: &str, actual: &str) {
    let path = expected_path(name);
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(actual, expected, "{} differs (SLUICE_BLESS=1 rewrites it)", path.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_examples_through_the_default_chain() {
    let lookups_prefix = RedisPrefix::new("golden-lookups");
    let counters = RedisPrefix::new("golden-counters");
    support::load_shared_lookups(&lookups_prefix.0).await;

    let env = support::env_of(&[("SLUICE_LOOKUP_PREFIX", &lookups_prefix.0), ("SLUICE_REDIS_PREFIX", &counters.0)]);
    let pipeline = support::default_pipeline(&env);
    let lookups = Arc::new(RedisLookups::new(support::REDIS_URL, &pipeline.config.lookups).unwrap());
    let mut chain = tokio::task::spawn_blocking(move || {
        Chain::build(
            &sluice::engine::Engine::new().unwrap(),
            &pipeline,
            lookups,
            sluice::state::StateStore::in_memory(),
        )
        .unwrap()
    })
    .await
    .unwrap();
    let mut effects = RedisEffects::new(support::REDIS_URL).unwrap();

    let (mut enriched, mut dead, mut filtered) = (String::new(), String::new(), 0);
    for file in FILES {
        let records = records(file);
        let result = chain.process(&records).unwrap();
        assert_eq!(
            result.outputs.len() + result.dead_letters.len() + result.filtered as usize,
            records.len(),
            "{file}: every record is accounted for once"
        );
        filtered += result.filtered;
        for out in &result.outputs {
            assert_eq!(&*out.topic, "orders.enriched");
            let value: Value = serde_json::from_slice(&out.value).unwrap();
            assert_eq!(out.key.as_deref(), Some(value["order_id"].as_str().unwrap().as_bytes()), "key = order_id");
            enriched.push_str(std::str::from_utf8(&out.value).unwrap());
            enriched.push('\n');
        }
        for d in &result.dead_letters {
            assert_eq!(&*d.record.topic, "orders.dlq");
            let headers: BTreeMap<&str, String> = d
                .record
                .headers
                .iter()
                .map(|h| (h.name.as_str(), String::from_utf8_lossy(&h.value).into_owned()))
                .collect();
            let original = records.iter().find(|r| r.offset.to_string() == headers["sluice.source.offset"]).unwrap();
            assert_eq!(Some(&d.record.value), original.value.as_ref(), "the value is kept as received");
            assert_eq!(headers["origin"], file, "the record's own headers are kept");
            assert_eq!(headers["sluice.source.topic"], "orders");
            assert_eq!(headers["sluice.source.partition"], "0");
            assert!(!headers["sluice.error.message"].is_empty());
            let line = json!({
                "value": String::from_utf8_lossy(&d.record.value),
                "stage": headers["sluice.error.stage"],
                "reason": headers["sluice.error.reason"],
                "message": headers["sluice.error.message"],
            });
            dead.push_str(&format!("{line}\n"));
        }
        let fence = Fence {
            key: format!("{}fence", counters.0),
            partitions: vec![(file.to_string(), records.len() as i64 - 1)],
        };
        let record_effects: Vec<RecordEffect> = result
            .effects
            .into_iter()
            .map(|(origin, effect)| RecordEffect {
                record: origin,
                partition: 0,
                offset: records[origin].offset,
                effect,
            })
            .collect();
        let first = effects.apply_fenced(&fence, &record_effects).await.unwrap();
        assert!(first.refused.is_empty(), "{first:?}");
        // Applying the same batch again changes nothing: the fence holds.
        let again = effects.apply_fenced(&fence, &record_effects).await.unwrap();
        assert_eq!((again.applied, again.skipped), (0, record_effects.len()));
    }
    assert_eq!(filtered, 0, "no example is a cancelled order");
    check("enriched.jsonl", &enriched);
    check("dead-letters.jsonl", &dead);
    let counters_json = serde_json::to_string_pretty(&support::read_counters(&counters.0).await).unwrap() + "\n";
    check("counters.json", &counters_json);
}

/// The calls a stage made to its lookups: how many single lookups, and the
/// keys of each call for many.
#[derive(Default)]
struct Calls {
    one: Mutex<usize>,
    many: Mutex<Vec<Vec<(String, String)>>>,
}

struct Counted<L>(L, Arc<Calls>);

impl<L: LookupSource> LookupSource for Counted<L> {
    fn lookup(&self, table: &str, key: &str) -> Result<Option<Row>, Unavailable> {
        *self.1.one.lock().unwrap() += 1;
        self.0.lookup(table, key)
    }

    fn lookup_many(&self, keys: &[(&str, &str)]) -> Result<Vec<Option<Row>>, Unavailable> {
        self.1.many.lock().unwrap().push(keys.iter().map(|(t, k)| (t.to_string(), k.to_string())).collect());
        self.0.lookup_many(keys)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn enrich_reads_a_batchs_rows_in_one_call_and_the_host_reads_them_from_redis_in_one_round_trip() {
    let prefix = RedisPrefix::new("golden-batch-lookups");
    support::load_shared_lookups(&prefix.0).await;
    let env = support::env_of(&[("SLUICE_LOOKUP_PREFIX", &prefix.0)]);
    let pipeline = support::default_pipeline(&env);
    // Redis through a proxy that sees every request.
    let proxy = SlowProxy::start("127.0.0.1:6379", Duration::ZERO);
    let redis = RedisLookups::new(&format!("redis://127.0.0.1:{}", proxy.port), &pipeline.config.lookups).unwrap();
    let calls = Arc::new(Calls::default());
    let lookups = Arc::new(Counted(redis, calls.clone()));
    let mut chain = tokio::task::spawn_blocking(move || {
        let engine = sluice::engine::Engine::new().unwrap();
        Chain::build(&engine, &pipeline, lookups, sluice::state::StateStore::in_memory()).unwrap()
    })
    .await
    .unwrap();
    let batch: Vec<Record> = FILES[..3].iter().flat_map(|file| records(file)).collect();
    let result = tokio::task::spawn_blocking(move || chain.process(&batch).unwrap()).await.unwrap();
    assert_eq!(result.outputs.len() + result.dead_letters.len(), 7, "the seven example orders");
    assert!(!result.outputs.is_empty());

    assert_eq!(*calls.one.lock().unwrap(), 0, "no row was read on its own");
    let many = calls.many.lock().unwrap().clone();
    assert_eq!(many.len(), 1, "one call for the batch: {many:?}");
    let keys = &many[0];
    let unique: BTreeSet<&(String, String)> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "each row is asked for once: {keys:?}");
    let tables: BTreeSet<&str> = keys.iter().map(|(table, _)| table.as_str()).collect();
    assert_eq!(tables, BTreeSet::from(["product", "store", "user"]));

    // The cache was cold: every row went to Redis, in one pipeline.
    let requests = proxy.sent_containing("HGETALL");
    assert_eq!(requests.len(), 1, "one round trip: {requests:?}");
    assert_eq!(requests[0].matches("HGETALL").count(), keys.len());
}

#[test]
fn the_shipped_pipeline_parses() {
    let text = std::fs::read_to_string(repo_root().join("pipeline.toml")).unwrap();
    let config = sluice::config::load_str(&text, |_| None).unwrap();
    assert_eq!(config.kafka.brokers, "localhost:9092");
    assert_eq!(config.kafka.group, "sluice");
    assert_eq!(config.redis.url, "redis://127.0.0.1:6379");
    assert_eq!(config.admin.addr, "127.0.0.1:8080");
    assert_eq!(config.output.topic.as_deref(), Some("orders.enriched"));
    assert_eq!(config.dead_letter.topic, "orders.dlq");
    assert_eq!(config.lookups["user"].key_prefix, "user:");
    let names: Vec<&str> = config.stages.iter().map(|s| s.name.get_ref().as_str()).collect();
    assert_eq!(names, ["normalize", "enrich", "categorize", "totals"]);
    assert_eq!(config.stages[3].config["prefix"].as_str(), Some("sluice:"));
}
