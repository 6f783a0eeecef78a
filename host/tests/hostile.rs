//! Hostile plugins: the test guest (plugins/testguest), on command, sleeps
//! past its deadline, returns more than it may, writes Redis keys it may
//! not and floods the log. Each is stopped by a limit, costs only its own
//! record, and says which limit; the host serves the next record.

mod support;

use sluice::config::{self, Pipeline};
use sluice::engine::Engine;
use sluice::lookup::LookupSource;
use sluice::lookup::Offline;
use sluice::pipeline::{BatchResult, Chain};
use sluice::redis::RedisLookups;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::kafka::{Tansu, consume, produce};
use support::process::{Host, HostEnv};
use support::slow::SlowProxy;
use support::workdir::Workdir;
use support::{RedisPrefix, command_records, repo_root};

/// A pipeline of the test guest alone. Redis keys of the application live
/// under `app:`: the fence under `app:fence:`, the lookup table `user`
/// under `app:user:`.
fn pipeline(stage: &str) -> Pipeline {
    pipeline_of("testguest", stage)
}

/// A pipeline of the test guest built as `plugin` alone.
fn pipeline_of(plugin: &str, stage: &str) -> Pipeline {
    let text = format!(
        r#"
        kafka = {{ brokers = "unused:9092", group = "g" }}
        redis = {{ url = "redis://unused", fence_prefix = "app:fence:" }}
        source = {{ topics = ["in"] }}
        output = {{ topic = "out" }}
        dead_letter = {{ topic = "dlq" }}
        lookups.user = {{ key_prefix = "app:user:" }}
        [[stages]]
        name = "guest"
        plugin = "plugins/dist/{plugin}.wasm"
        lookups = ["user"]
        {stage}
        "#
    );
    let config = config::load_str(&text, |_| None).unwrap();
    Pipeline { config, base_dir: repo_root() }
}

fn guest(stage: &str) -> Chain {
    chain_with(stage, Arc::new(Offline))
}

fn chain_with(stage: &str, lookups: Arc<dyn LookupSource>) -> Chain {
    Chain::build(&Engine::new().unwrap(), &pipeline(stage), lookups, sluice::state::StateStore::in_memory()).unwrap()
}

/// (offset, reason, message) of each dead letter.
fn dead(result: &BatchResult) -> Vec<(String, String, String)> {
    let header = |d: &sluice::pipeline::DeadLetter, name: &str| {
        let h = d.record.headers.iter().find(|h| h.name == name).unwrap();
        String::from_utf8_lossy(&h.value).into_owned()
    };
    result
        .dead_letters
        .iter()
        .map(|d| (header(d, "sluice.source.offset"), d.reason.as_str().to_string(), header(d, "sluice.error.message")))
        .collect()
}

fn reasons(result: &BatchResult) -> Vec<(String, String)> {
    dead(result).into_iter().map(|(offset, reason, _)| (offset, reason)).collect()
}

fn values(result: &BatchResult) -> Vec<String> {
    result.outputs.iter().map(|o| String::from_utf8_lossy(&o.value).into_owned()).collect()
}

fn pair(offset: &str, reason: &str) -> (String, String) {
    (offset.to_string(), reason.to_string())
}

/// The test guest built as `plugin`: `testguest-packed` (contract 0.5.0,
/// batches and results packed) or `testguest-tables` (0.6.0, tables of
/// bytes).
fn contract_guest(plugin: &str, stage: &str) -> Chain {
    let pipeline = pipeline_of(plugin, stage);
    Chain::build(&Engine::new().unwrap(), &pipeline, Arc::new(Offline), sluice::state::StateStore::in_memory()).unwrap()
}

#[test]
fn packed_results_that_break_the_contract_cost_only_their_own_record_and_say_what_is_wrong() {
    let mut chain = contract_guest("testguest-packed", "");
    let commands = ["ok", "bad-span", "bad-utf8", "no-outcome", "reject", "ok"];
    let result = chain.process(&command_records(&commands)).unwrap();
    assert_eq!(values(&result), ["ok", "ok"], "the other records are served");
    assert_eq!(
        reasons(&result),
        [
            pair("1", "plugin_contract"),
            pair("2", "plugin_contract"),
            pair("3", "plugin_contract"),
            pair("4", "asked_to_reject")
        ]
    );
    let messages: Vec<String> = dead(&result).into_iter().map(|(_, _, message)| message).collect();
    // Each bad record was called on its own: it is record 0 of its call.
    assert_eq!(
        messages[..3],
        [
            "process-packed broke the contract: entry 1: the value of an output of record 0 is bytes \
             4294967291..4294967299, outside the results' 0 bytes",
            "process-packed broke the contract: entry 0: the reason code of record 0 is not UTF-8 (at byte 4)",
            "process-packed broke the contract: the results end after 0 entries, where the outcome of record 0 was \
             announced",
        ]
    );
}

