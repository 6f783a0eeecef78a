//! The admin API and the reloads it drives, against a host running its own
//! copy of the default pipeline through tansu and the real Redis: what
//! `/api/pipeline` shows, bad methods and paths, every kind of rejected
//! reload (with the old version still serving), a restart-only change, a
//! canary and its promotion, and SIGHUP.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::RedisPrefix;
use support::inputs::{SHARED_REDIS, generated, keyed, load_lookups};
use support::kafka::{Consumed, Tansu, consume, produce};
use support::process::{Host, HostEnv};
use support::workdir::{Workdir, dist, replace, sha256};

fn stage<'a>(pipeline: &'a Value, name: &str) -> &'a Value {
    let stages = pipeline["stages"].as_array().unwrap();
    stages.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no stage {name} in {pipeline:#}"))
}

/// `sluice_reloads_total{result="..."}`.
fn reloads(host: &Host, result: &str) -> u64 {
    let (_, body) = host.get("/metrics").unwrap();
    let line = format!("sluice_reloads_total{{result=\"{result}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&line)?.parse().ok()).unwrap_or(0)
}

/// Produces `count` fresh orders and returns every output read so far once
/// they are through (the outputs of earlier rounds included).
async fn round(tansu: &Tansu, host: &Host, seed: u64, count: u64, total: &mut u64) -> Vec<Consumed> {
    let values = generated(count, seed, 0.0);
    produce(&tansu.brokers(), "orders", &keyed(&values)).await;
    *total += count;
    host.wait_records_in(*total, Duration::from_secs(60));
    consume(&tansu.brokers(), "orders.enriched", 1, Duration::from_secs(60), Duration::from_secs(2)).await
}

/// The categorize version and the fallback categories of an output order.
fn categorize_version(record: &Consumed) -> String {
    let lineage = &record.headers["sluice.lineage"];
    let entry = lineage.split(',').find(|e| e.starts_with("categorize@")).unwrap();
    entry["categorize@".len()..].to_string()
}

fn categories(record: &Consumed) -> Vec<String> {
    let order = record.json();
    order["items"].as_array().unwrap().iter().map(|i| i["category"].as_str().unwrap().to_string()).collect()
}

/// A host running its own copy of the default pipeline (at-least-once) on
/// a broker of its own, after a first round of 200 orders.
struct Admin {
    host: Host,
    work: Workdir,
    pipeline: String,
    total: u64,
    _counters: RedisPrefix,
    _lookups: RedisPrefix,
    tansu: Tansu,
}

async fn start(name: &str) -> Admin {
    let tansu = Tansu::start_with_partitions(1);
    let (lookups, counters) =
        (RedisPrefix::new(&format!("{name}-lookups")), RedisPrefix::new(&format!("{name}-counters")));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let pipeline = Workdir::default_pipeline();
    let work = Workdir::new(name, &pipeline);
    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, name)
        .set("SLUICE_PLUGIN_DIR", &work.plugin_dir())
        .set("SLUICE_DELIVERY", "at-least-once");
    let mut host = Host::start_with(&env, &work.pipeline());
    host.wait_ready(Duration::from_secs(60));
    let mut total = 0;
    round(&tansu, &host, 1, 200, &mut total).await;
    Admin { host, work, pipeline, total, _counters: counters, _lookups: lookups, tansu }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_pipeline_is_shown_and_every_error_is_json() {
    let admin = start("admin-live").await;
    let Admin { host, work, .. } = &admin;
    let v1 = dist("categorize.wasm");

    // The live pipeline.
    let (code, live) = host.json("GET", "/api/pipeline");
    assert_eq!(code, 200);
    assert_eq!(live["generation"], 1);
    assert_eq!(live["delivery"], "at-least-once");
    assert_eq!(live["source"]["topics"], serde_json::json!(["orders"]));
    let names: Vec<&str> = live["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["normalize", "enrich", "categorize", "totals"]);
    let categorize = stage(&live, "categorize");
    assert_eq!(categorize["sha256"], sha256(&v1));
    assert_eq!(categorize["version"], &sha256(&v1)[..12]);
    assert_eq!(categorize["plugin"], work.plugin("categorize.wasm").display().to_string());
    assert_eq!(categorize["config"]["rules"][0]["category"], "Drinks");
    assert_eq!(categorize["limits"]["memory_mib"], 64);
    assert!(categorize["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(stage(&live, "normalize")["records"]["records_in"], 200);
    assert_eq!(stage(&live, "enrich")["lookups"], serde_json::json!(["user", "store", "product"]));
    let values = |name: &str| stage(&live, name)["values"].clone();
    assert_eq!(values("normalize"), serde_json::json!({ "input": "json", "output": "binary" }));
    assert_eq!(values("enrich"), serde_json::json!({ "input": "binary", "output": "binary" }));
    assert_eq!(values("totals"), serde_json::json!({ "input": "binary", "output": "json" }));
    assert!(live["last_reload"].is_null());

    // Health, bad paths and bad methods: JSON, with fitting codes.
    assert_eq!(host.json("GET", "/health"), (200, serde_json::json!({"status": "ok"})));
    assert_eq!(host.json("GET", "/ready"), (200, serde_json::json!({"ready": true})));
    for (method, path, want) in [
        ("GET", "/nope", 404),
        ("GET", "/api/pipeline/extra", 404),
        ("POST", "/health", 405),
        ("GET", "/api/reload", 405),
        ("DELETE", "/api/reload", 405),
        ("PUT", "/api/pipeline", 405),
        ("GET", "/api/promote/categorize", 405),
    ] {
        let (code, body) = host.json(method, path);
        assert_eq!(code, want, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }
    assert_eq!(host.json("POST", "/api/promote/nosuch").0, 404);
    let (code, body) = host.json("POST", "/api/promote/normalize");
    assert_eq!(code, 409);
    assert!(body["error"].as_str().unwrap().contains("no canary"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_plugins_and_bad_edits_are_rejected_while_the_old_version_serves() {
    let admin = start("admin-rejects").await;
    let Admin { host, work, pipeline, tansu, .. } = &admin;
    let mut total = admin.total;
    let (v1, v2) = (dist("categorize.wasm"), dist("categorize-uncategorized.wasm"));

    // Nothing changed: nothing to apply.
    let (code, report) = host.json("POST", "/api/reload");
    assert_eq!((code, report["result"].as_str().unwrap()), (200, "unchanged"), "{report}");
    assert_eq!(report["trigger"], "api");

    // Every kind of broken plugin or file is rejected; the old version serves.
    let categorize_path = work.plugin("categorize.wasm");
    let half = &v2[..v2.len() / 2];
    let broken: [(&str, Vec<u8>, &str); 3] = [
        ("half-written", half.to_vec(), "is not a valid component"),
        ("not a component", b"categories, but as text\n".to_vec(), "is not a WebAssembly file"),
        (
            "another world",
            dist("wasi-command.wasm"),
            "does not implement the `transform` world of sluice:plugin@0.1.0, 0.2.0, 0.3.0, 0.4.0, 0.5.0 or 0.6.0",
        ),
    ];
    for (seed, (what, bytes, why)) in (10..).zip(broken) {
        replace(&categorize_path, &bytes);
        let rejected_before = reloads(host, "rejected");
        let (code, report) = host.json("POST", "/api/reload");
        assert_eq!(code, 422, "{what}: {report}");
        assert_eq!(report["result"], "rejected");
        let error = report["error"].as_str().unwrap();
        assert!(error.contains(why) && error.contains("categorize.wasm"), "{what}: {error}");
        assert!(reloads(host, "rejected") > rejected_before, "{what}: the rejection is counted");
        let (_, live) = host.json("GET", "/api/pipeline");
        assert_eq!(live["generation"], 1, "{what}");
        assert_eq!(stage(&live, "categorize")["sha256"], sha256(&v1), "{what}: the old version still serves");
        assert_eq!(live["last_error"]["error"].as_str().unwrap(), error, "{what}");
        let outputs = round(tansu, host, seed, 20, &mut total).await;
        assert!(outputs.iter().all(|r| categorize_version(r) == sha256(&v1)[..12]), "{what}");
        assert_eq!(host.json("GET", "/ready").0, 200, "{what}");
    }
    replace(&categorize_path, &v1);
    let (code, report) = host.json("POST", "/api/reload");
    assert_eq!((code, report["result"].as_str().unwrap()), (200, "unchanged"), "{report}");

    // An init error and a plugin that traps on the probe run are rejected.
    let stage_header = "[[stages]]\nname = \"totals\"";
    let bad_edits = [
        (pipeline.replace("category = \"Drinks\"", "category = \"\""), "init refused its config"),
        (
            pipeline.replace(
                stage_header,
                &format!(
                    "[[stages]]\nname = \"broken\"\nplugin = \"{}\"\nconfig = {{ always = \"panic\" }}\n\n{stage_header}",
                    work.plugin("testguest.wasm").display()
                ),
            ),
            "stage `broken` failed the probe run (plugin_trap)",
        ),
    ];
    for (text, why) in bad_edits {
        assert_ne!(&text, pipeline);
        work.write_pipeline(&text);
        let (code, report) = host.json("POST", "/api/reload");
        assert_eq!(code, 422, "{report}");
        assert!(report["error"].as_str().unwrap().contains(why), "{report}");
        assert_eq!(host.json("GET", "/api/pipeline").1["generation"], 1);
    }

    // A change only a restart can make is refused and reported as such.
    work.write_pipeline(&pipeline.replace("group = \"${SLUICE_GROUP:-sluice}\"", "group = \"elsewhere\""));
    let (code, report) = host.json("POST", "/api/reload");
    assert_eq!(code, 409, "{report}");
    assert_eq!(report["result"], "restart-required");
    assert_eq!(report["changes"], serde_json::json!(["kafka.group"]));
    work.write_pipeline(pipeline);
    let (code, report) = host.json("POST", "/api/reload");
    assert_eq!((code, report["result"].as_str().unwrap()), (200, "unchanged"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_shadows_the_live_stage_until_promoted_and_the_promotion_survives_reloads() {
    let Admin { mut host, work, pipeline, mut total, tansu, .. } = start("admin-canary").await;
    let (v1, v2) = (dist("categorize.wasm"), dist("categorize-uncategorized.wasm"));

    // A canary: the second version in shadow on every record.
    let canary = format!(
        "plugin = \"${{SLUICE_PLUGIN_DIR:-plugins/dist}}/categorize.wasm\"\ncanary = {{ plugin = \"{}\", sample = 1.0 }}",
        work.plugin("categorize-uncategorized.wasm").display()
    );
    let with_canary = pipeline.replace("plugin = \"${SLUICE_PLUGIN_DIR:-plugins/dist}/categorize.wasm\"", &canary);
    assert_ne!(with_canary, pipeline);
    work.write_pipeline(&with_canary);
    let (code, report) = host.json("POST", "/api/reload");
    // The watcher may have applied the edit first; then this reload finds
    // nothing left to do.
    assert_eq!(code, 200, "{report}");
    let (_, live) = host.json("GET", "/api/pipeline");
    assert_eq!(live["generation"], 2, "{live:#}");
    let categorized = |live: &Value| stage(live, "categorize")["records"]["records_in"].as_u64().unwrap();
    let before = categorized(&live);
    let outputs = round(&tansu, &host, 20, 100, &mut total).await;
    let (_, live) = host.json("GET", "/api/pipeline");
    let canary = &stage(&live, "categorize")["canary"];
    assert_eq!(canary["sha256"], sha256(&v2));
    assert_eq!(canary["compared"].as_u64().unwrap(), categorized(&live) - before, "sample 1.0: {canary:#}");
    assert_eq!(canary["failures"], 0);
    let diffs = canary["diffs"].as_u64().unwrap();
    assert!(diffs > 0 && diffs <= canary["compared"].as_u64().unwrap(), "{canary:#}");
    let example = &canary["examples"][0];
    let (live_value, canary_value) = (
        example["live"]["emit"][0]["value"].as_str().unwrap(),
        example["canary"]["emit"][0]["value"].as_str().unwrap(),
    );
    assert!(live_value.contains("\"Other\"") && canary_value.contains("\"Uncategorized\""), "{example:#}");
    for r in &outputs {
        assert_eq!(categorize_version(r), sha256(&v1)[..12], "the canary never delivers");
        assert!(!categories(r).contains(&"Uncategorized".to_string()));
    }

    // Promotion makes it live.
    let (code, report) = host.json("POST", "/api/promote/categorize");
    assert_eq!((code, report["result"].as_str().unwrap()), (200, "applied"), "{report}");
    assert_eq!(report["trigger"], "promote categorize");
    let (_, live) = host.json("GET", "/api/pipeline");
    assert_eq!(live["generation"], 3);
    assert_eq!(live["promoted"], serde_json::json!(["categorize"]));
    let categorize = stage(&live, "categorize");
    assert_eq!(categorize["sha256"], sha256(&v2));
    assert!(categorize["canary"].is_null());
    let before = total;
    let outputs = round(&tansu, &host, 30, 100, &mut total).await;
    let after: Vec<&Consumed> =
        outputs.iter().filter(|r| r.headers["sluice.generation"].parse::<u64>().unwrap() == 3).collect();
    assert!(after.len() as u64 >= (total - before) / 2, "{} of {} orders at generation 3", after.len(), total - before);
    assert!(after.iter().all(|r| categorize_version(r) == sha256(&v2)[..12]));
    assert!(after.iter().any(|r| categories(r).contains(&"Uncategorized".to_string())));

    // Stages reordered live: categorize before enrich; the promotion stays.
    let block = |from: &str, to: &str| {
        let (start, end) = (with_canary.find(from).unwrap(), with_canary.find(to).unwrap());
        with_canary[start..end].to_string()
    };
    let enrich = block("[[stages]]\nname = \"enrich\"", "[[stages]]\nname = \"categorize\"");
    let categorize = block("[[stages]]\nname = \"categorize\"", "[[stages]]\nname = \"totals\"");
    let reordered = with_canary.replacen(&format!("{enrich}{categorize}"), &format!("{categorize}{enrich}"), 1);
    assert_ne!(reordered, with_canary);
    work.write_pipeline(&reordered);
    let (code, report) = host.json("POST", "/api/reload");
    assert_eq!(code, 200, "{report}");
    let (_, live) = host.json("GET", "/api/pipeline");
    assert_eq!(live["generation"], 4, "{:#}", live["last_reload"]);
    let names: Vec<&str> = live["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["normalize", "categorize", "enrich", "totals"]);
    assert_eq!(stage(&live, "categorize")["sha256"], sha256(&v2));
    let outputs = round(&tansu, &host, 40, 50, &mut total).await;
    let reordered_outputs: Vec<&Consumed> = outputs.iter().filter(|r| r.headers["sluice.generation"] == "4").collect();
    assert!(!reordered_outputs.is_empty());
    for r in reordered_outputs {
        let lineage: Vec<&str> = r.headers["sluice.lineage"].split(',').map(|e| e.split('@').next().unwrap()).collect();
        assert_eq!(lineage, ["normalize", "categorize", "enrich", "totals"]);
        assert_eq!(categorize_version(r), sha256(&v2)[..12]);
    }
    work.write_pipeline(&with_canary);
    let (code, report) = host.json("POST", "/api/reload");
    assert_eq!(code, 200, "{report}");
    assert_eq!(host.json("GET", "/api/pipeline").1["generation"], 5);
    // The watcher's own reload of that write comes (and changes nothing)
    // before the signal's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.json("GET", "/api/pipeline").1["last_reload"]["trigger"] != "file-change" {
        assert!(Instant::now() < deadline, "the watcher did not reload the written file:\n{}", host.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGHUP reloads too; the promotion stands while the file still names
    // that canary.
    let hups = reloads(&host, "unchanged");
    assert!(std::process::Command::new("kill").args(["-HUP", &host.pid().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&host, "unchanged") == hups {
        assert!(Instant::now() < deadline, "SIGHUP did not reload:\n{}", host.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, live) = host.json("GET", "/api/pipeline");
    assert_eq!(live["last_reload"]["trigger"], "sighup");
    assert_eq!(stage(&live, "categorize")["sha256"], sha256(&v2));

    // Reload metrics and a clean stop.
    assert!(host.metric("sluice_pipeline_generation").unwrap() == 5.0);
    assert!(host.terminate().success());
}
