//! Values between stages: stages that declare the same type exchange it in
//! binary, any other boundary is JSON, and neighbours that declare
//! different types are refused at load, naming both.

mod support;

use sluice::config::{self, Pipeline};
use sluice::engine::Engine;
use sluice::lookup::{InMemory, Offline};
use sluice::pipeline::values::{Encoding, Encodings};
use sluice::pipeline::{BuildError, Chain};
use sluice::record::Record;
use std::sync::Arc;
use support::command_records;

/// A chain of test guests, each `[[stages]]` body given as TOML lines.
fn guests(stages: &[&str]) -> Result<Chain, BuildError> {
    let mut text = String::from(
        r#"
        kafka = { brokers = "unused:9092", group = "g" }
        redis = { url = "redis://unused" }
        source = { topics = ["in"] }
        output = { topic = "out" }
        dead_letter = { topic = "dlq" }
        "#,
    );
    for (i, body) in stages.iter().enumerate() {
        text.push_str(&format!("[[stages]]\nname = \"g{i}\"\nplugin = \"plugins/dist/testguest.wasm\"\n{body}\n"));
    }
    let config = config::load_str(&text, |_| None).unwrap();
    let pipeline = Pipeline { config, base_dir: support::repo_root() };
    Chain::build(&Engine::new().unwrap(), &pipeline, Arc::new(Offline), sluice::state::StateStore::in_memory())
}

fn encodings(chain: &Chain) -> Vec<Encodings> {
    chain.stages().iter().map(|s| s.spec().encodings).collect()
}

const JSON: Encoding = Encoding::Json;
const BINARY: Encoding = Encoding::Binary;

#[test]
fn a_stage_is_told_to_read_binary_only_from_a_neighbour_of_the_same_type_and_form() {
    let writes = r#"config = { writes = "t", binary = "form-1" }"#;
    let same = r#"config = { always = "encodings", reads = "t", binary = "form-1" }"#;
    let mut chain = guests(&[writes, same]).unwrap();
    assert_eq!(
        encodings(&chain),
        [Encodings { input: JSON, output: BINARY }, Encodings { input: BINARY, output: JSON }]
    );
    // What the component itself was told at `init`.
    let result = chain.process(&command_records(&["ok"])).unwrap();
    assert_eq!(result.outputs[0].value, b"input=binary output=json");

    let other_form = r#"config = { always = "encodings", reads = "t", binary = "form-2" }"#;
    let mut chain = guests(&[writes, other_form]).unwrap();
    let result = chain.process(&command_records(&["ok"])).unwrap();
    assert_eq!(result.outputs[0].value, b"input=json output=json");

    let declares_nothing = r#"config = { always = "encodings" }"#;
    let mut chain = guests(&[writes, declares_nothing]).unwrap();
    let result = chain.process(&command_records(&["ok"])).unwrap();
    assert_eq!(result.outputs[0].value, b"input=json output=json");
    assert_eq!(encodings(&chain)[0], Encodings { input: JSON, output: JSON });
}

#[test]
fn neighbours_that_declare_different_types_are_refused_naming_both() {
    let writes = r#"config = { writes = "shop.order", binary = "form-1" }"#;
    let reads = r#"config = { reads = "shop.refund", binary = "form-1" }"#;
    let error = guests(&["", writes, reads]).err().expect("refused").to_string();
    assert_eq!(
        error,
        "stage `g2` reads `shop.refund` values, but stage `g1` before it writes `shop.order`: reorder the \
         stages, or put a stage between them that turns one into the other"
    );
}

#[test]
fn a_stage_with_a_canary_writes_json_and_a_canary_that_cannot_read_its_input_is_refused() {
    let writes = r#"config = { writes = "t", binary = "form-1" }"#;
    let reads = r#"config = { reads = "t", binary = "form-1" }"#;
    let canary = |plugin: &str| format!("{reads}\ncanary = {{ plugin = \"plugins/dist/{plugin}\", sample = 1.0 }}");
    // The same plugin, with the stage's config, declares the same.
    assert!(guests(&[writes, &canary("testguest.wasm")]).is_ok());
    // A stage with a canary writes JSON, so that the diffs can be read.
    let both = r#"config = { reads = "t", writes = "t", binary = "form-1" }"#;
    let chain = guests(&[writes, both, reads]).unwrap();
    assert_eq!(encodings(&chain)[1], Encodings { input: BINARY, output: BINARY });
    let with_canary = format!("{both}\ncanary = {{ plugin = \"plugins/dist/testguest.wasm\", sample = 1.0 }}");
    let chain = guests(&[writes, &with_canary, reads]).unwrap();
    assert_eq!(encodings(&chain)[1], Encodings { input: BINARY, output: JSON });
    // A stage that reads any JSON cannot stand in where the stage reads binary.
    let error = guests(&[writes, &canary("dedup.wasm")]).err().expect("refused").to_string();
    assert_eq!(
        error,
        "the canary of stage `g1` cannot stand in for it: the stage reads `t` in a binary form the candidate does \
         not share; build both with the same version of the type"
    );
}

