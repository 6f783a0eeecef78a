//! Stages' keyed state (`sluice:plugin/state@0.2.0`) under failure, with a
//! real broker and Redis. Two stages keep state: `dedup` (Rust) drops an
//! order seen again within a minute, `suspicious` (JavaScript) flags a
//! user's fourth order within a minute. What they do must be what an
//! uninterrupted run does, computed here by independent models, after
//! SIGKILLs, after a second instance joins and leaves, and after an aborted
//! transaction. Without durable, replay-consistent state a restarted host
//! forgets what it saw (copies go through, bursts go unflagged), or, if its
//! state ran ahead of its offsets, drops an order as a copy of itself and
//! counts orders twice.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::RedisPrefix;
use support::inputs::delivery;
use support::kafka::{Consumed, Producer, Tansu, consume, consume_with, produce};
use support::process::{Host, HostEnv};
use support::workdir::Workdir;

/// The window of both stages.
const WINDOW_MS: i64 = 60_000;
/// More orders than this within the window get a user flagged.
const MAX_PER_MINUTE: usize = 3;

/// The default pipeline's settings with `normalize` and then `stage`.
fn pipeline(stage: &str) -> String {
    let default = Workdir::default_pipeline();
    let stages = default.find("[[stages]]").unwrap();
    let normalize = "[[stages]]\nname = \"normalize\"\nplugin = \"${SLUICE_PLUGIN_DIR}/normalize.wasm\"\n\n";
    format!("{}{normalize}{stage}", &default[..stages])
}

const DEDUP: &str = "[[stages]]\nname = \"dedup\"\nplugin = \"${SLUICE_PLUGIN_DIR}/dedup.wasm\"\n\
                     config = { window_ms = 60000 }\n\n";
const SUSPICIOUS: &str = "[[stages]]\nname = \"suspicious\"\nplugin = \"${SLUICE_PLUGIN_DIR}/suspicious.wasm\"\n\
                          limits = { memory_mib = 128 }\nconfig = { max_per_minute = 3, window_ms = 60000 }\n\n";

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

/// The items of `per_key` in one sequence: each key's items in their order,
/// the keys interleaved at random, so that a key's items straddle restarts.
fn interleave<T>(mut per_key: Vec<Vec<T>>, rng: &mut Rng) -> Vec<T> {
    per_key.iter_mut().for_each(|items| items.reverse());
    let mut out = Vec::new();
    let mut live: Vec<usize> = (0..per_key.len()).filter(|&k| !per_key[k].is_empty()).collect();
    while !live.is_empty() {
        let pick = rng.below(live.len() as u64) as usize;
        let k = live[pick];
        out.push(per_key[k].pop().unwrap());
        if per_key[k].is_empty() {
            live.swap_remove(pick);
        }
    }
    out
}

fn rfc3339(at_ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at_ms as u64)).to_string()
}

fn millis(ts: &str) -> i64 {
    let at = humantime::parse_rfc3339_weak(ts).unwrap_or_else(|e| panic!("ts {ts}: {e}"));
    at.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// One web-shop order as produced: its id (also its key) and time.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    at_ms: i64,
}

impl Sent {
    fn record(&self) -> (Option<String>, Vec<u8>) {
        let value = format!(
            r#"{{"order_id":"{}","product_id":"WHEY001","quantity":1,"timestamp":"{}"}}"#,
            self.id,
            rfc3339(self.at_ms)
        );
        (Some(self.id.clone()), value.into_bytes())
    }
}

