//! Hot reload under load, through tansu and the real Redis: 20 swaps of
//! `categorize` between two versions (fallback category `Other` or
//! `Uncategorized`) and 5 live edits of pipeline.toml while orders keep
//! arriving. Every input record must be accounted for exactly once, each
//! output must have been categorized by the version its `sluice.lineage`
//! names, and per partition the pipeline generation never goes back.

mod support;

use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::RedisPrefix;
use support::inputs::{SHARED_REDIS, all_tables, generated, keyed, load_lookups};
use support::kafka::{Producer, Tansu, consume, produce};
use support::model::{self, Expect, Summary};
use support::process::{Host, HostEnv};
use support::workdir::{Workdir, dist, replace, sha256};

/// Records produced at least, and produced until every reload is done.
const LOAD: usize = 100_000;
const CHUNK: usize = 500;
/// Records per second produced: about two thirds of what one host handles
/// on two cores, so that it keeps up and records arrive all the time.
const RATE: f64 = 8_000.0;
/// Records counted after a reload is live before the next one starts: more
/// than the records processed before it and committed after it (an open
/// transaction and a batch in flight), so that every generation handles
/// records.
const AFTER_RELOAD: u64 = 6 * CHUNK as u64;

/// Waits until the generation just made live has handled records.
fn wait_handled(host: &Host) {
    let now = host.metric("sluice_records_in_total").unwrap() as u64;
    host.wait_records_in(now + AFTER_RELOAD, Duration::from_secs(60));
}

fn live(host: &Host) -> Value {
    let (code, body) = host.json("GET", "/api/pipeline");
    assert_eq!(code, 200, "{body}");
    body
}

