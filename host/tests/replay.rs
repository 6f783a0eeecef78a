//! `sluice replay` against tansu, the real Redis and the sluice binary: the
//! dead letters of the shared examples come back once each, filtered, as
//! the records they were (key, value, headers), naming their dead letter.

mod support;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;
use support::RedisPrefix;
use support::inputs::{Expected, SHARED_REDIS, example_values, generated, keyed, load_lookups};
use support::kafka::{Consumed, Tansu, consume, produce, produce_with_headers};
use support::model;
use support::process::{Host, HostEnv};
use support::workdir::Workdir;

/// Runs `sluice replay` on the repository's pipeline.toml with `env`;
/// returns its summary line.
fn replay(env: &HostEnv, flags: &[&str]) -> String {
    replay_with(&support::repo_root().join("pipeline.toml"), env, flags)
}

/// Runs `sluice replay` on `pipeline` with `env`; returns its summary line.
fn replay_with(pipeline: &std::path::Path, env: &HostEnv, flags: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("replay")
        .arg(pipeline)
        .args(flags)
        .env_clear()
        .envs(&env.vars)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "replay {flags:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("replay {flags:?}: {text}");
    text
}

fn is_replay_of(record: &Consumed, dead: &Consumed) -> bool {
    record.headers.get("sluice.replay.of") == Some(&format!("orders.dlq/{}/{}", dead.partition, dead.offset))
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_replayed_once_each_as_the_records_they_were() {
    let tansu = Tansu::start_with_partitions(1);
    tansu.create_topic("orders.retry", 1);
    tansu.create_topic("orders.retry2", 1);
    let (lookups, counters) = (RedisPrefix::new("replay-lookups"), RedisPrefix::new("replay-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "replay");
    let mut host = Host::start(&env);
    host.wait_ready(Duration::from_secs(60));
    let values = example_values();
    produce(&tansu.brokers(), "orders", &keyed(&values)).await;
    // One more, with a key and headers of its own: they must come back.
    let traced = br#"{"order_id": "#;
    produce_with_headers(&tansu.brokers(), "orders", "k-1", traced, &[("trace", "t-1"), ("tenant", "a")]).await;
    host.wait_records_in(values.len() as u64 + 1, Duration::from_secs(60));
    let want = Expected::of(&values);
    let total = want.dead_total() + 1;
    let dlq = consume(&tansu.brokers(), "orders.dlq", total, Duration::from_secs(60), Duration::from_secs(1)).await;
    assert_eq!(dlq.len(), total);
    // Nothing reads what is replayed to the source topic but this test.
    assert!(host.terminate().success());
    let reason = |r: &Consumed| r.headers["sluice.error.reason"].clone();
    let invalid: Vec<&Consumed> = dlq.iter().filter(|r| reason(r) == "invalid_json").collect();
    assert_eq!(invalid.len(), want.dead["invalid_json"] + 1);

    // A dry run counts and changes nothing.
    let dry = replay(&env, &["--dry-run"]);
    assert!(dry.contains(&format!("{total} records read, {total} matched; would replay {total} (")), "{dry}");
    assert!(replay(&env, &["--dry-run"]).contains(&format!("would replay {total}")), "the dry run remembered nothing");

    // One reason, to another topic: the records as they were.
    let out = replay(&env, &["--reason", "invalid_json", "--to", "orders.retry"]);
    assert!(out.contains(&format!("replayed {} ({} to orders.retry)", invalid.len(), invalid.len())), "{out}");
    let retried =
        consume(&tansu.brokers(), "orders.retry", invalid.len(), Duration::from_secs(30), Duration::from_secs(1)).await;
    assert_eq!(retried.len(), invalid.len());
    for dead in &invalid {
        let again: Vec<&Consumed> = retried.iter().filter(|r| is_replay_of(r, dead)).collect();
        assert_eq!(again.len(), 1, "dead letter {}: {retried:?}", dead.offset);
        let again = again[0];
        assert_eq!((&again.key, &again.value), (&dead.key, &dead.value));
        let mut headers: BTreeMap<String, String> = dead.headers.clone();
        headers.retain(|name, _| !name.starts_with("sluice."));
        headers.insert("sluice.replay.of".into(), format!("orders.dlq/{}/{}", dead.partition, dead.offset));
        assert_eq!(again.headers, headers, "only the host's headers are gone");
    }
    let traced_again = retried.iter().find(|r| r.key.as_deref() == Some("k-1")).expect("the keyed record");
    assert_eq!((&traced_again.headers["trace"][..], &traced_again.headers["tenant"][..]), ("t-1", "a"));
    assert_eq!(traced_again.value, traced);

    // The same again: nothing more.
    let out = replay(&env, &["--reason", "invalid_json", "--to", "orders.retry"]);
    assert!(out.contains(&format!("replayed 0; {} already replayed", invalid.len())), "{out}");
    let retried =
        consume(&tansu.brokers(), "orders.retry", invalid.len(), Duration::from_secs(30), Duration::from_secs(2)).await;
    assert_eq!(retried.len(), invalid.len(), "replayed once each");

    // A source offset range that holds dead letters replayed already and
    // others: only the others.
    let source_offset = |r: &Consumed| r.headers["sluice.source.offset"].parse::<i64>().unwrap();
    let mut by_offset: Vec<&Consumed> = dlq.iter().collect();
    by_offset.sort_by_key(|r| source_offset(r));
    let mixed = by_offset.windows(2).find(|w| (reason(w[0]) == "invalid_json") != (reason(w[1]) == "invalid_json"));
    let (a, b) = mixed.map(|w| (source_offset(w[0]), source_offset(w[1]))).expect("neighbours of both kinds");
    let in_range: Vec<&Consumed> = dlq.iter().filter(|r| (a..=b).contains(&source_offset(r))).collect();
    let fresh = in_range.iter().filter(|r| reason(r) != "invalid_json").count();
    assert!(fresh > 0 && fresh < in_range.len(), "the range mixes replayed and fresh dead letters");
    let range = format!("{a}..{b}");
    let out = replay(&env, &["--partition", "0", "--offsets", &range, "--to", "orders.retry2"]);
    let already = in_range.len() - fresh;
    assert!(out.contains(&format!("{} matched; replayed {fresh} ", in_range.len())), "{out}");
    assert!(out.contains(&format!("; {already} already replayed")), "{out}");
    let ranged =
        consume(&tansu.brokers(), "orders.retry2", fresh, Duration::from_secs(30), Duration::from_secs(1)).await;
    assert_eq!(ranged.len(), fresh);
    assert!(ranged.iter().all(|r| in_range.iter().any(|d| is_replay_of(r, d))));

    // The rest, to where they came from.
    let rest = total - invalid.len() - fresh;
    assert!(rest > 0, "dead letters are left to replay");
    let out = replay(&env, &[]);
    assert!(out.contains(&format!("replayed {rest} ({rest} to orders)")), "{out}");
    let inputs = values.len() + 1;
    let orders =
        consume(&tansu.brokers(), "orders", inputs + rest, Duration::from_secs(30), Duration::from_secs(1)).await;
    assert_eq!(orders.len(), inputs + rest);
    assert_eq!(orders.iter().filter(|r| r.headers.contains_key("sluice.replay.of")).count(), rest);
}

/// The default pipeline with a stage `audit` (the test guest) before
/// `totals` that runs `command` on every record: `panic` is a plugin bug,
/// `ok` its fix.
fn with_audit(pipeline: &str, work: &Workdir, command: &str) -> String {
    let audit = format!(
        "[[stages]]\nname = \"audit\"\nplugin = \"{}\"\nconfig = {{ always = \"{command}\" }}\n\n[[stages]]\nname = \"totals\"",
        work.plugin("testguest.wasm").display()
    );
    let edited = pipeline.replace("[[stages]]\nname = \"totals\"", &audit);
    assert_ne!(edited, pipeline);
    edited
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_a_plugin_bug_dead_lettered_come_out_exactly_once_after_the_fix_and_two_replays() {
    let tansu = Tansu::start_with_partitions(2);
    let (lookups, counters) = (RedisPrefix::new("fix-lookups"), RedisPrefix::new("fix-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let pipeline = Workdir::default_pipeline();
    let work = Workdir::new("replay-fix", &pipeline);
    work.write_pipeline(&with_audit(&pipeline, &work, "panic"));
    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "replay-fix")
        .set("SLUICE_PLUGIN_DIR", &work.plugin_dir());
    let mut host = Host::start_with(&env, &work.pipeline());
    host.wait_ready(Duration::from_secs(60));

    // The bug: every order that reaches `audit` is dead-lettered.
    let values = generated(400, 31, 0.05);
    let want = Expected::of(&values);
    produce(&tansu.brokers(), "orders", &keyed(&values)).await;
    host.wait_records_in(values.len() as u64, Duration::from_secs(120));
    let dead = want.dead_total() + want.orders.len();
    let dlq = consume(&tansu.brokers(), "orders.dlq", dead, Duration::from_secs(60), Duration::from_secs(1)).await;
    let by_audit = dlq.iter().filter(|r| r.headers["sluice.error.stage"] == "audit").count();
    assert_eq!(by_audit, want.orders.len(), "every valid order failed in audit");

    // The fix goes live; the dead letters of audit are replayed, twice.
    work.write_pipeline(&with_audit(&pipeline, &work, "ok"));
    let started = Instant::now();
    while host.json("GET", "/api/pipeline").1["generation"] != 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "the fix was not reloaded:\n{}", host.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = replay_with(&work.pipeline(), &env, &["--stage", "audit"]);
    assert!(first.contains(&format!("replayed {by_audit} ({by_audit} to orders)")), "{first}");
    let second = replay_with(&work.pipeline(), &env, &["--stage", "audit"]);
    assert!(second.contains(&format!("replayed 0; {by_audit} already replayed")), "{second}");
    host.wait_records_in((values.len() + by_audit) as u64, Duration::from_secs(120));

    // Every order exactly once, and the counters are the model's.
    let outputs = consume(
        &tansu.brokers(),
        "orders.enriched",
        want.orders.len(),
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await;
    let ids: Vec<String> = outputs.iter().map(|r| r.json()["order_id"].as_str().unwrap().to_string()).collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "no order twice");
    let want_ids: BTreeSet<&String> = want.orders.iter().map(|o| &o.order_id).collect();
    assert_eq!(distinct, want_ids, "every valid order");
    assert!(outputs.iter().all(|r| r.headers["sluice.generation"] == "2"), "each one went through the fix");
    assert_eq!(support::read_counters(&counters.0).await, model::counters(&want.orders));
    let dlq = consume(&tansu.brokers(), "orders.dlq", dead, Duration::from_secs(30), Duration::from_secs(2)).await;
    assert_eq!(dlq.len(), dead, "the replayed orders were not dead-lettered again");
    assert!(host.terminate().success());
}