#[test]
fn packed_outputs_that_inherit_a_large_key_are_charged_to_the_results_budget() {
    // 100 outputs inheriting a key of 100 KiB: 10 MB for the host from a
    // few bytes of results, over a budget of 4 MiB.
    let mut chain = contract_guest("testguest-packed", "limits = { results_mib = 4 }");
    let mut records = command_records(&["inherit 100", "inherit 2"]);
    records[0].key = Some(vec![b'k'; 100 << 10]);
    records[1].key = Some(b"small".to_vec());
    records[1].headers = vec![sluice::record::Header { name: "trace".into(), value: b"t1".to_vec() }];
    let result = chain.process(&records).unwrap();
    assert_eq!(reasons(&result), [pair("0", "plugin_output_limit")]);
    assert!(dead(&result)[0].2.contains("larger than 4 MiB (limits.results_mib)"), "{:?}", dead(&result));
    assert_eq!(result.outputs.len(), 2);
    for output in &result.outputs {
        assert_eq!(output.key.as_deref(), Some(&b"small"[..]), "the input's key, inherited");
        assert_eq!(output.headers[0].name, "trace", "the input's headers, inherited");
    }
}

#[test]
fn rows_that_break_the_contract_cost_only_their_own_record_and_say_what_is_wrong() {
    let mut chain = contract_guest("testguest-tables", "");
    let commands = ["ok", "bad-kind", "torn-rows", "bad-span", "reject", "drop", "ok"];
    let mut records = command_records(&commands);
    records[0].key = Some(b"k0".to_vec());
    records[0].headers = vec![sluice::record::Header { name: "trace".into(), value: b"t0".to_vec() }];
    let result = chain.process(&records).unwrap();
    assert_eq!(values(&result), ["ok", "ok"], "the other records are served");
    assert_eq!(result.outputs[0].key.as_deref(), Some(&b"k0"[..]), "the input's key, inherited");
    assert_eq!(result.outputs[0].headers[0].name, "trace", "the input's headers, inherited");
    assert_eq!(
        reasons(&result),
        [
            pair("1", "plugin_contract"),
            pair("2", "plugin_contract"),
            pair("3", "plugin_contract"),
            pair("4", "asked_to_reject")
        ]
    );
    let messages: Vec<String> = dead(&result).into_iter().map(|(_, _, message)| message).collect();
    // Each bad record was called on its own: it is record 0 of its call.
    assert_eq!(
        messages[..3],
        [
            "process-tables broke the contract: entry 0 is a row of unknown kind 9, where the outcome of record 0 \
             belongs",
            "process-tables broke the contract: the entries are 27 bytes, not a whole number of 32-byte rows",
            "process-tables broke the contract: entry 1: the value of an output of record 0 is bytes \
             4294967291..4294967299, outside the results' 0 bytes",
        ]
    );
}

#[test]
fn a_plugin_that_sleeps_is_stopped_at_its_deadline() {
    let mut chain = guest("limits = { timeout_ms = 1000 }");
    let started = Instant::now();
    let result = chain.process(&command_records(&["sleep 30000", "ok", "sleep 20"])).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(reasons(&result), [pair("0", "plugin_timeout")]);
    let message = &dead(&result)[0].2;
    assert_eq!(message, "the call did not finish within its deadline of 1000 ms");
    let values = values(&result);
    assert_eq!(values[0], "ok", "the next record is served");
    assert!(values[1].starts_with("slept "), "a sleep within the deadline completes: {values:?}");
    // The batch call, then the sleeping record on its own: two deadlines.
    assert!(elapsed < Duration::from_secs(5), "the 30 s sleep held the batch for {elapsed:?}");
}

