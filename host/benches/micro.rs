//! Micro-benchmarks of the hot path's parts: one call into a component at
//! batch sizes 1, 64 and 512 (the bare boundary, with the testguest's `ok`
//! through the lists of contract 0.4.0, packed as in 0.5.0 and as tables of
//! bytes as in 0.6.0, and a real
//! stage, normalize), a lookup served from the cache, rows read
//! from Redis one at a time and all at once, and one batch's Redis effects
//! applied behind the fence (against the local Redis).
//!
//! `cargo bench -p sluice --bench micro`; `-- --test` runs each once.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sluice::bindings::Message;
use sluice::config::{self, Pipeline};
use sluice::engine::Engine;
use sluice::lookup::{InMemory, LookupSource};
use sluice::pipeline::Chain;
use sluice::record::Effect;
use sluice::redis::{Fence, RecordEffect, RedisEffects, RedisLookups};
use sluice::tools::generator::{self, Rng};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const REDIS_URL: &str = "redis://127.0.0.1:6379";

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A one-stage pipeline around `plugin`.
fn one_stage(plugin: &str) -> Pipeline {
    let text = format!(
        r#"
        kafka = {{ brokers = "localhost:9092", group = "bench" }}
        redis = {{ url = "{REDIS_URL}" }}
        source = {{ topics = ["orders"] }}
        output = {{ topic = "out" }}
        dead_letter = {{ topic = "dlq" }}
        [[stages]]
        name = "stage"
        plugin = "{}"
        "#,
        root().join("plugins/dist").join(plugin).display()
    );
    Pipeline { config: config::load_str(&text, |_| None).unwrap(), base_dir: root().to_path_buf() }
}

fn messages(count: usize, ok: bool) -> Vec<Message> {
    let mut rng = Rng::new(3);
    (0..count)
        .map(|n| Message {
            key: None,
            value: if ok { b"ok".to_vec() } else { generator::record(&mut rng, 3, n as u64, 0.0).value.into_bytes() },
            headers: Vec::new(),
            topic: "orders".into(),
            partition: 0,
            offset: n as i64,
            timestamp_ms: None,
        })
        .collect()
}

fn component_calls(c: &mut Criterion) {
    let engine = Engine::new().unwrap();
    let lookups: Arc<dyn LookupSource> = Arc::new(InMemory(generator::tables()));
    for (name, plugin, ok) in [
        ("boundary (testguest ok)", "testguest.wasm", true),
        ("boundary, packed (testguest-packed ok)", "testguest-packed.wasm", true),
        ("boundary, tables (testguest-tables ok)", "testguest-tables.wasm", true),
        ("normalize", "normalize.wasm", false),
    ] {
        let mut chain =
            Chain::build(&engine, &one_stage(plugin), lookups.clone(), sluice::state::StateStore::in_memory()).unwrap();
        let mut group = c.benchmark_group(format!("component call: {name}"));
        for batch in [1usize, 64, 512] {
            let input = messages(batch, ok);
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("batch {batch}"), |b| {
                b.iter(|| chain.stages_mut()[0].call(&input).map_err(|e| format!("{e:?}")).unwrap())
            });
        }
        group.finish();
    }
}

fn lookup_cache_hit(c: &mut Criterion) {
    let tables = BTreeMap::from([(
        "product".to_string(),
        config::load_str(
            r#"
            kafka = { brokers = "b", group = "g" }
            redis = { url = "redis://r" }
            source = { topics = ["in"] }
            output = { topic = "out" }
            dead_letter = { topic = "dlq" }
            [lookups.product]
            key_prefix = "bench:micro:product:"
            [[stages]]
            name = "s"
            plugin = "s.wasm"
            "#,
            |_| None,
        )
        .unwrap()
        .lookups["product"]
            .clone(),
    )]);
    let lookups = RedisLookups::new(REDIS_URL, &tables).unwrap();
    lookups.lookup("product", "P-1").expect("the local Redis answers"); // now cached (as absent)
    c.bench_function("lookup: cache hit", |b| b.iter(|| lookups.lookup("product", "P-1").unwrap()));

    // Rows the cache does not hold (a time-to-live of 0 keeps nothing): each
    // read from Redis, one round trip per row or all in one.
    let mut uncached = tables;
    uncached.get_mut("product").unwrap().ttl_ms = 0;
    let lookups = RedisLookups::new(REDIS_URL, &uncached).unwrap();
    const ROWS: usize = 1000;
    let keys: Vec<String> = (0..ROWS).map(|i| format!("P-{i}")).collect();
    let mut redis = redis::Client::open(REDIS_URL).unwrap().get_connection().unwrap();
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.hset(format!("bench:micro:product:{key}"), "price", "1.99").ignore();
    }
    pipe.query::<()>(&mut redis).unwrap();
    let wanted: Vec<(&str, &str)> = keys.iter().map(|key| ("product", key.as_str())).collect();
    let mut group = c.benchmark_group("lookups: 1000 rows not cached");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("one call and one round trip per row", |b| {
        b.iter(|| wanted.iter().map(|(table, key)| lookups.lookup(table, key).unwrap()).collect::<Vec<_>>())
    });
    group.bench_function("lookup_many: one call, one round trip", |b| b.iter(|| lookups.lookup_many(&wanted).unwrap()));
    group.finish();
}

