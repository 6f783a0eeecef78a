//! End to end through a real broker (tansu), the real Redis and the sluice
//! binary running the repository's pipeline.toml.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::RedisPrefix;
use support::inputs::{Expected, SHARED_REDIS, example_values, generated, keyed, load_lookups, order_ids};
use support::kafka::{Tansu, consume, produce};
use support::model;
use support::process::{Host, HostEnv};

#[tokio::test(flavor = "multi_thread")]
async fn examples_and_generated_orders_give_exact_outputs_dead_letters_and_counters() {
    let tansu = Tansu::start();
    let (lookups, counters) = (RedisPrefix::new("e2e-lookups"), RedisPrefix::new("e2e-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let mut values = example_values();
    values.extend(generated(10_000, 42, 0.05));
    let want = Expected::of(&values);
    assert!(want.dead.len() >= 6 && want.filtered > 0, "the input covers every outcome: {:?}", want.dead);

    produce(&tansu.brokers(), "orders", &keyed(&values)).await;
    let mut host = Host::start(&HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "e2e"));
    host.wait_ready(Duration::from_secs(60));

    let dead_total: usize = want.dead.values().sum();
    let linger = Duration::from_secs(3);
    let enriched =
        consume(&tansu.brokers(), "orders.enriched", want.orders.len(), Duration::from_secs(120), linger).await;
    let dlq = consume(&tansu.brokers(), "orders.dlq", dead_total, Duration::from_secs(60), linger).await;
    host.wait_records_in(values.len() as u64, Duration::from_secs(30));

    // Outputs: exactly the valid orders, once each, keyed by order id.
    let ids = order_ids(&enriched);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "no order is emitted twice");
    let want_ids: BTreeSet<&String> = want.orders.iter().map(|o| &o.order_id).collect();
    assert_eq!(unique, want_ids);
    for r in &enriched {
        assert_eq!(r.key.as_deref(), r.json()["order_id"].as_str());
    }

    // Dead letters: exact count per reason, with every header.
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &dlq {
        for h in [
            "sluice.error.stage",
            "sluice.error.message",
            "sluice.source.topic",
            "sluice.source.partition",
            "sluice.source.offset",
        ] {
            assert!(r.headers.contains_key(h), "dead letter without {h}: {r:?}");
        }
        let reason = r.headers["sluice.error.reason"].as_str();
        *reasons.entry(model_reason(reason)).or_default() += 1;
    }
    assert_eq!(reasons, want.dead.iter().map(|(k, v)| (*k, *v)).collect());

    // Counters: equal to the sums of the independent model.
    assert_eq!(support::read_counters(&counters.0).await, model::counters(&want.orders));

    // Metrics account for every record once.
    let metric = |n: &str| host.metric(n).unwrap() as usize;
    assert_eq!(metric("sluice_records_in_total"), values.len());
    assert_eq!(metric("sluice_filtered_total"), want.filtered);
    assert_eq!(metric("sluice_records_out_total"), want.orders.len());
    assert_eq!(metric("sluice_records_completed_total"), want.orders.len());
    let (_, body) = host.get("/metrics").unwrap();
    let dead: f64 = body
        .lines()
        .filter_map(|l| l.strip_prefix("sluice_dead_letters_total{")?.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dead as usize, dead_total);
    assert_eq!(
        metric("sluice_records_completed_total") + dead as usize + metric("sluice_filtered_total"),
        metric("sluice_records_in_total"),
        "the accounting invariant"
    );
    // `sluice peek` shows a dead letter with its headers.
    let peek = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["peek", "orders.dlq", "--count", "1", "--brokers", &tansu.brokers()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&peek.stdout);
    assert!(
        peek.status.success() && text.contains("sluice.error.reason: ") && text.contains("sluice.source.offset: "),
        "{text}"
    );
    assert!(host.terminate().success());
}

fn model_reason(reason: &str) -> &'static str {
    [
        "invalid_json",
        "unknown_shape",
        "missing_field",
        "invalid_quantity",
        "invalid_price",
        "no_items",
        "unknown_product",
    ]
    .into_iter()
    .find(|r| *r == reason)
    .unwrap_or_else(|| panic!("unexpected dead-letter reason {reason}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_stream_then_restart_loses_nothing() {
    let tansu = Tansu::start();
    let (lookups, counters) = (RedisPrefix::new("restart-lookups"), RedisPrefix::new("restart-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let values = generated(20_000, 7, 0.0);
    let want = Expected::of(&values);
    produce(&tansu.brokers(), "orders", &keyed(&values)).await;

    // Small batches make the run long enough to stop it in the middle.
    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "restart").set("SLUICE_BATCH_SIZE", "20");
    let mut first = Host::start(&env);
    first.wait_ready(Duration::from_secs(60));
    first.wait_records_in(2_000, Duration::from_secs(60));
    let status = first.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}:\n{}", first.log_text());
    let done_first = first.log_text();
    assert!(done_first.contains("stop requested"), "{done_first}");

    let mut second = Host::start(&env);
    second.wait_ready(Duration::from_secs(60));
    let enriched = consume(
        &tansu.brokers(),
        "orders.enriched",
        want.orders.len(),
        Duration::from_secs(120),
        Duration::from_secs(2),
    )
    .await;
    let ids: BTreeSet<String> = order_ids(&enriched).into_iter().collect();
    let want_ids: BTreeSet<String> = want.orders.iter().map(|o| o.order_id.clone()).collect();
    let missing: Vec<&String> = want_ids.difference(&ids).take(5).collect();
    assert!(missing.is_empty(), "orders lost across the restart, e.g. {missing:?}");
    let second_in = second.metric("sluice_records_in_total").unwrap();
    assert!(
        second_in > 0.0 && second_in < values.len() as f64,
        "the first host was stopped mid-stream ({second_in} left)"
    );
    assert!(second.terminate().success());
}