#[test]
fn an_init_that_sleeps_is_stopped_at_its_deadline() {
    let started = Instant::now();
    let stage = "config = { init_sleep_ms = 30000 }\nlimits = { timeout_ms = 1000 }";
    let error = Chain::build(
        &Engine::new().unwrap(),
        &pipeline(stage),
        Arc::new(Offline),
        sluice::state::StateStore::in_memory(),
    )
    .err()
    .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "init held the load for {elapsed:?}");
    let error = error.to_string();
    assert!(error.contains("init did not finish within its deadline of 1000 ms"), "{error}");
}

#[test]
fn time_spent_serving_lookups_is_not_the_plugins() {
    // A healthy Redis 100 ms away: six lookups take 600 ms of the host's
    // time, twice the plugin's deadline of 300 ms.
    let proxy = SlowProxy::start("127.0.0.1:6379", Duration::from_millis(100));
    let prefix = RedisPrefix::new("hostile-lookups");
    let tables = [(
        "user".to_string(),
        config::LookupConfig {
            key_prefix: format!("{}user:", prefix.0),
            ttl_ms: 60_000,
            cache_rows: 100.try_into().unwrap(),
        },
    )]
    .into();
    let lookups = RedisLookups::new(&format!("redis://127.0.0.1:{}", proxy.port), &tables).unwrap();
    let mut chain = chain_with("limits = { timeout_ms = 300 }", Arc::new(lookups));
    let started = Instant::now();
    let result = chain.process(&command_records(&["lookup user 6"])).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(600), "the lookups went through the slow link");
    assert_eq!(reasons(&result), [], "{:?}", dead(&result));
    assert_eq!(values(&result), ["found 0 of 6"]);
    // The plugin's own time is still bounded.
    let result = chain.process(&command_records(&["loop"])).unwrap();
    assert_eq!(reasons(&result), [pair("0", "plugin_timeout")]);
}

#[test]
fn results_over_the_budget_fail_the_call_not_the_host() {
    let mut chain = guest("limits = { results_mib = 1, memory_mib = 64 }");
    let result = chain.process(&command_records(&["outputs 8 262144", "outputs 2 262144", "ok"])).unwrap();
    assert_eq!(reasons(&result), [pair("0", "plugin_output_limit")]);
    let message = &dead(&result)[0].2;
    assert!(message.starts_with("the call's results are larger than 1 MiB (limits.results_mib)"), "{message}");
    assert_eq!(result.outputs.len(), 3, "two outputs of 256 KiB, then `ok`");
    assert_eq!(values(&result)[2], "ok");
}

#[test]
fn a_record_emits_at_most_max_outputs_and_max_effects() {
    let mut chain = guest("writes = [\"app:\"]\nlimits = { max_outputs = 10, max_effects = 10 }");
    let result = chain
        .process(&command_records(&["outputs 11 1", "outputs 10 1", "effects 11 app:c", "effects 10 app:c"]))
        .unwrap();
    assert_eq!(reasons(&result), [pair("0", "plugin_output_limit"), pair("2", "plugin_output_limit")]);
    let messages: Vec<String> = dead(&result).into_iter().map(|d| d.2).collect();
    assert_eq!(messages[0], "11 outputs for one record, more than limits.max_outputs = 10");
    assert_eq!(messages[1], "11 effects for one record, more than limits.max_effects = 10");
    assert_eq!(result.outputs.len(), 11, "ten outputs and `counted`");
    assert_eq!(result.effects.len(), 10);
}

#[test]
fn effects_write_only_under_the_stages_prefixes_and_never_the_fence_or_a_table() {
    let mut chain = guest("writes = [\"app:\"]");
    let commands = ["effects 1 app:counts", "effects 1 other:counts", "effects 1 app:fence:g", "effects 1 app:user:7"];
    let result = chain.process(&command_records(&commands)).unwrap();
    assert_eq!(reasons(&result), [pair("1", "effect_denied"), pair("2", "effect_denied"), pair("3", "effect_denied")]);
    let messages: Vec<String> = dead(&result).into_iter().map(|d| d.2).collect();
    assert_eq!(
        messages[0],
        "an effect on Redis key `other:counts` is outside what the stage may write: the stage's `writes` are [\"app:\"]"
    );
    assert!(messages[1].starts_with("an effect on Redis key `app:fence:g` is under `app:fence:`"), "{}", messages[1]);
    assert!(messages[2].starts_with("an effect on Redis key `app:user:7` is under `app:user:`"), "{}", messages[2]);
    assert_eq!(result.effects.len(), 1, "only the allowed effect is kept");

    let mut silent = guest("");
    let result = silent.process(&command_records(&["effects 1 app:counts"])).unwrap();
    assert_eq!(reasons(&result), [pair("0", "effect_denied")], "a stage with no `writes` writes nothing");
    assert!(dead(&result)[0].2.ends_with("the stage declares no `writes`"));
}

