//! The Python (`vip`) and JavaScript (`suspicious`) example plugins after the
//! four Rust stages, through the sluice binary with a real broker (tansu) and
//! the real Redis, running plugins/polyglot.toml.

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use support::RedisPrefix;
use support::inputs::{Expected, SHARED_REDIS, delivery, example_values, generated, keyed, load_lookups};
use support::kafka::{Consumed, Tansu, consume, produce};
use support::model;
use support::process::{Host, HostEnv};

const MAX_PER_MINUTE: usize = 3;
const WINDOW_MS: i64 = 60_000;
const VIP_CENTS: i64 = 10_000;

/// What the suspicious stage is specified to do: per user, the orders seen
/// so far whose time is within the window ending at this order's time,
/// forgetting the user's orders older than the window of that user's latest
/// order. Returns the header of each flagged order id.
fn suspicious_model(orders: &[(String, Option<String>, i64)]) -> BTreeMap<String, String> {
    let mut recent: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut flagged = BTreeMap::new();
    for (id, user, at) in orders {
        let Some(user) = user else { continue };
        let times = recent.entry(user).or_default();
        times.push(*at);
        let latest = times.iter().copied().max().unwrap_or(*at);
        times.retain(|t| *t > latest - WINDOW_MS);
        let count = times.iter().filter(|t| **t > at - WINDOW_MS && **t <= *at).count();
        if count > MAX_PER_MINUTE {
            flagged.insert(id.clone(), format!("{count} orders by user {user} within 60 s"));
        }
    }
    flagged
}

