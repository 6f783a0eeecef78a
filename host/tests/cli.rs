//! The command line's answers to bad input: each names what is wrong and
//! where.

mod support;

use std::path::Path;
use std::process::Command;

fn validate(pipeline: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice")).arg("validate").arg(pipeline).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A copy of the default pipeline in `dir` whose `normalize` plugin is `plugin`
/// and whose categorize config gets `extra`.
fn pipeline_with(dir: &Path, plugin: &str, categorize_rules: &str) -> std::path::PathBuf {
    let root = support::repo_root();
    let text = std::fs::read_to_string(root.join("pipeline.toml"))
        .unwrap()
        .replace("${SLUICE_PLUGIN_DIR:-plugins/dist}/", &format!("{}/plugins/dist/", root.display()))
        .replace(&format!("\"{}/plugins/dist/normalize.wasm\"", root.display()), &format!("\"{plugin}\""))
        .replace("default = \"Other\"", categorize_rules);
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn validate_accepts_the_default_pipeline() {
    let (ok, out) = validate(&support::repo_root().join("pipeline.toml"));
    assert!(ok, "{out}");
    assert!(out.contains("ok, 4 stages"), "{out}");
}

#[test]
fn a_missing_plugin_is_named() {
    let dir = temp_dir("missing");
    let (ok, out) = validate(&pipeline_with(&dir, "nowhere/normalize.wasm", "default = \"Other\""));
    assert!(!ok);
    assert!(out.contains("cannot read plugin") && out.contains("nowhere/normalize.wasm"), "{out}");
}

#[test]
fn a_file_that_is_not_a_component_is_named() {
    let dir = temp_dir("not-wasm");
    std::fs::write(dir.join("text.wasm"), "hello").unwrap();
    let (ok, out) = validate(&pipeline_with(&dir, "text.wasm", "default = \"Other\""));
    assert!(!ok);
    assert!(out.contains("text.wasm is not a WebAssembly file"), "{out}");

    std::fs::write(dir.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let (ok, out) = validate(&pipeline_with(&dir, "core.wasm", "default = \"Other\""));
    assert!(!ok);
    assert!(out.contains("core.wasm is a core WebAssembly module, not a component"), "{out}");
}

#[test]
fn a_plugin_init_error_names_the_stage() {
    let dir = temp_dir("init");
    let normalize = support::repo_root().join("plugins/dist/normalize.wasm");
    let (ok, out) = validate(&pipeline_with(&dir, normalize.to_str().unwrap(), "colour = \"blue\""));
    assert!(!ok);
    assert!(
        out.contains("stage `categorize`: the plugin's init refused its config")
            && out.contains("unknown field `colour`"),
        "{out}"
    );
}

#[test]
fn a_bad_pipeline_names_file_line_and_key() {
    let dir = temp_dir("bad-config");
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, "[kafka]\nbrokers = \"b\"\ngroup = \"g\"\ncolour = 1\n").unwrap();
    let (ok, out) = validate(&path);
    assert!(!ok);
    assert!(
        out.contains(&format!("{}: line 4, column 1: `kafka.colour`: unknown field `colour`", path.display())),
        "{out}"
    );
}

#[test]
fn bench_runs_the_default_chain_and_accounts_for_every_record() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("bench")
        .arg(support::repo_root().join("pipeline.toml"))
        .args(["--count", "3000", "--batch", "1", "--batch", "256"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("batch")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for line in lines {
        let counts: Vec<u64> =
            line.split(['(', ',', ')']).filter_map(|part| part.split_whitespace().next()?.parse().ok()).collect();
        assert_eq!(counts.iter().sum::<u64>(), 3000, "out + dead letters + filtered = all: {line}");
    }
    for stage in ["normalize", "enrich", "categorize", "totals"] {
        assert!(text.contains(stage), "{text}");
    }
}

/// Runs `sluice run` on a pseudo-terminal (util-linux `script`) for a few
/// seconds, with no broker to reach: what it printed.
fn run_on_terminal(extra_args: &str) -> String {
    let root = support::repo_root();
    let command = format!(
        "KAFKA_BROKERS=127.0.0.1:1 SLUICE_HTTP_ADDR=127.0.0.1:{} SLUICE_PLUGIN_DIR={} {} {extra_args} run {}",
        support::free_port(),
        root.join("plugins/dist").display(),
        env!("CARGO_BIN_EXE_sluice"),
        root.join("pipeline.toml").display()
    );
    let out = Command::new("timeout").args(["9", "script", "-qfec", &command, "/dev/null"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn run_prints_a_status_line_on_a_terminal_and_json_logs_on_request() {
    let text = run_on_terminal("");
    let status =
        text.lines().find(|l| l.starts_with("sluice | in ")).unwrap_or_else(|| panic!("no status line:\n{text}"));
    assert!(status.contains("/s | out ") && status.contains("| lag 0 | dead letters 0 | generation 1 |"), "{status}");
    assert!(status.trim_end().ends_with("NOT READY"), "no broker, not ready: {status}");

    let json = run_on_terminal("--log-format json");
    let lines: Vec<&str> = json.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 3, "{json}");
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("`{line}`: {e}"));
        assert!(value["level"].is_string() && value["fields"].is_object(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("admin API listening")), "{json}");
}
