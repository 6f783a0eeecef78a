//! The delivery engine under bad data and changed surroundings: effects
//! Redis refuses, records too large to take, outputs the broker refuses, a
//! renamed consumer group and a recreated topic. Real Redis throughout, and
//! a real broker, tansu, except where tansu cannot refuse what a test needs
//! refused: there librdkafka's own mock broker does.

mod support;

use sluice::kafka::Source;
use sluice::metrics::Metrics;
use sluice::record::{Batch, Effect};
use sluice::redis::{Fence, RecordEffect, RedisEffects};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::kafka::{Tansu, committed, consume, produce};
use support::process::{Host, HostEnv};
use support::workdir::Workdir;
use support::{REDIS_URL, RedisPrefix};

fn redis() -> redis::Connection {
    redis::Client::open(REDIS_URL).unwrap().get_connection().unwrap()
}

fn incr(key: &str, field: &str, delta: i64) -> Effect {
    Effect::HashIncr { key: key.into(), field: field.into(), delta }
}

/// One record per entry, at offsets 0, 1, ... of partition `orders:0`.
fn batch(records: &[Vec<Effect>]) -> Vec<RecordEffect> {
    let per_record = records.iter().enumerate();
    per_record
        .flat_map(|(r, effects)| {
            effects.iter().map(move |e| RecordEffect { record: r, partition: 0, offset: r as i64, effect: e.clone() })
        })
        .collect()
}

fn hget(key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET").arg(key).arg(field).query(&mut redis()).unwrap()
}

#[tokio::test]
async fn an_effect_redis_refuses_fails_its_record_alone_and_nothing_of_it_is_applied() {
    let p = RedisPrefix::new("refuse");
    let (counts, wrong) = (format!("{}counts", p.0), format!("{}a-string", p.0));
    let _: () = redis::cmd("SET").arg(&wrong).arg("not a hash").query(&mut redis()).unwrap();
    let _: () = redis::cmd("HSET").arg(&counts).arg("big").arg(i64::MAX - 1).query(&mut redis()).unwrap();
    let fence = Fence { key: format!("{}fence", p.0), partitions: vec![("orders:0".into(), 4)] };
    let effects = batch(&[
        vec![incr(&counts, "orders", 1)],
        // A key of another type, after an increment of the same record.
        vec![incr(&counts, "orders", 1), incr(&wrong, "f", 1)],
        vec![incr(&counts, "orders", 1)],
        // An increment Redis would overflow.
        vec![incr(&counts, "orders", 1), incr(&counts, "big", 5)],
        vec![incr(&counts, "orders", 1)],
    ]);
    let mut client = RedisEffects::new(REDIS_URL).unwrap();
    let applied = client.apply_fenced(&fence, &effects).await.unwrap();
    let refused: Vec<usize> = applied.refused.iter().map(|r| r.record).collect();
    assert_eq!(refused, [1, 3], "{applied:?}");
    assert!(applied.refused[0].message.contains("WRONGTYPE"), "{}", applied.refused[0].message);
    assert!(applied.refused[0].message.contains(&wrong), "names the key: {}", applied.refused[0].message);
    assert!(applied.refused[1].message.contains("overflow"), "{}", applied.refused[1].message);
    // All or nothing per record: the refused records' first increments are
    // not applied, every other record's are, once.
    assert_eq!(hget(&counts, "orders").as_deref(), Some("3"));
    assert_eq!(hget(&counts, "big"), Some((i64::MAX - 1).to_string()));
    assert_eq!(hget(&fence.key, "orders:0").as_deref(), Some("4"));

    // Replayed (a crash before the outputs were written): nothing is applied
    // again, and the refused records are refused again, not taken for done.
    let again = client.apply_fenced(&fence, &effects).await.unwrap();
    assert_eq!(again.applied, 0);
    assert_eq!(again.skipped, effects.len());
    assert_eq!(again.refused.iter().map(|r| r.record).collect::<Vec<_>>(), [1, 3]);
    assert!(again.refused[0].message.contains("WRONGTYPE"), "{}", again.refused[0].message);
    assert_eq!(hget(&counts, "orders").as_deref(), Some("3"));
}