fn redis_effects(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut effects = RedisEffects::new(REDIS_URL).unwrap();
    let fence = |last: i64| Fence { key: "bench:micro:fence".into(), partitions: vec![("orders:0".into(), last)] };
    // A batch of 500 orders, 8 counter increments each, as the totals stage emits.
    let batch = |first: i64| -> Vec<RecordEffect> {
        (0..500i64)
            .flat_map(|r| {
                (0..8).map(move |k| RecordEffect {
                    record: r as usize,
                    partition: 0,
                    offset: first + r,
                    effect: Effect::HashIncr {
                        key: format!("bench:micro:k{k}"),
                        field: format!("f{}", r % 40),
                        delta: 1,
                    },
                })
            })
            .collect()
    };
    let mut next = 0i64;
    let mut group = c.benchmark_group("redis effects");
    group.throughput(Throughput::Elements(500));
    group.bench_function("batch of 500 orders behind the fence", |b| {
        b.iter_batched(
            || {
                next += 500;
                (fence(next + 499), batch(next))
            },
            |(fence, batch)| runtime.block_on(effects.apply_fenced(&fence, &batch)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut con = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("bench:micro:*").query(&mut con).unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query(&mut con).unwrap();
    }
}

/// Keyed state: the host side of one `get` of a batch's keys and a `set`
/// per record (the view empty, as after a claim), and the same writes
/// applied to Redis in one Lua call with their undo entries.
fn keyed_state(c: &mut Criterion) {
    use sluice::redis::RedisState;
    use sluice::state::{Durable, StateCalls, StateLimits, StateStore};
    const BATCH: usize = 512;
    let input = messages(BATCH, true);
    let records: Vec<sluice::record::Record> = input
        .iter()
        .map(|m| sluice::record::Record {
            key: None,
            value: Some(m.value.clone()),
            headers: Vec::new(),
            topic: m.topic.clone(),
            partition: m.partition,
            offset: m.offset,
            timestamp_ms: None,
        })
        .collect();
    let keys: Vec<(u32, String)> = (0..BATCH as u32).map(|i| (i, format!("order-{i}"))).collect();
    let store = StateStore::in_memory();
    let mut calls = StateCalls::new(store.clone(), Arc::from("bench"), true, StateLimits::default());
    let mut group = c.benchmark_group("keyed state");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("get of 512 keys in one call, then 512 sets (host side)", |b| {
        b.iter(|| {
            store.begin(&records).unwrap();
            calls.start(&input);
            let values = calls.get(&keys).map_err(|e| format!("{e:?}")).unwrap();
            for ((at, key), value) in keys.iter().zip(values) {
                let value = value.unwrap_or_default();
                calls.put(*at, key.clone(), Some(value), Some(60_000)).map_err(|e| format!("{e:?}")).unwrap();
            }
            calls.finish();
            store.take_pending()
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut redis = RedisState::new(REDIS_URL, "bench:micro:state:").unwrap();
    let partition = (Arc::from("orders"), 0);
    redis.claim(&partition, 0, "bench").expect("the local Redis answers");
    let writes = |first: i64| -> Vec<sluice::state::StateWrite> {
        (0..BATCH as i64)
            .map(|i| sluice::state::StateWrite {
                partition: partition.clone(),
                offset: first + i,
                token: Arc::from("bench"),
                hash: Arc::from("bench:micro:state:stage:bench:orders:0"),
                key: format!("order-{}", (first + i) % 20_000),
                value: Some(sluice::state::encode(0, b"1735689600000")),
            })
            .collect()
    };
    let mut next = 0i64;
    group.bench_function("512 writes applied to Redis (one Lua call, undo log)", |b| {
        b.iter_batched(
            || {
                next += BATCH as i64;
                writes(next)
            },
            |writes| {
                let batch: Vec<&sluice::state::StateWrite> = writes.iter().collect();
                let committed = Some(writes[0].offset);
                runtime.block_on(redis.apply(&partition, "bench", committed, &batch)).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut con = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("bench:micro:state:*").query(&mut con).unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query(&mut con).unwrap();
    }
}

criterion_group!(benches, component_calls, lookup_cache_hit, redis_effects, keyed_state);
criterion_main!(benches);
