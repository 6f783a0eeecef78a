//! Property tests on generated inputs: no input makes the default chain or
//! the pipeline.toml parser panic or trap, and every record lands in exactly
//! one of output, dead letter or filtered.

mod support;

use serde_json::{Value, json};
use sluice::lookup::InMemory;
use sluice::pipeline::Chain;
use sluice::record::Record;
use sluice::tools::generator::Rng;
use std::collections::BTreeMap;
use std::sync::Arc;

fn random_json(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next_u64() as i64 >> rng.below(64)),
        3 => json!((rng.next_u64() as f64 / 7.0) * if rng.below(2) == 0 { -1.0 } else { 1.0 }),
        4 => json!(["", "0", "-1", "1.005", "2025-13-45", "CANCELLED", "Banana", "суп", "\u{0}"][rng.below(9)]),
        5 => json!(format!("{:x}", rng.next_u64())),
        6 => Value::Array((0..rng.below(4)).map(|_| random_json(rng, depth + 1)).collect()),
        _ => {
            let keys = ["id", "name", "price", "quantity", "category", "user", "restaurant", "date", "order_items"];
            Value::Object(
                (0..rng.below(5))
                    .map(|_| (keys[rng.below(keys.len())].to_string(), random_json(rng, depth + 1)))
                    .collect(),
            )
        }
    }
}

/// A valid order with one field replaced, removed or retyped.
fn mutate(rng: &mut Rng, mut value: Value) -> Value {
    fn paths(v: &Value, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Value::Object(map) = v {
            for (k, child) in map {
                let mut p = prefix.clone();
                p.push(k.clone());
                out.push(p.clone());
                paths(child, p, out);
            }
        } else if let Value::Array(items) = v {
            for (i, child) in items.iter().enumerate() {
                let mut p = prefix.clone();
                p.push(i.to_string());
                paths(child, p, out);
            }
        }
    }
    let mut all = Vec::new();
    paths(&value, Vec::new(), &mut all);
    let path = all[rng.below(all.len())].clone();
    let (last, parent_path) = path.split_last().unwrap();
    let mut parent = &mut value;
    for p in parent_path {
        parent = match parent {
            Value::Object(m) => m.get_mut(p).unwrap(),
            Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
            _ => unreachable!(),
        };
    }
    if let Value::Object(map) = parent {
        if rng.below(3) == 0 {
            map.remove(last);
        } else {
            let replacement = random_json(rng, 1);
            map.insert(last.clone(), replacement);
        }
    }
    value
}

fn input(rng: &mut Rng, n: u64) -> Vec<u8> {
    match rng.below(4) {
        0 => (0..rng.below(40)).map(|_| rng.next_u64() as u8).collect(),
        1 => random_json(rng, 0).to_string().into_bytes(),
        _ => {
            let valid = sluice::tools::generator::record(rng, 9, n, 0.0).value;
            mutate(rng, serde_json::from_str(&valid).unwrap()).to_string().into_bytes()
        }
    }
}

#[test]
fn arbitrary_records_never_trap_and_are_each_accounted_once() {
    let pipeline = support::default_pipeline(&support::env_of(&[]));
    let lookups = Arc::new(InMemory(sluice::tools::generator::tables()));
    let mut chain = Chain::build(
        &sluice::engine::Engine::new().unwrap(),
        &pipeline,
        lookups,
        sluice::state::StateStore::in_memory(),
    )
    .unwrap();
    let mut rng = Rng::new(20261122);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for batch in 0..40 {
        let records: Vec<Record> = (0..250)
            .map(|i| Record {
                key: None,
                value: Some(input(&mut rng, batch * 250 + i)),
                headers: Vec::new(),
                topic: "orders".into(),
                partition: 0,
                offset: (batch * 250 + i) as i64,
                timestamp_ms: None,
            })
            .collect();
        let result = chain.process(&records).unwrap();
        assert_eq!(result.outputs.len() + result.dead_letters.len() + result.filtered as usize, records.len());
        assert_eq!(result.completed as usize + result.dead_letters.len() + result.filtered as usize, records.len());
        for d in &result.dead_letters {
            *reasons.entry(format!("{}/{}", d.stage, d.reason)).or_default() += 1;
        }
        for out in &result.outputs {
            let order: Value = serde_json::from_slice(&out.value).unwrap();
            let items = order["items"].as_array().unwrap();
            let total: i64 = items.iter().map(|i| i["line_total_cents"].as_i64().unwrap()).sum();
            assert_eq!(order["total_cents"].as_i64().unwrap(), total, "{order}");
        }
    }
    eprintln!("dead letters by stage/reason: {reasons:?}");
    assert!(!reasons.keys().any(|r| r.contains("plugin_")), "a plugin trapped: {reasons:?}");
    assert!(reasons.len() >= 6, "the inputs reach many reasons: {reasons:?}");
}

#[test]
fn arbitrary_pipeline_files_never_panic() {
    let text = std::fs::read_to_string(support::repo_root().join("pipeline.toml")).unwrap();
    let env = |name: &str| (name == "SET").then(|| "x".to_string());
    let mut rng = Rng::new(7);
    let (mut ok, mut rejected) = (0, 0);
    for _ in 0..3_000 {
        let mut bytes = text.clone().into_bytes();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, b"=[]{}\"'#$\n.,-_0aZ"[rng.below(17)]),
                2 => bytes.insert(at, rng.next_u64() as u8),
                _ => {
                    let end = (at + rng.below(40)).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
        }
        let mutated = String::from_utf8_lossy(&bytes);
        match sluice::config::load_str(&mutated, env) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.message.is_empty());
                rejected += 1;
            }
        }
    }
    eprintln!("{ok} mutated files parsed, {rejected} rejected");
    assert!(rejected > 1_000);
}
