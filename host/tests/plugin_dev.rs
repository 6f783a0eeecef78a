//! Plugin authors' tools: `sluice test` on the example plugins' golden files
//! and on a whole pipeline, its diff on a wrong expectation, and
//! `sluice new` scaffolds in each language that build and pass their own
//! test out of the box.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use support::repo_root;

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(repo_root())
        .env("SLUICE_LOG", "warn")
        .env_remove("SLUICE_REDIS_PREFIX")
        .env_remove("SLUICE_PLUGIN_DIR")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Each example plugin's `test/` folder: input, expected results, and the
/// config and lookups it needs.
#[test]
fn example_plugins_pass_their_golden_tests() {
    let plugins = [
        ("normalize", "normalize.wasm"),
        ("enrich", "enrich.wasm"),
        ("categorize", "categorize.wasm"),
        ("totals", "totals.wasm"),
        ("vip-py", "vip.wasm"),
        ("suspicious-js", "suspicious.wasm"),
    ];
    for (dir, wasm) in plugins {
        let test = format!("plugins/{dir}/test");
        let plugin = format!("plugins/dist/{wasm}");
        let input = format!("{test}/input.jsonl");
        let expect = format!("{test}/expected.jsonl");
        let mut args = vec!["test", &plugin, "--input", &input, "--expect", &expect];
        let (config, lookups) = (format!("{test}/config.toml"), format!("{test}/lookups.json"));
        if repo_root().join(&config).exists() {
            args.extend(["--config", &config]);
        }
        if repo_root().join(&lookups).exists() {
            args.extend(["--lookups", &lookups]);
        }
        let out = sluice(&args);
        let text = text(&out);
        assert!(out.status.success() && text.contains("as expected"), "{dir}: {text}");
        let expected = std::fs::read_to_string(repo_root().join(&expect)).unwrap();
        assert!(expected.lines().count() >= 7, "{dir}: a real golden file");
    }
}