/// `ids` orders, each sent one to three times: a copy 1 to 59 s after the
/// first (a duplicate) or 61 to 120 s after it (a new order of the same id).
fn copied_orders(ids: usize, rng: &mut Rng) -> Vec<Sent> {
    let base = 1_735_689_600_000; // 2025-01-01
    let per_id = (0..ids)
        .map(|i| {
            let id = format!("o-{i}");
            let mut at = base + i as i64 * 1_000;
            let mut copies = vec![Sent { id: id.clone(), at_ms: at }];
            for _ in 0..rng.below(3) {
                at += if rng.below(2) == 0 {
                    1_000 + rng.below(58_000) as i64
                } else {
                    61_000 + rng.below(59_000) as i64
                };
                copies.push(Sent { id: id.clone(), at_ms: at });
            }
            copies
        })
        .collect();
    interleave(per_id, rng)
}

/// The dedup model: per id, in the order sent, an order passes unless an
/// order of the same id passed less than the window before (or after) it.
fn dedup_model(sent: &[Sent]) -> BTreeSet<(String, i64)> {
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

/// A delivery order of a user: its id, user (its key) and time.
#[derive(Debug, Clone)]
struct Placed {
    id: u64,
    user: String,
    at_ms: i64,
}

impl Placed {
    fn record(&self) -> (Option<String>, Vec<u8>) {
        (Some(self.user.clone()), delivery(self.id, &self.user, &rfc3339(self.at_ms), 1).into_bytes())
    }
}

/// `users` users placing `each` orders, 2 to 40 s apart: bursts of four
/// within a minute are common.
fn users_orders(users: usize, each: usize, rng: &mut Rng) -> Vec<Placed> {
    let base = 1_740_000_000_000;
    let per_user = (0..users)
        .map(|u| {
            let mut at = base + rng.below(600_000) as i64;
            (0..each)
                .map(|i| {
                    at += 2_000 + rng.below(38_000) as i64;
                    Placed { id: (u * each + i) as u64 + 1, user: format!("u-{u}"), at_ms: at }
                })
                .collect()
        })
        .collect();
    interleave(per_user, rng)
}

/// The suspicious model: per user, the orders so far within the window
/// ending at this order's time. The header of each flagged order id.
fn suspicious_model(placed: &[Placed]) -> BTreeMap<String, String> {
    let mut recent: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut flagged = BTreeMap::new();
    for p in placed {
        let times = recent.entry(&p.user).or_default();
        times.push(p.at_ms);
        let latest = times.iter().copied().max().unwrap();
        times.retain(|t| *t > latest - WINDOW_MS);
        let count = times.iter().filter(|t| **t > p.at_ms - WINDOW_MS && **t <= p.at_ms).count();
        if count > MAX_PER_MINUTE {
            flagged.insert(p.id.to_string(), format!("{count} orders by user {} within 60 s", p.user));
        }
    }
    flagged
}

/// Reads `orders.enriched` until `want` distinct keys (by `key_of`) arrived
/// and then nothing more for a few seconds.
async fn outputs<K: Ord>(brokers: &str, want: usize, key_of: impl Fn(&Consumed) -> K) -> Vec<Consumed> {
    let mut seen = BTreeSet::new();
    let linger = Duration::from_secs(5);
    let records =
        consume_with(brokers, "orders.enriched", want, Duration::from_secs(180), linger, "read_committed", |r| {
            seen.insert(key_of(r))
        })
        .await;
    eprintln!("{} records on orders.enriched, {} distinct", records.len(), seen.len());
    records
}

async fn assert_dedup(brokers: &str, want: &BTreeSet<(String, i64)>) {
    let id_and_time = |r: &Consumed| {
        let order = r.json();
        (order["order_id"].as_str().unwrap().to_string(), millis(order["ts"].as_str().unwrap()))
    };
    let got: BTreeSet<(String, i64)> =
        outputs(brokers, want.len(), id_and_time).await.iter().map(id_and_time).collect();
    let missing: Vec<_> = want.difference(&got).take(10).collect();
    let extra: Vec<_> = got.difference(want).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} orders passed, the model passes {}; missing (dropped as copies, or lost): {missing:?}; extra (copies \
         that went through): {extra:?}",
        got.len(),
        want.len()
    );
}