/// Waits until the live pipeline satisfies `ready`; returns how long it took.
fn wait_live(host: &Host, what: &str, ready: impl Fn(&Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let live = live(host);
        if ready(&live) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{what}: not live after 30 s: {live:#}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stage_names(live: &Value) -> Vec<String> {
    live["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
}

fn categorize_sha(live: &Value) -> String {
    let stages = live["stages"].as_array().unwrap();
    stages.iter().find(|s| s["name"] == "categorize").unwrap()["sha256"].as_str().unwrap().to_string()
}

/// An edit of pipeline.toml: what it does, the edit, and how the live
/// pipeline shows it.
type Edit = (&'static str, Box<dyn Fn(&str) -> String>, Box<dyn Fn(&Value) -> bool>);

/// The pipeline.toml edits, applied one after the other, each with the
/// check that it is live.
fn edits(work: &Workdir) -> Vec<Edit> {
    let audit = format!(
        "[[stages]]\nname = \"audit\"\nplugin = \"{}\"\nconfig = {{ always = \"ok\" }}\n\n[[stages]]\nname = \"totals\"",
        work.plugin("testguest.wasm").display()
    );
    vec![
        (
            "add a stage",
            Box::new(move |t: &str| t.replace("[[stages]]\nname = \"totals\"", &audit)),
            Box::new(|l: &Value| stage_names(l) == ["normalize", "enrich", "categorize", "audit", "totals"]),
        ),
        (
            "change batching and a lookup table",
            Box::new(|t: &str| {
                t.replace("batch_size = ${SLUICE_BATCH_SIZE:-500}", "batch_size = 200").replacen(
                    "ttl_ms = 60000",
                    "ttl_ms = 30000",
                    1,
                )
            }),
            Box::new(|l: &Value| l["source"]["batch_size"] == 200),
        ),
        (
            "remove a stage",
            Box::new(|t: &str| {
                let start = t.find("[[stages]]\nname = \"audit\"").unwrap();
                let end = t.find("[[stages]]\nname = \"totals\"").unwrap();
                format!("{}{}", &t[..start], &t[end..])
            }),
            Box::new(|l: &Value| stage_names(l) == ["normalize", "enrich", "categorize", "totals"]),
        ),
        (
            "add an input topic",
            Box::new(|t: &str| t.replace("\ntopics = [\"orders\"]", "\ntopics = [\"orders\", \"orders.extra\"]")),
            Box::new(|l: &Value| l["source"]["topics"].as_array().unwrap().len() == 2),
        ),
        (
            "change a stage's limits and add a route",
            Box::new(|t: &str| {
                let plugin = "plugin = \"${SLUICE_PLUGIN_DIR:-plugins/dist}/categorize.wasm\"";
                let limited = format!("{plugin}\nlimits = {{ timeout_ms = 2000 }}");
                format!("{}\n[routes.vip]\ntopic = \"orders.vip\"\n", t.replace(plugin, &limited))
            }),
            Box::new(|l: &Value| l["routes"]["vip"] == "orders.vip"),
        ),
    ]
}

/// The invariants a run broke, each named.
#[derive(Default)]
struct Broken(Vec<String>);

impl Broken {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn same<T: PartialEq + std::fmt::Debug>(&mut self, got: T, want: T, what: &str) {
        if got != want {
            self.0.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    /// Fails naming every broken invariant (the first 30).
    fn none(self) {
        let shown: Vec<&str> = self.0.iter().take(30).map(String::as_str).collect();
        assert!(self.0.is_empty(), "{} invariants broken:\n- {}", self.0.len(), shown.join("\n- "));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_swaps_and_five_edits_under_load_account_for_every_record_once() {
    let tansu = Tansu::start_with_partitions(3);
    tansu.create_topic("orders.extra", 1);
    tansu.create_topic("orders.vip", 1);
    let (lookups, counters) = (RedisPrefix::new("reload-lookups"), RedisPrefix::new("reload-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let mut pipeline = Workdir::default_pipeline();
    let work = Workdir::new("reload", &pipeline);
    let env =
        HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "reload").set("SLUICE_PLUGIN_DIR", &work.plugin_dir());
    let mut host = Host::start_with(&env, &work.pipeline());
    host.wait_ready(Duration::from_secs(60));

    // Orders keep arriving until every reload is done.
    let values = Arc::new(generated(3 * LOAD as u64, 7, 0.02));
    let extra = generated(2_000, 8, 0.02);
    let (done, produced) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let producer = tokio::spawn({
        let (values, done, produced, brokers) = (values.clone(), done.clone(), produced.clone(), tansu.brokers());
        async move {
            // Paced, with a few chunks in flight, so that records arrive
            // steadily rather than in bursts.
            let producer = Producer::new(&brokers);
            let started = tokio::time::Instant::now();
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut sent = 0;
            for (i, chunk) in values.chunks(CHUNK).enumerate() {
                tokio::time::sleep_until(started + Duration::from_secs_f64((i * CHUNK) as f64 / RATE)).await;
                let records = keyed(chunk);
                let producer = &producer;
                in_flight.push(async move { producer.send("orders", &records).await });
                while in_flight.len() > 8 {
                    in_flight.next().await;
                }
                sent += chunk.len();
                if done.load(Ordering::SeqCst) && sent >= LOAD {
                    break;
                }
            }
            while in_flight.next().await.is_some() {}
            produced.store(sent, Ordering::SeqCst);
            assert!(done.load(Ordering::SeqCst), "ran out of orders before the reloads were done");
        }
    });
    host.wait_records_in(CHUNK as u64, Duration::from_secs(60));

    // 20 swaps of categorize, alternating versions, by rename or in place;
    // a pipeline.toml edit after every fourth.
    let (v1, v2) = (dist("categorize.wasm"), dist("categorize-uncategorized.wasm"));
    let categorize = work.plugin("categorize.wasm");
    let mut latencies = Vec::new();
    let mut edits = edits(&work).into_iter();
    let mut generation = live(&host)["generation"].as_u64().unwrap();
    for swap in 1..=20 {
        let bytes = if swap % 2 == 1 { &v2 } else { &v1 };
        let written = Instant::now();
        if swap % 3 == 0 {
            std::fs::write(&categorize, bytes).unwrap()
        } else {
            replace(&categorize, bytes)
        }
        let want = sha256(bytes);
        wait_live(&host, &format!("swap {swap}"), |l| categorize_sha(l) == want);
        latencies.push(written.elapsed());
        generation += 1;
        assert_eq!(live(&host)["generation"], generation, "one generation per swap");
        wait_handled(&host);
        if swap % 4 == 0 {
            let (what, edit, check) = edits.next().unwrap();
            pipeline = edit(&pipeline);
            work.write_pipeline(&pipeline);
            let took = wait_live(&host, what, |l| check(l));
            eprintln!("edit `{what}` live after {took:?}");
            generation += 1;
            let l = live(&host);
            assert_eq!(l["generation"], generation, "{what}: {:#}", l["last_reload"]);
            wait_handled(&host);
            if what == "add an input topic" {
                produce(&tansu.brokers(), "orders.extra", &keyed(&extra)).await;
                // The group rebalances: wait until records flow again.
                let now = host.metric("sluice_records_in_total").unwrap() as u64;
                host.wait_records_in(now + 2 * CHUNK as u64, Duration::from_secs(60));
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let main_count = produced.load(Ordering::SeqCst);
    assert!(main_count >= LOAD);
    latencies.sort();
    eprintln!(
        "reload latency (file written -> new version live), {} swaps: p50 {:?}, p90 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        latencies.last().unwrap()
    );

    // Everything is through.
    let inputs: Vec<&String> = values[..main_count].iter().chain(&extra).collect();
    host.wait_records_in(inputs.len() as u64, Duration::from_secs(300));
    let tables = all_tables();
    let mut orders: HashMap<String, (Summary, &String)> = HashMap::new();
    let (mut dead, mut filtered) = (BTreeMap::<String, usize>::new(), 0);
    for v in &inputs {
        match model::expect(v, &tables) {
            Expect::Order(s) => assert!(orders.insert(s.order_id.clone(), (s, v)).is_none()),
            Expect::Dead(reason) => *dead.entry(reason.to_string()).or_default() += 1,
            Expect::Filtered => filtered += 1,
        }
    }
    let linger = Duration::from_secs(3);
    // Every invariant is checked and every broken one named at the end: the
    // first does not hide the others.
    let mut broken = Broken::default();
    let enriched = consume(&tansu.brokers(), "orders.enriched", orders.len(), Duration::from_secs(300), linger).await;
    let dlq = consume(&tansu.brokers(), "orders.dlq", dead.values().sum(), Duration::from_secs(120), linger).await;

    // Exactly once: every valid order, every dead letter, every filtered one.
    let mut seen = BTreeSet::new();
    for r in &enriched {
        let id = r.json()["order_id"].as_str().unwrap().to_string();
        broken.check(seen.insert(id.clone()), || format!("order {id} emitted twice"));
    }
    broken.same(seen, orders.keys().cloned().collect(), "the emitted orders are the valid orders");
    let mut reasons = BTreeMap::<String, usize>::new();
    for r in &dlq {
        *reasons.entry(r.headers["sluice.error.reason"].clone()).or_default() += 1;
    }
    broken.same(reasons, dead, "dead letters by reason");
    let metric = |n: &str| host.metric(n).unwrap() as usize;
    broken.same(metric("sluice_records_in_total"), inputs.len(), "sluice_records_in_total");
    broken.same(metric("sluice_filtered_total"), filtered, "sluice_filtered_total");

    // Where each input record was: its topic, partition and offset.
    let mut coordinates: HashMap<Vec<u8>, (String, i32, i64)> = HashMap::new();
    for (topic, count) in [("orders", main_count), ("orders.extra", extra.len())] {
        for r in consume(&tansu.brokers(), topic, count, Duration::from_secs(120), Duration::from_secs(1)).await {
            coordinates.insert(r.value, (topic.to_string(), r.partition, r.offset));
        }
    }

    // Each output was categorized by the version its lineage names; one
    // lineage per generation.
    let (short1, short2) = (&sha256(&v1)[..12], &sha256(&v2)[..12]);
    let mut events: Vec<((String, i32), i64, u64)> = Vec::new();
    let mut lineage_of: BTreeMap<u64, String> = BTreeMap::new();
    let mut summaries = Vec::new();
    for r in &enriched {
        let id = r.json()["order_id"].as_str().unwrap().to_string();
        let (summary, raw) = &orders[&id];
        let (topic, partition, offset) = coordinates[raw.as_bytes()].clone();
        let generation: u64 = r.headers["sluice.generation"].parse().unwrap();
        events.push(((topic, partition), offset, generation));
        let lineage = &r.headers["sluice.lineage"];
        if let Some(other) = lineage_of.insert(generation, lineage.clone()) {
            broken.same(&other, lineage, &format!("generation {generation} has one lineage"));
        }
        let version = lineage.split(',').find_map(|e| e.strip_prefix("categorize@")).unwrap();
        let fallback = match version {
            v if v == short1 => "Other",
            v if v == short2 => "Uncategorized",
            v => panic!("order {id}: categorize@{v} is neither version"),
        };
        let mut summary = summary.clone();
        for item in &mut summary.items {
            if item.1 == "Other" {
                item.1 = fallback.to_string();
            }
        }
        let order = r.json();
        let got: Vec<&str> =
            order["items"].as_array().unwrap().iter().map(|i| i["category"].as_str().unwrap()).collect();
        let want: Vec<&str> = summary.items.iter().map(|i| i.1.as_str()).collect();
        broken.same(got, want, &format!("order {id}, categorized by {version}"));
        summaries.push(summary);
    }
    for r in &dlq {
        let h = |name: &str| r.headers[name].clone();
        let source = (h("sluice.source.topic"), h("sluice.source.partition").parse().unwrap());
        events.push((source, h("sluice.source.offset").parse().unwrap(), h("sluice.generation").parse().unwrap()));
    }

    // Per partition, in offset order, the generation never goes back.
    events.sort();
    for pair in events.windows(2) {
        let ((source, offset, generation), (next_source, next_offset, next_generation)) = (&pair[0], &pair[1]);
        broken.check(source != next_source || generation <= next_generation, || {
            format!(
                "{source:?}: offset {next_offset} at generation {next_generation} after offset {offset} at generation {generation}"
            )
        });
    }
    // Every generation handled records (each reload waited for that).
    let generations: BTreeSet<u64> = events.iter().map(|e| e.2).collect();
    broken.same(generations, (1..=generation).collect(), "the generations that handled records");
    broken.check(lineage_of.values().any(|l| l.contains(",audit@")), || "the added stage shows in the lineage".into());
    broken.same(host.metric("sluice_pipeline_generation"), Some(generation as f64), "sluice_pipeline_generation");

    // The counters are the model's sums, each order with its own version's
    // fallback category.
    broken.same(support::read_counters(&counters.0).await, model::counters(&summaries), "the Redis counters");
    broken.check(host.terminate().success(), || "a clean stop".into());
    broken.none();
}
