//! Stages' keyed state (`sluice:plugin/state@0.2.0`) under failure: the
//! `dedup` example drops an order seen again within a minute, and what it
//! drops must be what an uninterrupted run drops, computed here by an
//! independent model, after SIGKILLs and after a second instance joins and
//! leaves. Without durable, replay-consistent state a restarted host
//! forgets the orders it saw (copies go through), or, if its state ran
//! ahead of its offsets, drops an order as a copy of itself.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::RedisPrefix;
use support::kafka::{Producer, Tansu, consume_with};
use support::process::{Host, HostEnv};
use support::workdir::Workdir;

/// The dedup window of the test pipeline.
const WINDOW_MS: i64 = 60_000;

/// The default pipeline's settings with two stages: normalize, then dedup.
fn dedup_pipeline() -> String {
    let default = Workdir::default_pipeline();
    let stages = default.find("[[stages]]").unwrap();
    let chain = "[[stages]]\nname = \"normalize\"\nplugin = \"${SLUICE_PLUGIN_DIR}/normalize.wasm\"\n\n\
                 [[stages]]\nname = \"dedup\"\nplugin = \"${SLUICE_PLUGIN_DIR}/dedup.wasm\"\n\
                 config = { window_ms = 60000 }\n";
    format!("{}{chain}", &default[..stages])
}

/// A pseudo-random sequence from the clock, printed so that a failing run
/// can be retraced.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Self {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
        eprintln!("seed: {seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One web-shop order as produced: its id (also its key) and time.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    at_ms: i64,
}

impl Sent {
    fn value(&self) -> Vec<u8> {
        let ts = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(self.at_ms as u64));
        format!(r#"{{"order_id":"{}","product_id":"WHEY001","quantity":1,"timestamp":"{ts}"}}"#, self.id).into_bytes()
    }
}

/// `ids` orders, each sent one to three times: a copy 1 to 59 s after the
/// first (a duplicate) or 61 to 120 s after it (a new order of the same id).
/// Copies of an id keep their order but are spread over the whole input,
/// so that they straddle the restarts.
fn orders(ids: usize, rng: &mut Rng) -> Vec<Sent> {
    let base = 1_735_689_600_000; // 2025-01-01
    let mut per_id: Vec<Vec<Sent>> = (0..ids)
        .map(|i| {
            let id = format!("o-{i}");
            let first = base + i as i64 * 1_000;
            let mut copies = vec![Sent { id: id.clone(), at_ms: first }];
            let mut at = first;
            for _ in 0..rng.below(3) {
                at += if rng.below(2) == 0 {
                    1_000 + rng.below(58_000) as i64
                } else {
                    61_000 + rng.below(59_000) as i64
                };
                copies.push(Sent { id: id.clone(), at_ms: at });
            }
            copies.reverse(); // popped from the end
            copies
        })
        .collect();
    let mut out = Vec::new();
    let mut live: Vec<usize> = (0..ids).collect();
    while !live.is_empty() {
        let pick = rng.below(live.len() as u64) as usize;
        let i = live[pick];
        out.push(per_id[i].pop().unwrap());
        if per_id[i].is_empty() {
            live.swap_remove(pick);
        }
    }
    out
}

/// The model: per id, in the order sent, an order passes unless an order
/// of the same id passed less than the window before (or after) it.
fn passing(sent: &[Sent]) -> BTreeSet<(String, i64)> {
    let mut kept: BTreeMap<&str, i64> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for s in sent {
        if kept.get(s.id.as_str()).is_some_and(|&first| (s.at_ms - first).abs() < WINDOW_MS) {
            continue;
        }
        kept.insert(&s.id, s.at_ms);
        out.insert((s.id.clone(), s.at_ms));
    }
    out
}

/// The distinct (order id, time) of the orders on `orders.enriched`, once
/// `want` distinct ones arrived and nothing more for a few seconds.
async fn passed(brokers: &str, want: usize) -> BTreeSet<(String, i64)> {
    let mut seen = BTreeSet::new();
    let records = consume_with(
        brokers,
        "orders.enriched",
        want,
        Duration::from_secs(180),
        Duration::from_secs(5),
        "read_committed",
        |r| {
            let order: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            let at = humantime::parse_rfc3339_weak(order["ts"].as_str().unwrap()).unwrap();
            let at = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
            seen.insert((order["order_id"].as_str().unwrap().to_string(), at))
        },
    )
    .await;
    eprintln!("{} records on orders.enriched, {} distinct", records.len(), seen.len());
    seen
}