#[test]
fn a_stage_cannot_declare_writes_on_the_fence_or_a_table() {
    for (writes, why) in [
        (
            "\"app:fence:\"",
            "stages[0].writes: `app:fence:` is inside the offset fence (redis.fence_prefix `app:fence:`)",
        ),
        (
            "\"app:user:vip:\"",
            "stages[0].writes: `app:user:vip:` is inside the lookup table `user` (key_prefix `app:user:`)",
        ),
        ("\"\"", "stages[0].writes: `` is empty: it would let the stage write every key"),
    ] {
        let text = format!(
            "kafka = {{ brokers = \"b\", group = \"g\" }}\nredis = {{ url = \"redis://r\", fence_prefix = \"app:fence:\" }}\n\
             source = {{ topics = [\"in\"] }}\noutput = {{ topic = \"out\" }}\ndead_letter = {{ topic = \"dlq\" }}\n\
             lookups.user = {{ key_prefix = \"app:user:\" }}\n[[stages]]\nname = \"s\"\nplugin = \"s.wasm\"\nwrites = [{writes}]\n"
        );
        let error = config::load_str(&text, |_| None).unwrap_err().to_string();
        assert!(error.contains(why), "{writes}: {error}");
        assert!(error.contains("line 10"), "the error names the line: {error}");
    }
}

#[test]
fn an_output_over_message_max_bytes_dead_letters_its_record_and_a_large_dead_letter_is_cut() {
    let mut config = pipeline("").config;
    config.kafka.producer.insert(toml::Spanned::new(0..0, "message.max.bytes".into()), "100000".into());
    let pipeline = Pipeline { config, base_dir: repo_root() };
    let mut chain =
        Chain::build(&Engine::new().unwrap(), &pipeline, Arc::new(Offline), sluice::state::StateStore::in_memory())
            .unwrap();
    let big_reject = format!("reject {}", "x".repeat(99_900));
    let result = chain.process(&command_records(&["outputs 1 200000", "outputs 1 1000", &big_reject])).unwrap();
    assert_eq!(reasons(&result), [pair("0", "output_too_large"), pair("2", "asked_to_reject")]);
    assert_eq!(
        dead(&result)[0].2,
        "an output to `out` of 200256 bytes is larger than the producer's message.max.bytes (100000)"
    );
    assert_eq!(result.outputs.len(), 1, "the record under the limit is written");
    let cut = &result.dead_letters[1].record;
    let header =
        cut.headers.iter().find(|h| h.name == "sluice.error.truncated").expect("a truncated dead letter says so");
    assert_eq!(header.value, b"99907");
    let size: usize = cut.value.len() + cut.headers.iter().map(|h| h.name.len() + h.value.len() + 8).sum::<usize>();
    assert!(size + 256 <= 100_000, "the dead letter fits: {size} bytes");
    assert!(cut.value.starts_with(b"reject xxx"), "the start of the value is kept");
}