#[tokio::test]
async fn increments_that_overflow_only_together_apply_the_first_and_refuse_the_second() {
    let p = RedisPrefix::new("overflow-sum");
    let counts = format!("{}counts", p.0);
    let fence = Fence { key: format!("{}fence", p.0), partitions: vec![("orders:0".into(), 2)] };
    let effects = batch(&[
        vec![incr(&counts, "units", i64::MAX)],
        vec![incr(&counts, "units", i64::MAX)],
        vec![incr(&counts, "orders", 1)],
    ]);
    let applied = RedisEffects::new(REDIS_URL).unwrap().apply_fenced(&fence, &effects).await.unwrap();
    assert_eq!(applied.refused.iter().map(|r| r.record).collect::<Vec<_>>(), [1], "{applied:?}");
    assert_eq!(hget(&counts, "units"), Some(i64::MAX.to_string()));
    assert_eq!(hget(&counts, "orders").as_deref(), Some("1"));

    // Within one record, a sum that overflows is refused by the host.
    let fence = Fence { key: fence.key.clone(), partitions: vec![("orders:0".into(), 3)] };
    let one = vec![RecordEffect { record: 0, partition: 0, offset: 3, effect: incr(&counts, "x", i64::MAX) }, {
        RecordEffect { record: 0, partition: 0, offset: 3, effect: incr(&counts, "x", 1) }
    }];
    let applied = RedisEffects::new(REDIS_URL).unwrap().apply_fenced(&fence, &one).await.unwrap();
    assert_eq!(applied.refused.len(), 1, "{applied:?}");
    assert!(applied.refused[0].message.contains("overflow"), "{}", applied.refused[0].message);
    assert_eq!(hget(&counts, "x"), None);
    assert_eq!(hget(&fence.key, "orders:0").as_deref(), Some("3"));
}

/// `sluice run` of `pipeline` against its own broker, with `delivery`.
fn start(name: &str, pipeline: &str, brokers: &str, counters: &RedisPrefix, delivery: &str) -> (Host, Workdir) {
    let work = Workdir::new(name, pipeline);
    let env = HostEnv::new(brokers, "", &counters.0, name)
        .set("SLUICE_PLUGIN_DIR", &work.plugin_dir())
        .set("SLUICE_DELIVERY", delivery);
    let mut host = Host::start_with(&env, &work.pipeline());
    host.wait_ready(Duration::from_secs(60));
    (host, work)
}

/// The default pipeline with the test guest alone, allowed to write under
/// the counter prefix.
fn guest_pipeline() -> String {
    let stages = Workdir::default_pipeline().find("[[stages]]").unwrap();
    let guest = "[[stages]]\nname = \"guest\"\nplugin = \"${SLUICE_PLUGIN_DIR}/testguest.wasm\"\n\
                 writes = [\"${SLUICE_REDIS_PREFIX}\"]\n";
    format!("{}{guest}", &Workdir::default_pipeline()[..stages])
}