/// Every order once or more (repeats identical), flagged as the model says.
async fn assert_flags(brokers: &str, placed: &[Placed]) {
    let want = suspicious_model(placed);
    assert!(want.len() > placed.len() / 20, "bursts are common: {} flagged", want.len());
    let id = |r: &Consumed| r.json()["order_id"].as_str().unwrap().to_string();
    let records = outputs(brokers, placed.len(), id).await;
    assert_flagged(&records, placed);
}

/// The delivery orders among `records` are each there once or more
/// (repeats identical), flagged as the model says.
fn assert_flagged(records: &[Consumed], placed: &[Placed]) {
    let want = suspicious_model(placed);
    let ids: BTreeSet<String> = placed.iter().map(|p| p.id.to_string()).collect();
    let mut flags: BTreeMap<String, BTreeSet<Option<String>>> = BTreeMap::new();
    for r in records {
        let id = r.json()["order_id"].as_str().unwrap().to_string();
        if ids.contains(&id) {
            flags.entry(id).or_default().insert(r.headers.get("sluice.suspicious").cloned());
        }
    }
    assert_eq!(flags.len(), placed.len(), "every delivery order passes");
    let wrong: Vec<_> = flags
        .iter()
        .filter(|(id, got)| **got != BTreeSet::from([want.get(*id).cloned()]))
        .take(10)
        .map(|(id, got)| format!("order {id}: {got:?}, the model says {:?}", want.get(id)))
        .collect();
    assert!(wrong.is_empty(), "{} of {} orders flagged wrongly: {wrong:#?}", wrong.len(), placed.len());
}

fn env(brokers: &str, work: &Workdir, prefix: &RedisPrefix, group: &str, delivery: &str) -> HostEnv {
    HostEnv::new(brokers, "", &prefix.0, group)
        .set("SLUICE_PLUGIN_DIR", &work.plugin_dir())
        .set("SLUICE_DELIVERY", delivery)
        .set("SLUICE_BATCH_SIZE", "100")
}

/// Runs `records` in four chunks through a host on `pipeline`; the host
/// started for each of the first three is SIGKILLed once it has read a third
/// to two thirds of its chunk, while it writes state that its offsets do
/// not cover yet. Returns the broker and the host left running.
async fn killed_thrice(
    name: &str,
    pipeline: &str,
    records: &[(Option<String>, Vec<u8>)],
    delivery: &str,
    rng: &mut Rng,
) -> (Tansu, Host, Workdir, RedisPrefix) {
    let tansu = Tansu::start();
    let prefix = RedisPrefix::new(name);
    let work = Workdir::new(name, pipeline);
    let env = env(&tansu.brokers(), &work, &prefix, name, delivery);
    let producer = Producer::new(&tansu.brokers());
    let chunks: Vec<_> = records.chunks(records.len().div_ceil(4)).collect();
    for chunk in &chunks[..3] {
        let mut host = Host::start_with(&env, &work.pipeline());
        host.wait_ready(Duration::from_secs(90));
        producer.send("orders", chunk).await;
        let third = chunk.len() as u64 / 3;
        host.wait_records_in(third + rng.below(third), Duration::from_secs(120));
        assert!(host.is_running(), "the host ended early:\n{}", host.log_text());
        host.kill();
    }
    let mut host = Host::start_with(&env, &work.pipeline());
    host.wait_ready(Duration::from_secs(90));
    producer.send("orders", chunks[3]).await;
    (tansu, host, work, prefix)
}