fn sluice_test(dir: &Path, input: &str, args: &[&str]) -> (std::process::Output, Duration) {
    let file = dir.join("input.txt");
    std::fs::write(&file, input).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["test", "plugins/dist/testguest.wasm", "--input"])
        .arg(&file)
        .args(args)
        .current_dir(repo_root())
        .env("SLUICE_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (out, started.elapsed())
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-hostile-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn sluice_test_stops_a_sleeping_plugin_at_its_deadline() {
    let dir = scratch("test-sleep");
    let (out, elapsed) = sluice_test(&dir, "sleep 30000\nok\n", &["--timeout-ms", "1000", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(elapsed < Duration::from_secs(8), "sluice test took {elapsed:?}");
    assert!(stdout.contains("plugin_timeout"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"value_text\":\"ok\""), "the next record is served: {stdout}");
}

#[test]
fn the_log_import_is_capped_in_lines_and_length_and_cannot_forge_a_line() {
    let dir = scratch("log");
    let (out, _) = sluice_test(&dir, "log-forge\nlog 5000 3000\n", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logged: Vec<&str> = stderr.lines().filter(|l| l.contains(" line ") && l.contains("xxx")).collect();
    assert_eq!(logged.len(), 98, "at most 100 lines per 10 s window of one stage's log (two were log-forge's)");
    for line in &logged {
        assert!(line.len() < 2300, "a log line is cut at 2000 bytes: {} bytes", line.len());
    }
    let forged: Vec<&str> = stderr.lines().filter(|l| l.contains("a forged line")).collect();
    assert_eq!(forged.len(), 1, "{stderr}");
    assert!(forged[0].contains(" INFO ") && forged[0].contains("stage=\"testguest\""), "{}", forged[0]);
    assert!(!stderr.lines().any(|l| l.starts_with("ERROR")), "a plugin's newline started a line of its own");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("logged 5000"), "the flood costs the record nothing: {stdout}");
}

/// `sluice run` of `pipeline` (at-least-once) against its own broker, ready.
struct Running {
    tansu: Tansu,
    host: Host,
    _counters: RedisPrefix,
    _work: Workdir,
}

fn run(name: &str, pipeline: &str) -> Running {
    let tansu = Tansu::start();
    let counters = RedisPrefix::new(name);
    let work = Workdir::new(name, pipeline);
    let env = HostEnv::new(&tansu.brokers(), "", &counters.0, name)
        .set("SLUICE_PLUGIN_DIR", &work.plugin_dir())
        .set("SLUICE_DELIVERY", "at-least-once");
    let mut host = Host::start_with(&env, &work.pipeline());
    host.wait_ready(Duration::from_secs(60));
    Running { tansu, host, _counters: counters, _work: work }
}

#[tokio::test(flavor = "multi_thread")]
async fn sluice_run_dead_letters_a_sleeping_record_and_stops_promptly() {
    let guest = "[[stages]]\nname = \"guest\"\nplugin = \"${SLUICE_PLUGIN_DIR}/testguest.wasm\"\n\
                 limits = { timeout_ms = 1000 }\n\n[[stages]]\nname = \"normalize\"";
    let text = Workdir::default_pipeline().replacen("[[stages]]\nname = \"normalize\"", guest, 1);
    let Running { tansu, mut host, _counters, _work } = run("hostile-run", &text);
    produce(&tansu.brokers(), "orders", &[(None, b"sleep 30000".to_vec())]).await;
    let dead = consume(&tansu.brokers(), "orders.dlq", 1, Duration::from_secs(30), Duration::ZERO).await;
    let reason = dead[0].headers.get("sluice.error.reason");
    assert_eq!(reason.map(String::as_str), Some("plugin_timeout"), "{}", host.log_text());

    // A second sleeper is being processed when SIGTERM comes: the batch
    // ends at the deadline, not after 30 s.
    produce(&tansu.brokers(), "orders", &[(None, b"sleep 30000".to_vec())]).await;
    // Nothing shows while a batch is inside a plugin; the consumer fetches
    // within 50 ms (fetch.wait.max.ms), so after half a second it is there.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = host.terminate();
    assert!(started.elapsed() < Duration::from_secs(10), "SIGTERM took {:?}", started.elapsed());
    assert!(status.success(), "{status:?}\n{}", host.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn sluice_run_dead_letters_an_output_too_large_to_produce_and_goes_on() {
    // The guest alone: its 1.5 MB output goes to Kafka, over librdkafka's
    // default message.max.bytes of 1,000,000.
    let stages = Workdir::default_pipeline().find("[[stages]]").unwrap();
    let guest = "[[stages]]\nname = \"guest\"\nplugin = \"${SLUICE_PLUGIN_DIR}/testguest.wasm\"\n\
                 config = { always = \"outputs 1 1500000\" }\n";
    let text = format!("{}{guest}", &Workdir::default_pipeline()[..stages]);
    let Running { tansu, mut host, _counters, _work } = run("hostile-large", &text);
    produce(&tansu.brokers(), "orders", &[(None, b"first".to_vec()), (None, b"second".to_vec())]).await;
    let dead = consume(&tansu.brokers(), "orders.dlq", 2, Duration::from_secs(30), Duration::ZERO).await;
    let reasons: Vec<_> = dead.iter().map(|d| d.headers.get("sluice.error.reason").cloned()).collect();
    assert_eq!(
        reasons,
        [Some("output_too_large".to_string()), Some("output_too_large".to_string())],
        "{}",
        host.log_text()
    );
    // Both are handled and committed: the pipeline did not wedge on them.
    host.wait_records_in(2, Duration::from_secs(30));
    assert!(host.terminate().success());
}