async fn refused_effects_are_dead_lettered(delivery: &str) {
    let tansu = Tansu::start();
    let counters = RedisPrefix::new(&format!("refused-{delivery}"));
    let wrong = format!("{}wrong", counters.0);
    let _: () = redis::cmd("SET").arg(&wrong).arg("a string").query(&mut redis()).unwrap();
    let (mut host, _work) =
        start(&format!("refused-{delivery}"), &guest_pipeline(), &tansu.brokers(), &counters, delivery);
    let good = format!("effects 2 {}good", counters.0);
    let bad = format!("effects 1 {wrong}");
    let records: Vec<_> = [&good, &bad, &good].iter().map(|c| (None, c.as_bytes().to_vec())).collect();
    produce(&tansu.brokers(), "orders", &records).await;
    host.wait_records_in(3, Duration::from_secs(60));

    let dead = consume(&tansu.brokers(), "orders.dlq", 1, Duration::from_secs(30), Duration::from_secs(1)).await;
    assert_eq!(dead.len(), 1, "{}", host.log_text());
    let header = |name: &str| dead[0].headers.get(name).cloned().unwrap_or_default();
    assert_eq!(header("sluice.error.reason"), "effect_failed");
    assert_eq!(header("sluice.error.stage"), "guest");
    assert!(header("sluice.error.message").contains("WRONGTYPE"), "{}", header("sluice.error.message"));
    assert_eq!(String::from_utf8_lossy(&dead[0].value), bad);
    // The refused record produced nothing; the others produced and counted.
    let out = consume(&tansu.brokers(), "orders.enriched", 2, Duration::from_secs(30), Duration::from_secs(1)).await;
    assert_eq!(out.len(), 2);
    let good_key = format!("{}good", counters.0);
    assert_eq!((hget(&good_key, "f0"), hget(&good_key, "f1")), (Some("2".into()), Some("2".into())));
    assert_eq!(host.metric("sluice_dead_letters_total{stage=\"guest\",reason=\"effect_failed\"}"), Some(1.0));
    assert!(host.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sluice_run_dead_letters_an_effect_redis_refuses_at_least_once() {
    refused_effects_are_dead_lettered("at-least-once").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sluice_run_dead_letters_an_effect_redis_refuses_exactly_once() {
    refused_effects_are_dead_lettered("exactly-once").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_over_max_record_bytes_is_dead_lettered_before_any_stage() {
    let tansu = Tansu::start();
    let counters = RedisPrefix::new("too-large");
    let text = guest_pipeline().replace("[source]\n", "[source]\nmax_record_bytes = 1000\n");
    let (mut host, _work) = start("too-large", &text, &tansu.brokers(), &counters, "at-least-once");
    let large = format!("ok {}", "x".repeat(2000));
    produce(&tansu.brokers(), "orders", &[(None, large.as_bytes().to_vec()), (None, b"ok".to_vec())]).await;
    host.wait_records_in(2, Duration::from_secs(60));
    let dead = consume(&tansu.brokers(), "orders.dlq", 1, Duration::from_secs(30), Duration::from_secs(1)).await;
    assert_eq!(dead.len(), 1);
    let header = |name: &str| dead[0].headers.get(name).cloned().unwrap_or_default();
    assert_eq!(header("sluice.error.reason"), "record_too_large");
    assert_eq!(header("sluice.error.stage"), "source");
    assert!(
        header("sluice.error.message").contains("source.max_record_bytes (1000)"),
        "{}",
        header("sluice.error.message")
    );
    assert_eq!(dead[0].value.len(), large.len(), "the dead letter carries the record as received");
    let out = consume(&tansu.brokers(), "orders.enriched", 1, Duration::from_secs(30), Duration::from_secs(1)).await;
    assert_eq!(out.iter().map(|o| o.value.clone()).collect::<Vec<_>>(), [b"ok".to_vec()]);
    assert!(host.terminate().success());
}

fn counter(key: &str) -> std::collections::BTreeMap<String, i64> {
    redis::cmd("HGETALL").arg(key).query(&mut redis()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_group_that_reads_the_topic_again_counts_nothing_twice() {
    let tansu = Tansu::start();
    let counters = RedisPrefix::new("renamed");
    let records: Vec<_> = (0..20).map(|_| (None, format!("effects 1 {}n", counters.0).into_bytes())).collect();
    produce(&tansu.brokers(), "orders", &records).await;
    let (mut blue, _work) = start("renamed-blue", &guest_pipeline(), &tansu.brokers(), &counters, "at-least-once");
    blue.wait_records_in(20, Duration::from_secs(60));
    assert!(blue.terminate().success());
    assert_eq!(counter(&format!("{}n", counters.0))["f0"], 20);

    // Green: a new group, so every record is read again from the start.
    let (mut green, _work) = start("renamed-green", &guest_pipeline(), &tansu.brokers(), &counters, "at-least-once");
    green.wait_records_in(20, Duration::from_secs(60));
    assert_eq!(counter(&format!("{}n", counters.0))["f0"], 20, "{}", green.log_text());
    assert_eq!(green.metric("sluice_effects_skipped_total"), Some(20.0));
    assert!(green.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fence_past_the_end_of_its_partition_stops_the_host_and_says_how_to_reset() {
    let tansu = Tansu::start();
    let counters = RedisPrefix::new("recreated");
    let name = "recreated";
    // The fence as an earlier version kept it, by consumer group: the host
    // carries it over, then finds it past the end of the (new) topic.
    let old = format!("{}fence:{name}", counters.0);
    for partition in ["orders:0", "orders:1", "orders:2"] {
        let _: () = redis::cmd("HSET").arg(&old).arg(partition).arg(500).query(&mut redis()).unwrap();
    }
    let (mut host, _work) = start(name, &guest_pipeline(), &tansu.brokers(), &counters, "at-least-once");
    // The end offsets are known a few seconds after the assignment: keep
    // records coming until the host gives up.
    let record = (Some("k".to_string()), format!("effects 1 {}n", counters.0).into_bytes());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while host.is_running() {
        assert!(std::time::Instant::now() < deadline, "still running:\n{}", host.log_text());
        produce(&tansu.brokers(), "orders", std::slice::from_ref(&record)).await;
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = host.log_text();
    assert!(log.contains("is at offset 500, past the partition's end"), "{log}");
    let key = format!("{}fence:{}", counters.0, counters.0);
    assert!(log.contains(&format!("redis-cli HDEL '{key}' 'orders:")), "{log}");
    assert!(!host.wait_exit(Duration::from_secs(5)).success());
    assert_eq!(counter(&format!("{}n", counters.0)).get("f0"), None, "nothing applied");
}

/// The test guest's pipeline with batches of 10 and one commit a second.
fn small_batches_committed_each_second() -> String {
    let text = guest_pipeline().replace("batch_size = ${SLUICE_BATCH_SIZE:-500}", "batch_size = 10");
    assert!(text.contains("batch_size = 10"));
    format!("commit_interval_ms = 1000\n{text}")
}

/// `n` keyed records that each add 1 to field `f0` of `{prefix}n`.
fn counted(counters: &RedisPrefix, n: usize) -> Vec<(Option<String>, Vec<u8>)> {
    (0..n).map(|i| (Some(i.to_string()), format!("effects 1 {}n", counters.0).into_bytes())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_commits_one_transaction_per_interval_not_per_batch() {
    let tansu = Tansu::start();
    let counters = RedisPrefix::new("interval");
    let text = small_batches_committed_each_second();
    let (mut host, _work) = start("interval", &text, &tansu.brokers(), &counters, "exactly-once");
    produce(&tansu.brokers(), "orders", &counted(&counters, 2000)).await;
    host.wait_records_in(2000, Duration::from_secs(120));
    let (batches, transactions) =
        (host.metric("sluice_batches_total").unwrap(), host.metric("sluice_transactions_total").unwrap());
    assert!(batches >= 200.0, "{batches} batches of at most 10 records");
    assert!(transactions * 5.0 < batches, "{transactions} transactions for {batches} batches");
    assert_eq!(counter(&format!("{}n", counters.0))["f0"], 2000);
    let out = consume(&tansu.brokers(), "orders.enriched", 2000, Duration::from_secs(60), Duration::from_secs(1)).await;
    assert_eq!(out.len(), 2000);
    assert!(host.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn at_least_once_commits_offsets_per_interval_not_per_batch() {
    let tansu = Tansu::start();
    let counters = RedisPrefix::new("alo-interval");
    let text = small_batches_committed_each_second();
    let (mut host, _work) = start("alo-interval", &text, &tansu.brokers(), &counters, "at-least-once");
    produce(&tansu.brokers(), "orders", &counted(&counters, 2000)).await;
    host.wait_records_in(2000, Duration::from_secs(120));
    let (batches, commits) =
        (host.metric("sluice_batches_total").unwrap(), host.metric("sluice_offset_commits_total").unwrap());
    assert!(batches >= 200.0, "{batches} batches of at most 10 records");
    assert!(commits >= 1.0 && commits * 5.0 < batches, "{commits} offset commits for {batches} batches");
    assert!(host.terminate().success());
    // Everything was committed by the stop: a host of the same group would
    // read nothing again.
    assert_eq!(committed(&tansu.brokers(), "alo-interval", "orders"), 2000, "offsets committed by the stop");
    assert_eq!(counter(&format!("{}n", counters.0))["f0"], 2000);
}

/// A source on the default pipeline's settings, reading `orders` of `tansu`
/// in `group` with batches of `batch_size`.
fn source(tansu: &Tansu, group: &str, batch_size: usize) -> Source {
    source_with(tansu, group, batch_size, &Workdir::default_pipeline(), Arc::new(Metrics::default()))
}

/// [`source`] on `text`, counting into `metrics`.
fn source_with(tansu: &Tansu, group: &str, batch_size: usize, text: &str, metrics: Arc<Metrics>) -> Source {
    let brokers = tansu.brokers();
    let config = sluice::config::load_str(text, |name| match name {
        "KAFKA_BROKERS" => Some(brokers.clone()),
        "SLUICE_GROUP" => Some(group.to_string()),
        "SLUICE_BATCH_SIZE" => Some(batch_size.to_string()),
        _ => None,
    })
    .unwrap();
    Source::new(&config, metrics).unwrap()
}

/// Takes batches until `n` records have come (or fails after 60 s).
async fn take(source: &Source, n: usize) -> Vec<Batch> {
    let (mut batches, mut taken) = (Vec::new(), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while taken < n {
        assert!(std::time::Instant::now() < deadline, "only {taken} of {n} records came");
        let batch = source.next_batch().await;
        taken += batch.len();
        if !batch.is_empty() {
            batches.push(batch);
        }
    }
    batches
}

/// Per partition, the offsets in the order they were taken.
fn offsets(batches: &[Batch]) -> BTreeMap<i32, Vec<i64>> {
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in batches.iter().flat_map(Batch::records) {
        per_partition.entry(r.partition).or_default().push(r.offset);
    }
    per_partition
}

#[tokio::test(flavor = "multi_thread")]
async fn the_source_reads_at_most_two_batches_ahead_and_hands_out_every_record_once_in_order() {
    let tansu = Tansu::start();
    let records: Vec<_> = (0..3000).map(|i| (Some(i.to_string()), b"x".to_vec())).collect();
    produce(&tansu.brokers(), "orders", &records).await;
    let source = source(&tansu, "read-ahead", 100);
    // Nothing is taken: the reader fills its buffer and stops there.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while source.buffered().0 < 200 {
        assert!(std::time::Instant::now() < deadline, "read ahead {:?}", source.buffered());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(source.buffered().0, 200, "two batches of 100 read ahead, no more");

    let batches = take(&source, 3000).await;
    assert!(batches.iter().all(|b| b.len() <= 100));
    for b in &batches {
        for (i, r) in b.records().iter().enumerate() {
            let span = &b.spans()[b.span_of(i)];
            assert!(span.partition == r.partition && span.first <= r.offset && r.offset <= span.last);
        }
    }
    let per_partition = offsets(&batches);
    assert_eq!(per_partition.values().map(Vec::len).sum::<usize>(), 3000);
    for (partition, offsets) in &per_partition {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, &expected, "partition {partition}: every record once, in order");
    }
}

/// A source of `group` under `cooperative-sticky` that hands revoked
/// partitions over, as `sluice run`'s does, with its metrics.
fn cooperative(tansu: &Tansu, group: &str) -> (Source, Arc<Metrics>) {
    let text = Workdir::default_pipeline().replace(
        "[kafka.consumer]\n",
        "[kafka.consumer]\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n",
    );
    assert!(text.contains("cooperative-sticky"));
    let metrics = Arc::new(Metrics::default());
    let source = source_with(tansu, group, 50, &text, metrics.clone());
    source.handover().serve();
    (source, metrics)
}

/// Takes whatever `source` hands out for `wait`.
async fn take_for(source: &Source, wait: Duration) -> Vec<Batch> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut batches = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let batch = source.next_batch().await;
        if !batch.is_empty() {
            batches.push(batch);
        }
    }
    batches
}

/// Waits until `done` holds (or fails after 60 s, saying `what`).
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "not within 60 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 120 keyed records over six partitions.
fn spread(from: usize) -> Vec<(Option<String>, Vec<u8>)> {
    (from..from + 120).map(|i| (Some(i.to_string()), b"x".to_vec())).collect()
}

/// Six partitions, and a first member that has taken every record of them
/// (without committing) when a second member joins.
async fn joined_while_holding_records(group: &str) -> (Tansu, (Source, Arc<Metrics>), Vec<Batch>, Source) {
    let tansu = Tansu::start_with_partitions(6);
    produce(&tansu.brokers(), "orders", &spread(0)).await;
    let first = cooperative(&tansu, group);
    let taken = take(&first.0, 120).await;
    let (second, _) = cooperative(&tansu, group);
    until("the rebalance asks the first member to hand partitions over", || first.0.handover().pending()).await;
    (tansu, first, taken, second)
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_partitions_are_released_only_once_what_was_taken_of_them_is_committed() {
    let (tansu, (first, metrics), taken, second) = joined_while_holding_records("handover").await;
    // The rebalance waits: the second member gets nothing meanwhile.
    let early = take_for(&second, Duration::from_secs(3)).await;
    assert!(early.is_empty(), "the second member read {} records before the handover", early.len());
    for batch in &taken {
        first.store(batch);
    }
    first.commit_stored(sluice::kafka::Commit::Sync).unwrap();
    first.handover().answer();
    produce(&tansu.brokers(), "orders", &spread(120)).await;
    // The second member starts where the first committed: nothing it
    // reads was taken by the first, and nothing is skipped.
    let took = offsets(&taken);
    let read = offsets(&take_for(&second, Duration::from_secs(10)).await);
    assert!(!read.is_empty(), "the second member was given partitions and read them");
    for (partition, offsets) in &read {
        let start = took.get(partition).map_or(0, |t| t.last().unwrap() + 1);
        assert_eq!(offsets[0], start, "partition {partition}: the second member starts after the first's records");
    }
    assert_eq!(metrics.handovers_missed.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_not_handed_over_in_time_is_released_and_what_was_taken_of_it_is_not_committed() {
    let (_tansu, (first, metrics), taken, second) = joined_while_holding_records("handover-late").await;
    // No answer: the rebalance gives up after its wait and goes on.
    until("the rebalance gives up", || !first.handover().pending()).await;
    assert_eq!(metrics.handovers_missed.load(std::sync::atomic::Ordering::Relaxed), 1);
    let read = offsets(&take_for(&second, Duration::from_secs(10)).await);
    assert!(!read.is_empty(), "the second member was given partitions and read them");
    // It reads them from the start: nothing was committed. The first may
    // not commit its records of them now.
    assert!(read.values().all(|offsets| offsets[0] == 0), "{read:?}");
    let moved: Vec<i32> = read.keys().copied().filter(|p| offsets(&taken).contains_key(p)).collect();
    assert!(!moved.is_empty(), "the first member had taken records of a partition that moved");
    let refused = first.committing(taken.iter()).err().expect("a commit of records of a lost partition is refused");
    assert!(refused.contains("was revoked and released before its records read here were committed"), "{refused}");
    // Records of partitions it kept may still be committed.
    let kept: Vec<&Batch> =
        taken.iter().filter(|b| b.records().iter().all(|r| !read.contains_key(&r.partition))).collect();
    if !kept.is_empty() {
        assert!(first.committing(kept).is_ok());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewind_drops_what_was_read_ahead_and_reads_the_partitions_again_from_the_batch() {
    let tansu = Tansu::start();
    let records: Vec<_> = (0..1500).map(|i| (Some(i.to_string()), b"x".to_vec())).collect();
    produce(&tansu.brokers(), "orders", &records).await;
    let source = source(&tansu, "rewind", 100);
    let first = take(&source, 300).await;
    // Let the reader fill its buffer past the batches taken, then rewind
    // them (an aborted transaction): nothing is committed, so each of their
    // partitions goes back to its first record in them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while source.buffered().0 == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing was read ahead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    source.rewind(first.iter()).await.unwrap();
    let again = take(&source, 1500).await;
    let (before, after) = (offsets(&first), offsets(&again));
    let rewound: Vec<i32> = before.keys().copied().collect();
    for (partition, offsets) in &after {
        // A rewound partition starts again at its first offset taken; one
        // that was not (no record of it taken) goes on where it was.
        let start = before.get(partition).map_or(offsets[0], |b| b[0]);
        let expected: Vec<i64> = (start..start + offsets.len() as i64).collect();
        assert_eq!(offsets, &expected, "partition {partition} (rewound: {rewound:?}): no gap, no duplicate");
    }
}

/// The run loop takes the next batch while it delivers one; when that
/// delivery fails, the partitions go back to the failed batch, and the
/// batch taken ahead is dropped and rewound too. Its rewind must not move a
/// partition forward again, past records the first rewind put back: those
/// would be skipped, and a later commit would lose them for good.
#[tokio::test(flavor = "multi_thread")]
async fn rewinding_a_batch_taken_ahead_after_its_partition_went_back_further_skips_nothing() {
    let tansu = Tansu::start_with_partitions(1);
    let records: Vec<_> = (0..400).map(|i| (Some(i.to_string()), b"x".to_vec())).collect();
    produce(&tansu.brokers(), "orders", &records).await;
    let source = source(&tansu, "rewind-ahead", 100);
    let failed = take(&source, 100).await;
    let ahead = take(&source, 100).await;
    // The failed batches go back to their first record (nothing is
    // committed); the reader reads them again into its buffer.
    source.rewind(failed.iter()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while source.buffered().0 < 100 {
        assert!(std::time::Instant::now() < deadline, "nothing was read again: {:?}", source.buffered());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then the batches taken ahead are dropped behind them and rewound.
    source.rewind(ahead.iter()).await.unwrap();
    let again = offsets(&take(&source, 400).await);
    let expected: Vec<i64> = (0..400).collect();
    assert_eq!(again[&0], expected, "every record again from the failed batch's first, none skipped");
}

/// Outputs refused for good by the broker, as Apache Kafka refuses a record
/// over the topic's `max.message.bytes` (tansu takes any record, so
/// librdkafka's mock broker plays the broker): the next two produce requests
/// fail with `MSG_SIZE_TOO_LARGE`. The first carries the first outputs; sent
/// again alone, the first of them is refused again and its input is
/// dead-lettered, while the others, fine alone, are delivered once.
///
/// The mock broker does not hide the records of aborted transactions from
/// read_committed readers: exactly-once, a record written in a transaction
/// that a later refusal aborted shows again, identically, so distinct
/// records are counted there.
async fn refused_outputs_are_dead_lettered(delivery: &str) {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    for topic in ["orders", "orders.enriched", "orders.dlq"] {
        mock.create_topic(topic, 1, 1).unwrap();
    }
    let brokers = mock.bootstrap_servers();
    let values = ["ok first", "ok second", "ok third", "ok fourth"];
    let records: Vec<_> = values.iter().map(|v| (None, v.as_bytes().to_vec())).collect();
    produce(&brokers, "orders", &records).await;
    let too_large = RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
    mock.request_errors(RDKafkaApiKey::Produce, &[too_large, too_large]);

    let counters = RedisPrefix::new(&format!("refused-output-{delivery}"));
    let name = format!("refused-output-{delivery}");
    let (mut host, _work) = start(&name, &guest_pipeline(), &brokers, &counters, delivery);
    host.wait_records_in(4, Duration::from_secs(60));

    let mut dead = consume(&brokers, "orders.dlq", 1, Duration::from_secs(30), Duration::from_secs(1)).await;
    let aborted_visible = delivery == "exactly-once";
    if aborted_visible {
        dead.dedup_by(|a, b| a.value == b.value && a.headers == b.headers);
    }
    assert_eq!(dead.len(), 1, "{}", host.log_text());
    let header = |name: &str| dead[0].headers.get(name).cloned().unwrap_or_default();
    assert_eq!(header("sluice.error.reason"), "output_too_large");
    assert_eq!(header("sluice.error.stage"), "guest");
    assert!(header("sluice.error.message").contains("orders.enriched"), "{}", header("sluice.error.message"));
    assert_eq!(String::from_utf8_lossy(&dead[0].value), values[0]);
    let out = consume(&brokers, "orders.enriched", 3, Duration::from_secs(30), Duration::from_secs(1)).await;
    let mut got: Vec<String> = out.iter().map(|o| String::from_utf8_lossy(&o.value).into_owned()).collect();
    got.sort();
    if aborted_visible {
        got.dedup();
    }
    let mut want: Vec<String> = values[1..].iter().map(|v| v.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "every other output once");
    let metric = "sluice_dead_letters_total{stage=\"guest\",reason=\"output_too_large\"}";
    assert_eq!(host.metric(metric), Some(1.0));
    assert!(host.terminate().success(), "{}", host.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_the_broker_refuses_for_good_dead_letters_its_input_at_least_once() {
    refused_outputs_are_dead_lettered("at-least-once").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_the_broker_refuses_for_good_dead_letters_its_input_exactly_once() {
    refused_outputs_are_dead_lettered("exactly-once").await;
}
