//! Exactly-once under failure: crashes, a stalled broker, a stalled Redis,
//! a rebalance and a fenced producer. Each run must leave every valid order on
//! `orders.enriched` once (read_committed), every invalid record on
//! `orders.dlq` once, and Redis counters equal to the model's sums.
//!
//! Outputs are held to exactly once where the broker hides aborted
//! transactions (Apache Kafka). tansu 0.6 does not, so there a batch whose
//! transaction was aborted by the fault may show twice, identically; the
//! counters must be exact on every broker.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::inputs::{
    Expected, Outputs, SHARED_REDIS, assert_exact, broker_hides_aborted_transactions, generated, keyed, load_lookups,
};
use support::kafka::{Tansu, produce};
use support::process::{Host, HostEnv};
use support::{OwnRedis, RedisPrefix, free_port};

/// A few pseudo-random durations from the clock, printed so that a failing
/// run can be retraced.
fn moments(n: usize, min_ms: u64, max_ms: u64) -> Vec<Duration> {
    let mut x = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let out: Vec<Duration> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(min_ms + x % (max_ms - min_ms))
        })
        .collect();
    eprintln!("moments: {out:?}");
    out
}

async fn outputs(tansu: &Tansu) -> Outputs {
    if broker_hides_aborted_transactions(tansu).await { Outputs::ExactlyOnce } else { Outputs::AbortsVisible }
}