/// Milliseconds since the epoch of a canonical `ts` (`YYYY-MM-DDTHH:MM:SS[.f]Z`).
fn millis(ts: &str) -> i64 {
    let n = |range: std::ops::Range<usize>| ts[range].parse::<i64>().unwrap_or_else(|e| panic!("ts {ts}: {e}"));
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + n(11..13) * 3_600 + n(14..16) * 60 + n(17..19);
    let frac = ts[19..].trim_start_matches('.').trim_end_matches('Z');
    let ms = format!("{frac:0<3}")[..3].parse::<i64>().unwrap();
    secs * 1_000 + ms
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_stages_route_and_flag_orders_end_to_end() {
    // One input partition: the order the stages see is the order produced.
    let tansu = Tansu::start_with_partitions(1);
    tansu.create_topic("orders.vip", 1);
    let (lookups, counters) = (RedisPrefix::new("polyglot-lookups"), RedisPrefix::new("polyglot-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;

    let mut values = example_values();
    values.extend(generated(2_000, 11, 0.02));
    // A burst: 6 orders within 50 s (the 4th, 5th and 6th are flagged), then
    // a steady customer ordering every 30 s (never more than 2 a minute), and
    // small orders (8.10) under the VIP threshold from the burst user.
    for i in 0..6 {
        values.push(delivery(9_000_000 + i, "burst-user", &format!("2099-01-01T10:00:{:02}Z", i * 10), 5));
    }
    for i in 0..6 {
        let ts = format!("2099-01-01T11:{:02}:{:02}Z", i / 2, (i % 2) * 30);
        values.push(delivery(9_100_000 + i, "steady-user", &ts, 1));
    }
    let want = Expected::of(&values);
    produce(&tansu.brokers(), "orders", &keyed(&values)).await;

    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "polyglot");
    let mut host = Host::start_with(&env, &support::repo_root().join("plugins/polyglot.toml"));
    host.wait_ready(Duration::from_secs(180));

    let linger = Duration::from_secs(3);
    let enriched =
        consume(&tansu.brokers(), "orders.enriched", want.orders.len(), Duration::from_secs(180), linger).await;
    host.wait_records_in(values.len() as u64, Duration::from_secs(60));

    // Every valid order once on the default output, through all six stages.
    let by_id: BTreeMap<String, &Consumed> =
        enriched.iter().map(|r| (r.json()["order_id"].as_str().unwrap().to_string(), r)).collect();
    assert_eq!(by_id.len(), enriched.len(), "no order twice");
    let want_ids: BTreeSet<&String> = want.orders.iter().map(|o| &o.order_id).collect();
    assert_eq!(by_id.keys().collect::<BTreeSet<_>>(), want_ids);
    let lineage = &enriched[0].headers["sluice.lineage"];
    let stages: Vec<&str> = lineage.split(',').map(|s| s.split('@').next().unwrap()).collect();
    assert_eq!(stages, ["normalize", "enrich", "categorize", "totals", "vip", "suspicious"]);

    // vip (Python): a copy of exactly the orders of 100.00 or more, total
    // computed by the model from the inputs, not read from the outputs.
    let totals: BTreeMap<&String, i64> =
        want.orders.iter().map(|o| (&o.order_id, o.items.iter().map(|(_, _, cents, q)| cents * q).sum())).collect();
    let want_vip: BTreeSet<&String> = totals.iter().filter(|(_, t)| **t >= VIP_CENTS).map(|(id, _)| *id).collect();
    assert!(want_vip.len() >= 8 && want_vip.len() < want.orders.len(), "both kinds present: {}", want_vip.len());
    let vip = consume(&tansu.brokers(), "orders.vip", want_vip.len(), Duration::from_secs(60), linger).await;
    let vip_ids: Vec<String> = vip.iter().map(|r| r.json()["order_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(vip_ids.len(), want_vip.len(), "each VIP order copied once");
    assert_eq!(vip_ids.iter().collect::<BTreeSet<_>>(), want_vip);
    for r in &vip {
        let id = r.json()["order_id"].as_str().unwrap().to_string();
        let total = totals[&id];
        assert_eq!(r.headers["sluice.vip.total"], format!("{}.{:02}", total / 100, total % 100), "{id}");
        assert_eq!(r.value, by_id[&id].value, "{id}: the copy is the enriched order");
        assert_eq!(r.key.as_deref(), Some(id.as_str()));
    }

    // suspicious (JavaScript): the header on exactly the model's orders.
    let seen: Vec<(String, Option<String>, i64)> = want
        .orders
        .iter()
        .map(|o| {
            let order = by_id[&o.order_id].json();
            let user = order["user"]["id"].as_str().map(str::to_string);
            (o.order_id.clone(), user, millis(order["ts"].as_str().unwrap()))
        })
        .collect();
    assert_eq!(millis("1970-01-02T00:00:01.5Z"), 86_401_500);
    assert_eq!(millis("2024-03-01T00:00:00Z"), 1_709_251_200_000);
    let want_flags = suspicious_model(&seen);
    for i in 3..6 {
        let id = (9_000_000 + i).to_string();
        assert_eq!(
            want_flags.get(&id).map(String::as_str),
            Some(&*format!("{} orders by user burst-user within 60 s", i + 1))
        );
    }
    assert!((0..6).all(|i| !want_flags.contains_key(&(9_100_000 + i).to_string())));
    let flags: BTreeMap<String, String> =
        by_id.iter().filter_map(|(id, r)| Some((id.clone(), r.headers.get("sluice.suspicious")?.clone()))).collect();
    assert_eq!(flags, want_flags);

    // The default pipeline's dead letters and counters are unchanged.
    let dlq = consume(&tansu.brokers(), "orders.dlq", want.dead_total(), Duration::from_secs(60), linger).await;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dlq {
        *reasons.entry(r.headers["sluice.error.reason"].clone()).or_default() += 1;
    }
    assert_eq!(reasons, want.dead.iter().map(|(k, v)| (k.to_string(), *v)).collect());
    assert_eq!(support::read_counters(&counters.0).await, model::counters(&want.orders));
    let value: Value = host.json("GET", "/api/pipeline").1;
    assert_eq!(value["stages"].as_array().unwrap().len(), 6);
    assert!(host.terminate().success());
}