async fn dedup_after_sigkills(delivery: &str) {
    let mut rng = Rng::from_clock();
    let sent = copied_orders(16_000, &mut rng);
    let records: Vec<_> = sent.iter().map(Sent::record).collect();
    let name = format!("state-kill-{delivery}");
    let (tansu, mut host, _work, _prefix) = killed_thrice(&name, &pipeline(DEDUP), &records, delivery, &mut rng).await;
    assert_dedup(&tansu.brokers(), &dedup_model(&sent)).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn fraud_flags_in_javascript_survive_sigkills_exactly_once() {
    let mut rng = Rng::from_clock();
    let placed = users_orders(100, 100, &mut rng);
    let records: Vec<_> = placed.iter().map(Placed::record).collect();
    let name = "state-fraud-kill";
    let (tansu, mut host, _work, _prefix) =
        killed_thrice(name, &pipeline(SUSPICIOUS), &records, "exactly-once", &mut rng).await;
    assert_flags(&tansu.brokers(), &placed).await;
    assert!(host.terminate().success());
}

/// A second instance joins mid-stream and leaves (SIGTERM): partitions move
/// to it and back, and each new owner of a partition must read its state.
/// (A SIGKILLed instance's open transaction is never ended by tansu 0.6,
/// which then holds back read_committed readers; the SIGKILL tests above
/// restart the same instance, which ends it.)
#[tokio::test(flavor = "multi_thread")]
async fn state_follows_partitions_to_a_second_instance_and_back() {
    let tansu = Tansu::start_with_partitions(6);
    let mut rng = Rng::from_clock();
    let sent = copied_orders(6_000, &mut rng);
    let placed = users_orders(40, 60, &mut rng);
    // The two streams mixed, each in its own order.
    let streams = vec![sent.iter().map(Sent::record).collect(), placed.iter().map(Placed::record).collect()];
    let records = interleave(streams, &mut rng);
    let name = "state-join";
    let prefix = RedisPrefix::new(name);
    let both = pipeline(&format!("{DEDUP}{SUSPICIOUS}"));
    let work = Workdir::new(name, &both);
    let chunks: Vec<_> = records.chunks(records.len().div_ceil(3)).collect();
    let producer = Producer::new(&tansu.brokers());
    let env = env(&tansu.brokers(), &work, &prefix, name, "exactly-once");
    let mut first = Host::start_with(&env.clone().set("SLUICE_INSTANCE_ID", "first"), &work.pipeline());
    first.wait_ready(Duration::from_secs(90));
    producer.send("orders", chunks[0]).await;
    let mut second = Host::start_with(&env.clone().set("SLUICE_INSTANCE_ID", "second"), &work.pipeline());
    second.wait_ready(Duration::from_secs(90));
    producer.send("orders", chunks[1]).await;
    second.wait_log("partitions assigned", Duration::from_secs(60));
    second.wait_records_in(1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(rng.below(1_000)));
    assert!(second.terminate().success(), "{}", second.log_text());
    producer.send("orders", chunks[2]).await;
    // The web-shop orders pass dedup; the delivery orders have ids of
    // their own, so dedup passes every one of them.
    let mut want = dedup_model(&sent);
    want.extend(placed.iter().map(|p| (p.id.to_string(), p.at_ms)));
    assert_dedup(&tansu.brokers(), &want).await;
    assert_flags_among(&tansu.brokers(), &placed).await;
    assert!(first.is_running(), "{}", first.log_text());
    assert!(first.terminate().success());
}

/// [`assert_flags`] on the delivery orders of a topic holding others too,
/// all of them there already.
async fn assert_flags_among(brokers: &str, placed: &[Placed]) {
    let (wait, linger) = (Duration::from_secs(5), Duration::from_secs(5));
    let records = consume_with(brokers, "orders.enriched", 0, wait, linger, "read_committed", |_| true).await;
    assert_flagged(&records, placed);
}

/// A transaction aborted by the broker (two produce requests refused with
/// a non-retriable error) is processed again from its first record: the
/// state it wrote is rolled back first, so no order is dropped as a copy
/// of itself. librdkafka's mock broker, since tansu refuses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_transaction_rolls_back_the_state_it_wrote() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    for topic in ["orders", "orders.enriched", "orders.dlq"] {
        mock.create_topic(topic, 1, 1).unwrap();
    }
    let brokers = mock.bootstrap_servers();
    let mut rng = Rng::from_clock();
    let sent = copied_orders(300, &mut rng);
    let placed = users_orders(10, 30, &mut rng);
    let streams = vec![sent.iter().map(Sent::record).collect(), placed.iter().map(Placed::record).collect()];
    produce(&brokers, "orders", &interleave(streams, &mut rng)).await;
    let refused = RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS;
    mock.request_errors(RDKafkaApiKey::Produce, &[refused, refused]);

    let name = "state-abort";
    let prefix = RedisPrefix::new(name);
    let work = Workdir::new(name, &pipeline(&format!("{DEDUP}{SUSPICIOUS}")));
    let mut host = Host::start_with(&env(&brokers, &work, &prefix, name, "exactly-once"), &work.pipeline());
    host.wait_ready(Duration::from_secs(60));
    host.wait_log("state rolled back to a batch read again", Duration::from_secs(60));
    let mut want = dedup_model(&sent);
    want.extend(placed.iter().map(|p| (p.id.to_string(), p.at_ms)));
    assert_dedup(&brokers, &want).await;
    assert_flags_among(&brokers, &placed).await;

    // The state is visible: one key per order id in Redis, measured every
    // 5 s, and the writes the rollback undid.
    let ids = (sent.iter().map(|s| &s.id).collect::<BTreeSet<_>>().len() + placed.len()) as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let state = loop {
        let (_, pipeline) = host.json("GET", "/api/pipeline");
        let state = pipeline["stages"][1]["state"].clone();
        if state["keys"] == ids || std::time::Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(state["keys"], ids, "{state}");
    assert!(state["bytes"].as_u64().unwrap() > 0 && state["writes"].as_u64().unwrap() >= ids, "{state}");
    assert!(host.metric("sluice_state_rolled_back_total").unwrap() > 0.0);
    assert!(host.metric("sluice_state_writes_total{stage=\"dedup\"}").unwrap() >= ids as f64);
    assert!(host.terminate().success(), "{}", host.log_text());
}