/// `count` generated orders (5% invalid) of topic `orders`, partition 0.
fn orders(count: u64, seed: u64) -> Vec<Record> {
    support::inputs::generated(count, seed, 0.05)
        .into_iter()
        .enumerate()
        .map(|(i, value)| Record {
            key: None,
            value: Some(value.into_bytes()),
            headers: Vec::new(),
            topic: "orders".into(),
            partition: 0,
            offset: i as i64,
            timestamp_ms: None,
        })
        .collect()
}

/// The default pipeline, and the same with a stage that declares nothing
/// (JSON in, JSON out) between `enrich` and `categorize`.
fn default_chains() -> (Chain, Chain) {
    let build = |pipeline: &Pipeline| {
        let lookups = Arc::new(InMemory(sluice::tools::generator::tables()));
        Chain::build(&Engine::new().unwrap(), pipeline, lookups, sluice::state::StateStore::in_memory()).unwrap()
    };
    let pipeline = support::default_pipeline(&support::env_of(&[]));
    let plain = build(&pipeline);
    let mut with_json = support::default_pipeline(&support::env_of(&[]));
    let guest = config::load_str(
        r#"
        kafka = { brokers = "unused:9092", group = "g" }
        redis = { url = "redis://unused" }
        source = { topics = ["in"] }
        output = { topic = "out" }
        dead_letter = { topic = "dlq" }
        [[stages]]
        name = "json"
        plugin = "plugins/dist/testguest.wasm"
        config = { always = "ok" }
        "#,
        |_| None,
    )
    .unwrap();
    with_json.config.stages.insert(2, guest.stages.into_iter().next().unwrap());
    (plain, build(&with_json))
}

#[test]
fn the_default_stages_exchange_orders_in_binary_and_a_json_stage_between_them_changes_nothing() {
    let (mut plain, mut with_json) = default_chains();
    let names: Vec<&str> = plain.stages().iter().map(|s| &**s.name()).collect();
    assert_eq!(names, ["normalize", "enrich", "categorize", "totals"]);
    assert_eq!(
        encodings(&plain),
        [
            Encodings { input: JSON, output: BINARY },
            Encodings { input: BINARY, output: BINARY },
            Encodings { input: BINARY, output: BINARY },
            Encodings { input: BINARY, output: JSON },
        ]
    );
    assert_eq!(
        encodings(&with_json),
        [
            Encodings { input: JSON, output: BINARY },
            Encodings { input: BINARY, output: JSON },
            Encodings { input: JSON, output: JSON },
            Encodings { input: JSON, output: BINARY },
            Encodings { input: BINARY, output: JSON },
        ]
    );
    let records = orders(3000, 7);
    for batch in records.chunks(500) {
        let (a, b) = (plain.process(batch).unwrap(), with_json.process(batch).unwrap());
        assert!(!a.outputs.is_empty());
        let values = |r: &sluice::pipeline::BatchResult| r.outputs.iter().map(|o| o.value.clone()).collect::<Vec<_>>();
        assert_eq!(values(&a), values(&b));
        for value in values(&a) {
            let order: serde_json::Value = serde_json::from_slice(&value).expect("the chain's output is JSON");
            assert!(order["total_cents"].is_i64(), "{order}");
        }
        let reasons = |r: &sluice::pipeline::BatchResult| {
            r.dead_letters
                .iter()
                .map(|d| (d.origin, d.reason.as_str().to_string(), d.message.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(reasons(&a), reasons(&b));
        assert_eq!(a.effects.len(), b.effects.len());
    }
}

#[test]
fn a_reload_that_changes_a_boundary_replaces_the_instances_on_both_sides() {
    let records = orders(1000, 11);
    let (mut reference, _) = default_chains();
    let want: Vec<Vec<u8>> = reference.process(&records).unwrap().outputs.into_iter().map(|o| o.value).collect();
    // A JSON stage goes in, and out again: each time the stages around it
    // must be told the new encodings, not kept as they were.
    let (mut plain, mut with_json) = default_chains();
    with_json.adopt_unchanged(&mut plain);
    let got: Vec<Vec<u8>> = with_json.process(&records).unwrap().outputs.into_iter().map(|o| o.value).collect();
    assert_eq!(got, want, "JSON stage added");
    // (The test guest passes bytes through, so the outputs alone would not
    // tell: the instances must have been told what their specs say.)
    assert_eq!(encodings(&with_json)[1], Encodings { input: BINARY, output: JSON });
    assert_eq!(encodings(&with_json)[3], Encodings { input: JSON, output: BINARY });
    let (mut plain, _) = default_chains();
    plain.adopt_unchanged(&mut with_json);
    let result = plain.process(&records).unwrap();
    assert_eq!(result.outputs.into_iter().map(|o| o.value).collect::<Vec<_>>(), want, "JSON stage removed");
    assert_eq!(encodings(&plain)[1], Encodings { input: BINARY, output: BINARY });
}