fn env(tansu: &Tansu, lookups: &str, counters: &str, group: &str) -> HostEnv {
    HostEnv::new(&tansu.brokers(), lookups, counters, group)
        .set("SLUICE_DELIVERY", "exactly-once")
        .set("SLUICE_INSTANCE_ID", "one")
        .set("SLUICE_BATCH_SIZE", "200")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_three_times_keeps_outputs_and_counters_exact() {
    let tansu = Tansu::start();
    let (lookups, counters) = (RedisPrefix::new("crash-lookups"), RedisPrefix::new("crash-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let values = generated(200_000, 11, 0.02);
    let want = Expected::of(&values);
    produce(&tansu.brokers(), "orders", &keyed(&values)).await;

    let env = env(&tansu, &lookups.0, &counters.0, "crash");
    for (i, moment) in moments(3, 500, 3_000).into_iter().enumerate() {
        let mut host = Host::start(&env);
        host.wait_ready(Duration::from_secs(90));
        std::thread::sleep(moment);
        assert!(host.is_running(), "run {i} ended early:\n{}", host.log_text());
        host.kill();
    }
    let mut host = Host::start(&env);
    host.wait_ready(Duration::from_secs(90));
    assert_exact(&tansu.brokers(), &want, SHARED_REDIS, &counters.0, outputs(&tansu).await).await;
    assert!(host.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_broker_and_a_stalled_redis_keep_everything_exact() {
    let tansu = Tansu::start();
    let redis = OwnRedis::start(free_port());
    load_lookups(&redis.url(), "").await;
    let values = generated(60_000, 12, 0.02);
    let want = Expected::of(&values);
    produce(&tansu.brokers(), "orders", &keyed(&values)).await;

    let env = env(&tansu, "", "c:", "stall").set("REDIS_URL", &redis.url());
    let mut host = Host::start(&env);
    host.wait_ready(Duration::from_secs(90));
    host.wait_records_in(5_000, Duration::from_secs(60));

    tansu.signal("STOP");
    std::thread::sleep(Duration::from_secs(10));
    tansu.signal("CONT");
    host.wait_records_in(25_000, Duration::from_secs(120));

    redis.signal("STOP");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut degraded = host.get("/ready").map(|(code, _)| code);
    while degraded != Some(503) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        degraded = host.get("/ready").map(|(code, _)| code);
    }
    redis.signal("CONT");
    assert_eq!(degraded, Some(503), "not ready within 30 s of Redis stalling");

    assert_exact(&tansu.brokers(), &want, &redis.url(), "c:", outputs(&tansu).await).await;
    let retries = host.metric("sluice_retries_total").unwrap_or(0.0);
    assert!(retries > 0.0, "the stalls were noticed and waited out: {retries} retries");
    assert!(host.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_host_joining_and_leaving_keeps_everything_exact() {
    let tansu = Tansu::start();
    let (lookups, counters) = (RedisPrefix::new("rebalance-lookups"), RedisPrefix::new("rebalance-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let values = generated(100_000, 13, 0.02);
    let want = Expected::of(&values);
    let (early, late) = values.split_at(40_000);
    produce(&tansu.brokers(), "orders", &keyed(early)).await;

    let env = env(&tansu, &lookups.0, &counters.0, "rebalance");
    let mut first = Host::start(&env);
    first.wait_ready(Duration::from_secs(90));
    first.wait_records_in(5_000, Duration::from_secs(60));

    // The second host joins, records keep coming, and it leaves mid-stream.
    let mut second = Host::start(&env.clone().set("SLUICE_INSTANCE_ID", "two"));
    let joined = Instant::now();
    second.wait_ready(Duration::from_secs(90));
    let (brokers, late) = (tansu.brokers(), keyed(late));
    let producing = produce(&brokers, "orders", &late);
    let (_, ()) = tokio::join!(producing, async {
        tokio::task::block_in_place(|| second.wait_records_in(1, Duration::from_secs(90)));
    });
    eprintln!("second host consuming after {:?}", joined.elapsed());
    assert!(second.terminate().success(), "{}", second.log_text());

    assert_exact(&tansu.brokers(), &want, SHARED_REDIS, &counters.0, outputs(&tansu).await).await;
    assert!(first.terminate().success());
}

/// Under `cooperative-sticky` (exactly-once), a second member joins while
/// the first works through a backlog with transactions open for up to 30 s,
/// so that a rebalance takes partitions away from an open transaction. The
/// revoked partitions are handed over: the first member commits what it
/// took of them before they are released, so the second member starts
/// after it and replays nothing (its fence skips no effect). Every order
/// must be present and the counters exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_joining_a_long_transaction_under_cooperative_rebalancing_keeps_everything_exact() {
    let tansu = Tansu::start_with_partitions(6);
    let (lookups, counters) = (RedisPrefix::new("coop-eo-lookups"), RedisPrefix::new("coop-eo-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let values = generated(80_000, 29, 0.02);
    let want = Expected::of(&values);
    let (early, late) = values.split_at(70_000);
    produce(&tansu.brokers(), "orders", &keyed(early)).await;
    let text = support::workdir::Workdir::default_pipeline()
        .replace("[kafka.consumer]\n", "[kafka.consumer]\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n")
        .replace("\n[kafka]\n", "\ncommit_interval_ms = 30000\n\n[kafka]\n");
    assert!(text.contains("cooperative-sticky") && text.contains("commit_interval_ms = 30000"));
    let work = support::workdir::Workdir::new("coop-eo", &text);
    let env = env(&tansu, &lookups.0, &counters.0, "coop-eo").set("SLUICE_PLUGIN_DIR", &work.plugin_dir());
    let mut first = Host::start_with(&env, &work.pipeline());
    first.wait_ready(Duration::from_secs(90));
    first.wait_records_in(2_000, Duration::from_secs(60));
    // The second member joins while records keep coming.
    let mut second = Host::start_with(&env.clone().set("SLUICE_INSTANCE_ID", "two"), &work.pipeline());
    // Records keep coming, in a transaction held open by the 30 s commit
    // interval, for 20 s: longer than tansu takes to give the second member
    // its partitions (about 10 s), however fast the backlog goes.
    let (producer, late) = (support::kafka::Producer::new(&tansu.brokers()), keyed(late));
    let producing = tokio::spawn(async move {
        for chunk in late.chunks(100) {
            producer.send("orders", chunk).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::task::block_in_place(|| second.wait_records_in(1, Duration::from_secs(90)));
    producing.await.unwrap();
    assert_exact(&tansu.brokers(), &want, SHARED_REDIS, &counters.0, outputs(&tansu).await).await;
    let log = first.log_text();
    assert!(log.contains("partitions revoked"), "the first member gave partitions away: {log}");
    for (name, host) in [("first", &first), ("second", &second)] {
        let metric = |m: &str| host.metric(m).unwrap_or(-1.0);
        assert_eq!(metric("sluice_handovers_missed_total"), 0.0, "{name} member:\n{}", host.log_text());
        assert_eq!(metric("sluice_transactions_aborted_total"), 0.0, "{name} member:\n{}", host.log_text());
        assert_eq!(
            metric("sluice_effects_skipped_total"),
            0.0,
            "the {name} member replayed records the other had committed:\n{}",
            host.log_text()
        );
    }
    assert!(second.terminate().success(), "{}", second.log_text());
    assert!(first.terminate().success());
}

/// Takes over `transactional_id`, as a second instance started with the
/// same `SLUICE_INSTANCE_ID` would: the broker fences the producer that
/// held it.
fn fence(brokers: &str, transactional_id: &str) {
    use rdkafka::producer::{BaseProducer, Producer};
    let intruder: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", transactional_id)
        .create()
        .unwrap();
    intruder.init_transactions(Duration::from_secs(30)).unwrap();
}

// On tansu 0.6 this lost a few hundred orders in about one run in five,
// for two causes: offsets of the fenced transaction kept by the broker
// (handled in `Source::rewind`), and the batch taken ahead rewound after
// the failed one, which moved its partition forward again (a rewind now
// leaves a partition that a later seek moved back far enough).
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_fenced_three_times_is_replaced_each_time_and_everything_stays_exact() {
    let tansu = Tansu::start();
    let (lookups, counters) = (RedisPrefix::new("fenced-lookups"), RedisPrefix::new("fenced-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let values = generated(60_000, 14, 0.02);
    let want = Expected::of(&values);
    let chunks: Vec<&[String]> = values.chunks(15_000).collect();
    produce(&tansu.brokers(), "orders", &keyed(chunks[0])).await;

    // Each fence lands at a random moment while a chunk is being processed;
    // the next chunk is produced only after the host has replaced its
    // producer, so every fence is met by a transaction.
    let mut host = Host::start(&env(&tansu, &lookups.0, &counters.0, "fenced"));
    host.wait_ready(Duration::from_secs(90));
    for (i, moment) in moments(3, 50, 600).into_iter().enumerate() {
        std::thread::sleep(moment);
        fence(&tansu.brokers(), "fenced-one");
        produce(&tansu.brokers(), "orders", &keyed(chunks[i + 1])).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while host.metric("sluice_producer_replacements_total").unwrap_or(0.0) < (i + 1) as f64 {
            assert!(Instant::now() < deadline, "fence {i} not noticed within 60 s:\n{}", host.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_exact(&tansu.brokers(), &want, SHARED_REDIS, &counters.0, outputs(&tansu).await).await;
    assert!(host.terminate().success(), "{}", host.log_text());
}