/// A stage over `limits.state_keys` has its writes refused with the reason,
/// and the orders that needed them dead-lettered; once the values it kept
/// expire, the next refusal sweeps them out of Redis and there is room
/// again, although no order reads them.
#[tokio::test(flavor = "multi_thread")]
async fn state_over_its_key_limit_is_refused_until_expired_values_are_swept() {
    let tansu = Tansu::start_with_partitions(1);
    let name = "state-limit";
    let prefix = RedisPrefix::new(name);
    let stage = "[[stages]]\nname = \"dedup\"\nplugin = \"${SLUICE_PLUGIN_DIR}/dedup.wasm\"\n\
                 limits = { state_keys = 30 }\nconfig = { window_ms = 60000, remember_ms = 2000 }\n\n";
    let work = Workdir::new(name, &pipeline(stage));
    let mut host = Host::start_with(&env(&tansu.brokers(), &work, &prefix, name, "at-least-once"), &work.pipeline());
    host.wait_ready(Duration::from_secs(60));
    let base = 1_735_689_600_000;
    let wave = |from: usize| -> Vec<_> {
        (from..from + 50).map(|i| Sent { id: format!("o-{i}"), at_ms: base + i as i64 * 1_000 }.record()).collect()
    };
    let id = |r: &Consumed| r.json()["order_id"].as_str().unwrap().to_string();
    let ids = |from: usize| (from..from + 30).map(|i| format!("o-{i}")).collect::<BTreeSet<_>>();

    produce(&tansu.brokers(), "orders", &wave(0)).await;
    let dead = consume(&tansu.brokers(), "orders.dlq", 20, Duration::from_secs(60), Duration::from_secs(2)).await;
    assert_eq!(dead.len(), 20);
    let header = |name: &str| dead[0].headers.get(name).cloned().unwrap_or_default();
    assert_eq!(
        (header("sluice.error.reason").as_str(), header("sluice.error.stage").as_str()),
        ("state_refused", "dedup")
    );
    let message = header("sluice.error.message");
    assert!(message.contains("holds 30 keys in partition 0 of `orders`, limits.state_keys"), "{message}");
    let passed =
        consume(&tansu.brokers(), "orders.enriched", 30, Duration::from_secs(30), Duration::from_secs(1)).await;
    assert_eq!(passed.iter().map(id).collect::<BTreeSet<_>>(), ids(0), "the first 30 orders pass");

    // The 30 values expire after 2 s; a refusal sweeps at most every 5 s
    // (10 s after a sweep that found nothing).
    tokio::time::sleep(Duration::from_secs(12)).await;
    produce(&tansu.brokers(), "orders", &wave(50)).await;
    let dead = consume(&tansu.brokers(), "orders.dlq", 40, Duration::from_secs(60), Duration::from_secs(2)).await;
    assert_eq!(dead.len(), 40, "{}", host.log_text());
    let passed =
        consume(&tansu.brokers(), "orders.enriched", 60, Duration::from_secs(30), Duration::from_secs(1)).await;
    let second: BTreeSet<String> = passed.iter().map(id).filter(|i| !ids(0).contains(i)).collect();
    assert_eq!(second, ids(50), "the expired values made room for 30 more");
    let hash = format!("{}state:stage:dedup:orders:0", prefix.0);
    let mut redis = redis::Client::open("redis://127.0.0.1:6379").unwrap().get_connection().unwrap();
    let held: u64 = redis::cmd("HLEN").arg(&hash).query(&mut redis).unwrap();
    assert_eq!(held, 30, "the expired values are gone from Redis");
    assert_eq!(host.metric("sluice_state_expired_total{stage=\"dedup\"}"), Some(30.0));
    assert_eq!(host.metric("sluice_state_refused_total{stage=\"dedup\"}"), Some(40.0));
    assert!(host.terminate().success());
}