/// The whole default pipeline on the shared examples, lookups from the
/// shared tables: outputs, dead letters and Redis effects per record.
#[test]
fn the_default_chain_passes_its_golden_test() {
    let data = support::data_dir();
    let dir = TempDir::new("chain-golden");
    let input = dir.0.join("input.jsonl");
    let mut all = String::new();
    for f in ["orders-webshop.jsonl", "orders-grocery.jsonl", "orders-delivery.jsonl", "invalid.jsonl"] {
        all.push_str(&std::fs::read_to_string(data.join(f)).unwrap());
    }
    std::fs::write(&input, all).unwrap();
    let lookups = data.join("lookups.json");
    let out = sluice(&[
        "test",
        "--chain",
        "pipeline.toml",
        "--input",
        input.to_str().unwrap(),
        "--lookups",
        lookups.to_str().unwrap(),
        "--expect",
        "host/tests/golden/chain-results.jsonl",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ok: 13 records"), "{}", text(&out));
}

#[test]
fn a_wrong_expectation_fails_with_a_readable_diff() {
    let dir = TempDir::new("expect-diff");
    let golden = std::fs::read_to_string(repo_root().join("plugins/categorize/test/expected.jsonl")).unwrap();
    assert!(golden.contains(r#""category":"Fruit""#));
    let wrong = golden.replacen(r#""category":"Fruit""#, r#""category":"Vegetables""#, 1);
    let expect = dir.0.join("expected.jsonl");
    std::fs::write(&expect, &wrong).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["test", "plugins/dist/categorize.wasm", "--input", "plugins/categorize/test/input.jsonl"];
        args.extend(["--config", "plugins/categorize/test/config.toml", "--expect", expect.to_str().unwrap()]);
        args.extend(extra);
        sluice(&args)
    };
    let out = run(&[]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let minus: Vec<&str> = shown.lines().filter(|l| l.starts_with("- ")).collect();
    let plus: Vec<&str> = shown.lines().filter(|l| l.starts_with("+ ")).collect();
    assert_eq!(minus.len(), 1, "{shown}");
    assert_eq!(plus.len(), 1, "{shown}");
    assert!(minus[0].contains("Vegetables") && plus[0].contains("Fruit"), "{shown}");
    assert!(shown.contains(r#"^ differs at: value.items[0].category: expected "Vegetables", got "Fruit""#), "{shown}");
    assert!(shown.contains("FAILED: 2 result lines differ"), "{shown}");

    // A missing result line is shown as such.
    let short: String = golden.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&expect, short).unwrap();
    let out = run(&[]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert_eq!(shown.lines().filter(|l| l.starts_with("+ ")).count(), 1, "{shown}");
    assert_eq!(shown.lines().filter(|l| l.starts_with("- ")).count(), 0, "{shown}");

    // --bless writes what the plugin does, and then it passes.
    let out = run(&["--bless"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&expect).unwrap(), golden);
    assert!(run(&[]).status.success());
}

/// `--records`: keys, headers and values that are not JSON in the input.
#[test]
fn records_with_keys_and_headers_go_through_a_plugin() {
    let dir = TempDir::new("records");
    let input = dir.0.join("records.jsonl");
    let lines = [
        r#"{"key":"o-1","headers":{"trace":"abc"},"value":{"order_id":"o-1","total_cents":25000}}"#,
        r#"{"key":"o-2","value":{"order_id":"o-2","total_cents":999},"timestamp_ms":1700000000000}"#,
        r#"{"value_text":"{not json","headers":{"trace":"def"}}"#,
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = sluice(&["test", "plugins/dist/vip.wasm", "--input", input.to_str().unwrap(), "--records", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let results: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let expected = [
        serde_json::json!({"record": 1, "to": "next", "key": "o-1", "headers": {"trace": "abc"},
            "value": {"order_id": "o-1", "total_cents": 25000}}),
        serde_json::json!({"record": 1, "to": "vip", "key": "o-1", "headers": {"trace": "abc", "sluice.vip.total": "250.00"},
            "value": {"order_id": "o-1", "total_cents": 25000}}),
        serde_json::json!({"record": 2, "to": "next", "key": "o-2", "value": {"order_id": "o-2", "total_cents": 999}}),
    ];
    assert_eq!(results[..3], expected, "{results:?}");
    assert_eq!(results[3]["record"], 3);
    assert_eq!(results[3]["dead_letter"], "invalid_json");
    assert_eq!(results.len(), 4);

    std::fs::write(&input, r#"{"value":1,"value_text":"1"}"#).unwrap();
    let out = sluice(&["test", "plugins/dist/vip.wasm", "--input", input.to_str().unwrap(), "--records"]);
    assert!(
        !out.status.success()
            && text(&out).contains(":1: give exactly one of `value` (JSON), `value_text` and `value_base64`")
    );
}

#[test]
fn bad_invocations_name_what_is_wrong() {
    let cases: [(&[&str], &str); 7] = [
        (&["test", "plugins/dist/normalize.wasm", "--input", "nope.jsonl"], "cannot read nope.jsonl"),
        (&["test", "plugins/dist/nope.wasm", "--input", "plugins/normalize/test/input.jsonl"], "nope.wasm"),
        (
            &["test", "plugins/dist/totals.wasm", "--input", "plugins/totals/test/input.jsonl", "--config", "colour=1"],
            "unknown field `colour`",
        ),
        (
            &["test", "plugins/dist/normalize.wasm", "--input", "plugins/normalize/test/input.jsonl", "--config", "x"],
            "--config x: neither a file nor key=value",
        ),
        (&["test", "--input", "plugins/normalize/test/input.jsonl"], "required"),
        (&["new", "Bad_Name", "--lang", "rust"], "plugin name `Bad_Name`"),
        (
            &["new", "tagger", "--lang", "rust", "--dir", "target/no-sdk", "--sdk", "nope"],
            "no sluice-sdk crate at nope",
        ),
    ];
    for (args, message) in cases {
        let out = sluice(args);
        assert!(!out.status.success() && text(&out).contains(message), "{args:?}: {}", text(&out));
    }
    let dir = TempDir::new("new-exists");
    std::fs::write(dir.0.join("file"), "x").unwrap();
    let out = sluice(&["new", "taken", "--lang", "js", "--dir", dir.0.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("already exists and is not empty"), "{}", text(&out));
}

/// `sluice new NAME --lang LANG`, then `make test` in the project (which
/// builds it and runs `sluice test` on its own test files).
fn scaffold_builds_and_passes_its_test(lang: &str, dir: &TempDir) -> PathBuf {
    let project = dir.0.join("order-tagger");
    let out = sluice(&["new", "order-tagger", "--lang", lang, "--dir", project.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(project.join("README.md").is_file() && project.join("test/expected.jsonl").is_file());
    let root = repo_root();
    let out = Command::new("make")
        .arg("test")
        .current_dir(&project)
        .env("SLUICE", env!("CARGO_BIN_EXE_sluice"))
        // The project installs its own toolchain (componentize-py in .venv,
        // componentize-js with npm); Rust only shares a build cache.
        .env_remove("COMPONENTIZE_PY")
        .env_remove("COMPONENTIZE_JS")
        .env("CARGO_TARGET_DIR", root.join("target/scaffold"))
        .output()
        .unwrap();
    let shown = text(&out);
    assert!(out.status.success(), "{lang}: {shown}");
    assert!(shown.contains("ok: 4 records, 4 result lines as expected"), "{lang}: {shown}");
    project
}

/// The Rust project carries its own copy of the SDK, so it builds with
/// nothing but crates.io, wherever sluice is installed.
#[test]
fn new_rust_plugin_builds_and_passes_its_test() {
    let dir = TempDir::new("new-rust");
    let project = scaffold_builds_and_passes_its_test("rust", &dir);
    assert!(project.join("sluice-sdk/wit/plugin.wit").is_file());
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(manifest.contains(r#"sluice-sdk = { path = "sluice-sdk" }"#), "{manifest}");
}

#[test]
fn new_js_plugin_builds_and_passes_its_test() {
    scaffold_builds_and_passes_its_test("js", &TempDir::new("new-js"));
}

/// And when the Python stage raises, its dead letter carries the traceback.
#[test]
fn new_python_plugin_builds_and_passes_its_test_and_its_exceptions_are_explained() {
    let dir = TempDir::new("new-python");
    let project = scaffold_builds_and_passes_its_test("python", &dir);
    let app = project.join("app.py");
    let source = std::fs::read_to_string(&app).unwrap();
    assert!(source.contains(r#"value["tagged_by"] = tag"#));
    std::fs::write(&app, source.replace(r#"value["tagged_by"] = tag"#, r#"value["tagged_by"] = value["owner"]"#))
        .unwrap();
    let out = Command::new("make").arg("build").current_dir(&project).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let wasm = project.join("order-tagger.wasm");
    let input = project.join("test/input.jsonl");
    let out = sluice(&["test", wasm.to_str().unwrap(), "--input", input.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let results: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = &results[0];
    assert_eq!(first["dead_letter"], "plugin_trap", "{first}");
    let message = first["message"].as_str().unwrap();
    assert!(message.contains("the plugin wrote: ") && message.contains("KeyError: 'owner'"), "{message}");
    // The other records are still judged on their own.
    assert_eq!(results[2]["dead_letter"], "invalid_json", "{results:?}");

    // Keyed state from Python: each order counts how often its id was seen,
    // and a refused write raises with the host's reason.
    let counting = source
        .replace("from wit_world.imports import host\n", "from wit_world.imports import host, state\n")
        .replace("def tag_record(message: Message)", "def tag_record(at: int, message: Message)")
        .replace("[tag_record(message) for message in batch]", "[tag_record(at, m) for at, m in enumerate(batch)]")
        .replace(
            r#"    value["tagged_by"] = tag
"#,
            r#"    value["tagged_by"] = tag
    key = str(value.get("order_id"))
    [seen] = state.get([state.Key(at=at, key=key)])
    value["seen"] = int(seen or b"0") + 1
    try:
        state.set(at, key, str(value["seen"]).encode(), None)
    except Err as e:
        return reject("state_refused", e.value)
"#,
        );
    assert_ne!(counting, source);
    std::fs::write(&app, counting).unwrap();
    let out = Command::new("make").arg("build").current_dir(&project).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let long = "x".repeat(1100);
    let orders = ["o-1", "o-1", "o-2", &long, "o-1"].map(|id| format!("{{\"order_id\":\"{id}\"}}\n")).concat();
    std::fs::write(&input, orders).unwrap();
    let out = sluice(&["test", wasm.to_str().unwrap(), "--input", input.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let results: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seen: Vec<_> = results.iter().map(|r| r["value"]["seen"].as_i64()).collect();
    assert_eq!(seen, [Some(1), Some(2), Some(1), None, Some(3)], "{results:?}");
    assert_eq!(results[3]["dead_letter"], "state_refused", "{results:?}");
    let message = results[3]["message"].as_str().unwrap();
    assert!(message.contains("a key of 1100 bytes is longer than 1024"), "{message}");
}
