//! Scale-out: several hosts in one consumer group on a 6-partition topic
//! share the partitions; when one is killed its partitions move to the
//! others and the results stay exact.

mod support;

use std::time::{Duration, Instant};
use support::RedisPrefix;
use support::inputs::{
    Expected, Outputs, SHARED_REDIS, assert_exact, broker_hides_aborted_transactions, generated, load_lookups,
};
use support::kafka::{Tansu, produce};
use support::process::{Host, HostEnv};

fn env(tansu: &Tansu, lookups: &str, counters: &str, group: &str) -> HostEnv {
    HostEnv::new(&tansu.brokers(), lookups, counters, group).set("SLUICE_DELIVERY", "exactly-once")
}

/// The records keyed by their position, so that they spread over the partitions.
fn by_key(values: &[String]) -> Vec<(Option<String>, Vec<u8>)> {
    values.iter().enumerate().map(|(i, v)| (Some(i.to_string()), v.as_bytes().to_vec())).collect()
}

fn records_in(hosts: &[Host]) -> u64 {
    hosts.iter().map(|h| h.metric("sluice_records_in_total").unwrap_or(0.0) as u64).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_two_and_three_instances_share_six_partitions() {
    let lookups = RedisPrefix::new("scale-lookups");
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let count = 60_000;
    let values = generated(count, 21, 0.02);
    for n in 1..=3 {
        // A broker of its own per round, so that each round reads `count` records.
        let tansu = Tansu::start_with_partitions(6);
        let counters = RedisPrefix::new(&format!("scale-counters-{n}"));
        let env = env(&tansu, &lookups.0, &counters.0, "scale");
        let mut hosts: Vec<Host> =
            (0..n).map(|i| Host::start(&env.clone().set("SLUICE_INSTANCE_ID", &format!("i{i}")))).collect();
        // Every member holds partitions before the records arrive.
        let deadline = Instant::now() + Duration::from_secs(90);
        while !hosts.iter().all(|h| h.get("/ready").is_some_and(|(code, _)| code == 200)) {
            assert!(Instant::now() < deadline, "{n} instances never all ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let started = Instant::now();
        produce(&tansu.brokers(), "orders", &by_key(&values)).await;
        while records_in(&hosts) < count {
            assert!(started.elapsed() < Duration::from_secs(180), "{n} instances: stalled at {}", records_in(&hosts));
            std::thread::sleep(Duration::from_millis(100));
        }
        let secs = started.elapsed().as_secs_f64();
        let busy: Vec<u64> = hosts.iter().map(|h| h.metric("sluice_records_in_total").unwrap_or(0.0) as u64).collect();
        eprintln!(
            "scale-out: {n} instance(s): {count} records in {secs:.1} s from the first produce, {:.0} records/s (per instance {busy:?})",
            count as f64 / secs
        );
        assert_eq!(busy.iter().sum::<u64>(), count, "each record handled once");
        assert!(busy.iter().all(|b| *b > 0), "every instance got partitions: {busy:?}");
        for h in &mut hosts {
            assert!(h.terminate().success());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_one_of_three_instances_keeps_everything_exact() {
    let tansu = Tansu::start_with_partitions(6);
    let (lookups, counters) = (RedisPrefix::new("kill3-lookups"), RedisPrefix::new("kill3-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let values = generated(100_000, 22, 0.02);
    let want = Expected::of(&values);
    produce(&tansu.brokers(), "orders", &by_key(&values)).await;

    let env = env(&tansu, &lookups.0, &counters.0, "kill3").set("SLUICE_BATCH_SIZE", "100");
    let mut hosts: Vec<Host> =
        (0..3).map(|i| Host::start(&env.clone().set("SLUICE_INSTANCE_ID", &format!("k{i}")))).collect();
    for h in &mut hosts {
        h.wait_ready(Duration::from_secs(90));
    }
    hosts[0].wait_records_in(2_000, Duration::from_secs(60));
    hosts[0].kill();
    let outputs =
        if broker_hides_aborted_transactions(&tansu).await { Outputs::ExactlyOnce } else { Outputs::AbortsVisible };
    assert_exact(&tansu.brokers(), &want, SHARED_REDIS, &counters.0, outputs).await;
    for h in &mut hosts[1..] {
        assert!(h.terminate().success());
    }
}

/// Under `cooperative-sticky` a rebalance revokes only the partitions that
/// move; the ones a member keeps are not read again. Orders stream in at a
/// steady rate, so that the members spend most of their time gathering
/// batches, and a second member joins and later leaves meanwhile
/// (at-least-once): every order is present and the counters are exact, so
/// no record of a kept partition was dropped from a batch and skipped.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_joining_and_leaving_under_cooperative_rebalancing_skips_nothing() {
    let tansu = Tansu::start_with_partitions(6);
    let (lookups, counters) = (RedisPrefix::new("coop-lookups"), RedisPrefix::new("coop-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let values = generated(24_000, 23, 0.02);
    let want = Expected::of(&values);
    let text = support::workdir::Workdir::default_pipeline().replace(
        "[kafka.consumer]\n",
        "[kafka.consumer]\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n",
    );
    assert!(text.contains("cooperative-sticky"));
    let work = support::workdir::Workdir::new("coop", &text);
    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "coop")
        .set("SLUICE_DELIVERY", "at-least-once")
        .set("SLUICE_PLUGIN_DIR", &work.plugin_dir());
    let mut first = Host::start_with(&env.clone().set("SLUICE_INSTANCE_ID", "c0"), &work.pipeline());
    first.wait_ready(Duration::from_secs(90));

    // About 2,000 orders a second for 12 s.
    let brokers = tansu.brokers();
    let stream = tokio::spawn(async move {
        let producer = support::kafka::Producer::new(&brokers);
        for chunk in by_key(&values).chunks(100) {
            producer.send("orders", chunk).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    first.wait_records_in(2_000, Duration::from_secs(60));
    let mut second = Host::start_with(&env.clone().set("SLUICE_INSTANCE_ID", "c1"), &work.pipeline());
    second.wait_records_in(500, Duration::from_secs(90));
    assert!(second.terminate().success());
    assert!(!stream.is_finished(), "the second member left while orders were still streaming in");
    stream.await.unwrap();
    let log = first.log_text();
    assert!(log.contains("partitions revoked"), "the first member gave partitions away: {log}");
    assert_exact(&tansu.brokers(), &want, SHARED_REDIS, &counters.0, Outputs::AbortsVisible).await;
    assert!(first.terminate().success());
}