/// A canary of a stateful stage reads the state as the live version does:
/// not with the live version's writes of the same records, and with the
/// writes of the batch's earlier records. The same `dedup` as its own
/// candidate, on half the records, never disagrees.
#[tokio::test(flavor = "multi_thread")]
async fn a_canary_of_a_stateful_stage_sees_the_state_the_live_version_sees() {
    let tansu = Tansu::start();
    let mut rng = Rng::from_clock();
    let sent = copied_orders(1_500, &mut rng);
    let name = "state-canary";
    let prefix = RedisPrefix::new(name);
    let stage = "[[stages]]\nname = \"dedup\"\nplugin = \"${SLUICE_PLUGIN_DIR}/dedup.wasm\"\n\
                 canary = { plugin = \"${SLUICE_PLUGIN_DIR}/dedup.wasm\", sample = 0.5 }\n\
                 config = { window_ms = 60000 }\n\n";
    let work = Workdir::new(name, &pipeline(stage));
    let mut host = Host::start_with(&env(&tansu.brokers(), &work, &prefix, name, "at-least-once"), &work.pipeline());
    host.wait_ready(Duration::from_secs(60));
    produce(&tansu.brokers(), "orders", &sent.iter().map(Sent::record).collect::<Vec<_>>()).await;
    assert_dedup(&tansu.brokers(), &dedup_model(&sent)).await;
    let (_, live) = host.json("GET", "/api/pipeline");
    let canary = &live["stages"][1]["canary"];
    let compared = canary["compared"].as_u64().unwrap_or(0);
    assert!(compared > sent.len() as u64 / 4 && compared < sent.len() as u64, "{canary:#}");
    assert_eq!((canary["diffs"].as_u64(), canary["failures"].as_u64()), (Some(0), Some(0)), "{canary:#}");
    assert!(host.terminate().success());
}