fn assert_same(got: &BTreeSet<(String, i64)>, want: &BTreeSet<(String, i64)>) {
    let missing: Vec<_> = want.difference(got).take(10).collect();
    let extra: Vec<_> = got.difference(want).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} orders passed, the model passes {}; missing (dropped as copies, or lost): {missing:?}; extra (copies \
         that went through): {extra:?}",
        got.len(),
        want.len()
    );
}

fn env(tansu: &Tansu, work: &Workdir, prefix: &RedisPrefix, group: &str, delivery: &str) -> HostEnv {
    HostEnv::new(&tansu.brokers(), "", &prefix.0, group)
        .set("SLUICE_PLUGIN_DIR", &work.plugin_dir())
        .set("SLUICE_DELIVERY", delivery)
        .set("SLUICE_BATCH_SIZE", "100")
}

/// The input in four chunks; the host started for each of the first three
/// is SIGKILLed once it has read about half of its chunk, while it writes
/// state that its offsets do not cover yet.
async fn dedup_after_sigkills(delivery: &str) {
    let tansu = Tansu::start();
    let name = format!("state-kill-{delivery}");
    let prefix = RedisPrefix::new(&name);
    let work = Workdir::new(&name, &dedup_pipeline());
    let mut rng = Rng::from_clock();
    let sent = orders(16_000, &mut rng);
    let want = passing(&sent);
    let values: Vec<(Option<String>, Vec<u8>)> = sent.iter().map(|s| (Some(s.id.clone()), s.value())).collect();
    let env = env(&tansu, &work, &prefix, &name, delivery);
    let producer = Producer::new(&tansu.brokers());
    let chunks: Vec<_> = values.chunks(values.len().div_ceil(4)).collect();
    for chunk in &chunks[..3] {
        let mut host = Host::start_with(&env, &work.pipeline());
        host.wait_ready(Duration::from_secs(90));
        producer.send("orders", chunk).await;
        host.wait_records_in(chunk.len() as u64 / 3 + rng.below(chunk.len() as u64 / 3), Duration::from_secs(120));
        assert!(host.is_running(), "the host ended early:\n{}", host.log_text());
        host.kill();
    }
    let mut host = Host::start_with(&env, &work.pipeline());
    host.wait_ready(Duration::from_secs(90));
    producer.send("orders", chunks[3]).await;
    assert_same(&passed(&tansu.brokers(), want.len()).await, &want);
    assert!(host.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn dedup_state_survives_sigkills_exactly_once() {
    dedup_after_sigkills("exactly-once").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dedup_state_survives_sigkills_at_least_once() {
    dedup_after_sigkills("at-least-once").await;
}

/// A second instance joins mid-stream and is SIGKILLed: partitions move to
/// it and back, and the new owner of a partition must read its state.
#[tokio::test(flavor = "multi_thread")]
async fn dedup_state_follows_partitions_to_a_second_instance_and_back() {
    let tansu = Tansu::start_with_partitions(6);
    let name = "state-join";
    let prefix = RedisPrefix::new(name);
    let work = Workdir::new(name, &dedup_pipeline());
    let mut rng = Rng::from_clock();
    let sent = orders(6_000, &mut rng);
    let want = passing(&sent);
    let values: Vec<(Option<String>, Vec<u8>)> = sent.iter().map(|s| (Some(s.id.clone()), s.value())).collect();
    let chunks: Vec<_> = values.chunks(values.len().div_ceil(3)).collect();
    let producer = Producer::new(&tansu.brokers());
    let env = env(&tansu, &work, &prefix, name, "exactly-once");
    let mut first = Host::start_with(&env.clone().set("SLUICE_INSTANCE_ID", "first"), &work.pipeline());
    first.wait_ready(Duration::from_secs(90));
    producer.send("orders", chunks[0]).await;
    let mut second = Host::start_with(&env.clone().set("SLUICE_INSTANCE_ID", "second"), &work.pipeline());
    second.wait_ready(Duration::from_secs(90));
    producer.send("orders", chunks[1]).await;
    second.wait_log("partitions assigned", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500 + rng.below(2_000)));
    second.kill();
    producer.send("orders", chunks[2]).await;
    assert_same(&passed(&tansu.brokers(), want.len()).await, &want);
    assert!(first.is_running(), "{}", first.log_text());
    assert!(first.terminate().success());
}
