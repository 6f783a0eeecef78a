//! `sluice test`: a plugin (or a whole pipeline's chain) run on records from
//! a file, in the host's own engine with the same limits and linker as
//! `sluice run`, with lookups served from memory and nothing written to
//! Kafka or Redis. Prints what each record became; with `--expect`,
//! compares that with a file and shows the difference.
//!
//! The results, one JSON object per line, in input order (`--json` prints
//! them, `--expect` compares with them, `--bless` writes them):
//!
//! ```text
//! {"record":1,"to":"next","key":"o1","value":{...},"headers":{"x":"1"}}
//! {"record":1,"table":"orders","key":"o1","value":{...}}
//! {"record":1,"effect":"HINCRBY","key":"sluice:user:u1","field":"orders","value":1}
//! {"record":2,"dead_letter":"invalid_json","stage":"vip","message":"..."}
//! {"record":3,"filtered":true}
//! ```
//!
//! With `--records`, each input line is a whole record (key, value,
//! headers and coordinates) in the format `sluice capture` writes: see
//! [`crate::tools::records`].
//!
//! `to` is the route name for a single plugin (`next` without a route) and
//! the topic with `--chain`. `value` is the value as JSON, or `value_text`
//! when it is not JSON. The host's `sluice.lineage` and `sluice.generation`
//! headers are left out, since they change with every build.

use crate::config::{self, Pipeline};
use crate::engine::Engine;
use crate::lookup::InMemory;
use crate::pipeline::{Chain, GENERATION_HEADER, LINEAGE_HEADER};
use crate::record::{Effect, Header, Record};
use crate::tools::generator::{self, Tables};
use crate::tools::records::RecordLine;
use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What to test.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["plugin", "chain"]))]
pub struct TestArgs {
    /// The plugin component (.wasm) to test on its own.
    pub plugin: Option<PathBuf>,
    /// Test every stage of this pipeline file instead, in order, with its
    /// routes and limits.
    #[arg(long, conflicts_with = "plugin")]
    pub chain: Option<PathBuf>,
    /// Input records: one record value per line (blank lines are skipped).
    #[arg(long)]
    pub input: PathBuf,
    /// Each input line is a record object instead of a value, as `sluice
    /// capture` writes them: `{"key": "k", "value": {...} or "value_text":
    /// "...", "headers": {"h": "v"}, "timestamp_ms": 0}` (also `topic`,
    /// `partition`, `offset`, `key_base64`, `value_base64`).
    #[arg(long)]
    pub records: bool,
    /// The plugin's config: a JSON or TOML file, or `key=value` (the value
    /// is read as JSON if it parses, else as a string). Repeatable.
    #[arg(long = "config", value_name = "FILE|KEY=VALUE", conflicts_with = "chain")]
    pub config: Vec<String>,
    /// Lookup tables in memory, as JSON: `{"table": {"key": {"field": value}}}`.
    #[arg(long)]
    pub lookups: Option<PathBuf>,
    /// Expected results (JSON lines, as `--json` prints them): show the
    /// difference and fail if the results differ.
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// With `--expect`: write the results to that file instead of comparing.
    #[arg(long, requires = "expect")]
    pub bless: bool,
    /// Print the results as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Records per call to the plugin.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Memory limit of a single plugin, in MiB.
    #[arg(long, conflicts_with = "chain")]
    pub memory_mib: Option<u32>,
    /// Time limit of one call of a single plugin, in milliseconds.
    #[arg(long, conflicts_with = "chain")]
    pub timeout_ms: Option<u64>,
}

/// Runs the test; `Ok(false)` when the results differ from `--expect`.
pub fn run(args: TestArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let lookups = match &args.lookups {
        Some(path) => generator::read_tables(path)?,
        None => Tables::new(),
    };
    let (pipeline, single) = match (&args.chain, &args.plugin) {
        (Some(path), _) => (config::load_file(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?, false),
        (None, Some(plugin)) => (single_pipeline(plugin, &args, &lookups)?, true),
        (None, None) => bail!("name a plugin, or a pipeline with --chain"),
    };
    let records = read_input(&args.input, args.records)?;
    let engine = Engine::new()?;
    let mut chain =
        Chain::build(&engine, &pipeline, Arc::new(InMemory(lookups)), crate::state::StateStore::in_memory())?;
    if single {
        chain.open_routes();
    }
    let (mut results, mut raw) = (Vec::new(), Vec::new());
    for (n, chunk) in records.chunks(args.batch).enumerate() {
        let result = chain.process(chunk).map_err(|e| anyhow::anyhow!("lookup failed: {e}"))?;
        for (line, value) in describe(n * args.batch, chunk.len(), &result) {
            results.push(line);
            raw.push(value);
        }
    }
    let lines: Vec<String> = results.iter().map(Value::to_string).collect();

    let Some(expect) = &args.expect else {
        print_results(&results, &raw, args.json);
        return Ok(true);
    };
    if args.bless {
        std::fs::write(expect, lines.iter().map(|l| format!("{l}\n")).collect::<String>())
            .with_context(|| format!("cannot write {}", expect.display()))?;
        println!("{}: wrote {} result lines", expect.display(), lines.len());
        return Ok(true);
    }
    let text = std::fs::read_to_string(expect).with_context(|| format!("cannot read {}", expect.display()))?;
    let mut expected = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: not a JSON result line: {e}", expect.display(), i + 1))?;
        expected.push(value);
    }
    if expected == results {
        if args.json {
            print_results(&results, &raw, true);
        }
        println!("ok: {} records, {} result lines as expected in {}", records.len(), results.len(), expect.display());
        return Ok(true);
    }
    let expected_lines: Vec<String> = expected.iter().map(Value::to_string).collect();
    let differing = print_diff(&expected_lines, &lines);
    println!(
        "FAILED: {differing} result lines differ from {} (- expected, + actual; --bless rewrites it)",
        expect.display()
    );
    Ok(false)
}

/// The one-stage pipeline of a plugin tested on its own.
fn single_pipeline(plugin: &Path, args: &TestArgs, lookups: &Tables) -> anyhow::Result<Pipeline> {
    let name = plugin.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
    let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let mut text = String::from(
        "[kafka]\nbrokers = \"none\"\ngroup = \"sluice-test\"\n[redis]\nurl = \"redis://none\"\n\
         [source]\ntopics = [\"input\"]\n[output]\ntopic = \"next\"\n[dead_letter]\ntopic = \"dead-letters\"\n",
    );
    for table in lookups.keys() {
        text.push_str(&format!("[lookups.{}]\nkey_prefix = {}\n", toml_key(table), toml_key(&format!("{table}:"))));
    }
    text.push_str(&format!("[[stages]]\nname = \"{name}\"\nplugin = \"plugin.wasm\"\n"));
    let mut pipeline_config = config::load_str(&text, |_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stage = &mut pipeline_config.stages[0];
    stage.plugin = std::path::absolute(plugin)?;
    stage.lookups = lookups.keys().map(|t| toml::Spanned::new(0..0, t.clone())).collect();
    stage.config = stage_config(&args.config)?;
    // Nothing is written: show every effect, except those on keys no stage
    // may write (the fence, the lookup tables), which fail as in a pipeline.
    stage.writes = vec![toml::Spanned::new(0..0, String::new())];
    if let Some(mib) = args.memory_mib {
        stage.limits.memory_mib = std::num::NonZeroU32::new(mib).context("--memory-mib must be at least 1")?;
    }
    if let Some(ms) = args.timeout_ms {
        stage.limits.timeout_ms = std::num::NonZeroU64::new(ms).context("--timeout-ms must be at least 1")?;
    }
    Ok(Pipeline { config: pipeline_config, base_dir: PathBuf::new() })
}

fn toml_key(key: &str) -> String {
    serde_json::to_string(key).expect("a string serializes")
}

/// The stage config from `--config` files and `key=value` pairs, in order.
fn stage_config(items: &[String]) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    for item in items {
        let path = Path::new(item);
        if path.is_file() {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {item}"))?;
            let parsed: toml::Table = if item.ends_with(".json") {
                let json: Value = serde_json::from_str(&text).with_context(|| format!("{item}: not JSON"))?;
                toml::Table::try_from(json).with_context(|| format!("{item}: not a config object"))?
            } else {
                text.parse().with_context(|| format!("{item}: not TOML"))?
            };
            table.extend(parsed);
        } else if let Some((key, value)) = item.split_once('=') {
            let json = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
            let value = toml::Value::try_from(json).with_context(|| format!("--config {item}: not a TOML value"))?;
            table.insert(key.trim().to_string(), value);
        } else {
            bail!("--config {item}: neither a file nor key=value");
        }
    }
    Ok(table)
}

/// One record per non-blank line of `path`: the value itself, or with
/// `records`, a line of a record file ([`RecordLine`]).
fn read_input(path: &Path, records: bool) -> anyhow::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let position = out.len() as i64;
        let record = if records {
            let at = || format!("{}:{}", path.display(), i + 1);
            let line: RecordLine =
                serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{}: not a record object: {e}", at()))?;
            line.into_record(position).map_err(|e| anyhow::anyhow!("{}: {e:#}", at()))?
        } else {
            Record {
                key: None,
                value: Some(line.as_bytes().to_vec()),
                headers: Vec::new(),
                topic: "input".into(),
                partition: 0,
                offset: position,
                timestamp_ms: None,
            }
        };
        out.push(record);
    }
    anyhow::ensure!(!out.is_empty(), "{}: no records (one record per line)", path.display());
    Ok(out)
}

/// The result lines of a batch of `len` records whose first is record
/// `first + 1`, each with the output's value as emitted, if it is one.
fn describe(first: usize, len: usize, result: &crate::pipeline::BatchResult) -> Vec<(Value, Option<String>)> {
    let mut per_record: Vec<Vec<(Value, Option<String>)>> = vec![Vec::new(); len];
    for (origin, out) in result.output_origins.iter().zip(&result.outputs) {
        let mut line = Map::new();
        line.insert("record".into(), json!(first + origin + 1));
        line.insert("to".into(), json!(&*out.topic));
        if let Some(key) = &out.key {
            line.insert("key".into(), json!(String::from_utf8_lossy(key)));
        }
        match serde_json::from_slice::<Value>(&out.value) {
            Ok(value) => line.insert("value".into(), value),
            Err(_) => line.insert("value_text".into(), json!(String::from_utf8_lossy(&out.value))),
        };
        let headers = headers(&out.headers);
        if !headers.is_empty() {
            line.insert("headers".into(), Value::Object(headers));
        }
        per_record[*origin].push((Value::Object(line), Some(String::from_utf8_lossy(&out.value).into_owned())));
    }
    for (origin, table, row) in result.rows.iter().flat_map(|(o, _, row)| row.tables.iter().map(move |t| (o, t, row))) {
        let mut line = Map::new();
        line.insert("record".into(), json!(first + origin + 1));
        line.insert("table".into(), json!(&**table));
        if let Some(key) = &row.key {
            line.insert("key".into(), json!(String::from_utf8_lossy(key)));
        }
        match serde_json::from_slice::<Value>(&row.value) {
            Ok(value) => line.insert("value".into(), value),
            Err(_) => line.insert("value_text".into(), json!(String::from_utf8_lossy(&row.value))),
        };
        per_record[*origin].push((Value::Object(line), None));
    }
    for (origin, effect) in &result.effects {
        let record = first + origin + 1;
        let line = match effect {
            Effect::HashIncr { key, field, delta } => {
                json!({"record": record, "effect": "HINCRBY", "key": key, "field": field, "value": delta})
            }
            Effect::HashSet { key, field, value } => {
                json!({"record": record, "effect": "HSET", "key": key, "field": field, "value": value})
            }
        };
        per_record[*origin].push((line, None));
    }
    for dead in &result.dead_letters {
        let message = dead.record.headers.iter().find(|h| h.name == "sluice.error.message");
        let message = message.map(|h| String::from_utf8_lossy(&h.value).into_owned()).unwrap_or_default();
        let line = json!({
            "record": first + dead.origin + 1, "dead_letter": dead.reason.as_str(), "stage": &*dead.stage, "message": message,
        });
        per_record[dead.origin].push((line, None));
    }
    for (origin, lines) in per_record.iter_mut().enumerate() {
        if lines.is_empty() {
            lines.push((json!({"record": first + origin + 1, "filtered": true}), None));
        }
    }
    per_record.into_iter().flatten().collect()
}

fn headers(headers: &[Header]) -> Map<String, Value> {
    headers
        .iter()
        .filter(|h| h.name != LINEAGE_HEADER && h.name != GENERATION_HEADER)
        .map(|h| (h.name.clone(), json!(String::from_utf8_lossy(&h.value))))
        .collect()
}

fn print_results(results: &[Value], raw: &[Option<String>], as_json: bool) {
    if as_json {
        for r in results {
            println!("{r}");
        }
        return;
    }
    let (mut outputs, mut dead, mut filtered, mut effects) = (0, 0, 0, 0);
    for (r, raw) in results.iter().zip(raw) {
        let n = &r["record"];
        if let Some(reason) = r.get("dead_letter") {
            dead += 1;
            println!(
                "#{n} DEAD LETTER {} from stage {}: {}",
                reason.as_str().unwrap_or(""),
                r["stage"].as_str().unwrap_or(""),
                r["message"].as_str().unwrap_or("")
            );
        } else if r.get("filtered").is_some() {
            filtered += 1;
            println!("#{n} filtered");
        } else if let Some(table) = r.get("table") {
            outputs += 1;
            let key = r.get("key").and_then(Value::as_str).map(|k| format!("  key={k}")).unwrap_or_default();
            println!("#{n} -> table {}{key}", table.as_str().unwrap_or(""));
            println!("    {}", r.get("value").or(r.get("value_text")).unwrap_or(&Value::Null));
        } else if let Some(kind) = r.get("effect") {
            effects += 1;
            println!(
                "#{n}   redis {} {} {} {}",
                kind.as_str().unwrap_or(""),
                r["key"].as_str().unwrap_or(""),
                r["field"].as_str().unwrap_or(""),
                r["value"]
            );
        } else {
            outputs += 1;
            let mut line = format!("#{n} -> {}", r["to"].as_str().unwrap_or(""));
            if let Some(key) = r.get("key").and_then(Value::as_str) {
                line.push_str(&format!("  key={key}"));
            }
            if let Some(headers) = r.get("headers").and_then(Value::as_object) {
                for (name, value) in headers {
                    line.push_str(&format!("  {name}: {}", value.as_str().unwrap_or("")));
                }
            }
            println!("{line}");
            println!("    {}", raw.as_deref().unwrap_or(""));
        }
    }
    let records = results.iter().filter_map(|r| r["record"].as_u64()).max().unwrap_or(0);
    println!("{records} records: {outputs} outputs, {dead} dead letters, {filtered} filtered, {effects} Redis effects");
}

/// Prints a line diff of `expected` and `actual` (longest common
/// subsequence, with two lines of context); returns how many lines differ.
fn print_diff(expected: &[String], actual: &[String]) -> usize {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            ops.push((' ', &expected[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', &expected[i]));
            i += 1;
        } else {
            ops.push(('+', &actual[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= 2);
    // In a run of changed lines, the n-th added line is paired with the
    // n-th removed one to show where they differ.
    let mut partner: Vec<Option<usize>> = vec![None; ops.len()];
    let mut k = 0;
    while k < ops.len() {
        let end = (k..ops.len()).find(|&e| ops[e].0 == ' ').unwrap_or(ops.len());
        let minus: Vec<usize> = (k..end).filter(|&e| ops[e].0 == '-').collect();
        let plus = (k..end).filter(|&e| ops[e].0 == '+');
        for (m, p) in minus.into_iter().zip(plus) {
            partner[p] = Some(m);
        }
        k = end + 1;
    }
    let parse = |l: &str| serde_json::from_str::<Value>(l).unwrap_or(Value::Null);
    let mut skipped = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if near(k) {
            println!("{op} {line}");
            skipped = false;
        } else if !skipped {
            println!("  ...");
            skipped = true;
        }
        if let Some(m) = partner[k]
            && let Some((path, want, got)) = first_difference(&parse(ops[m].1), &parse(line), String::new())
        {
            println!("  ^ differs at: {path}: expected {}, got {}", short(&want), short(&got));
        }
    }
    changed.len()
}

/// The path of the first place where `a` and `b` differ, e.g.
/// `value.items[1].category`, with what each has there (`null` if absent).
fn first_difference(a: &Value, b: &Value, path: String) -> Option<(String, Value, Value)> {
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match (a, b) {
        _ if a == b => None,
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, join(k)),
                (p, q) if p != q => {
                    Some((join(k), p.cloned().unwrap_or(Value::Null), q.cloned().unwrap_or(Value::Null)))
                }
                _ => None,
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            let index = (0..x.len().max(y.len())).find(|&i| x.get(i) != y.get(i))?;
            match (x.get(index), y.get(index)) {
                (Some(p), Some(q)) => first_difference(p, q, format!("{path}[{index}]")),
                (p, q) => Some((
                    format!("{path}[{index}]"),
                    p.cloned().unwrap_or(Value::Null),
                    q.cloned().unwrap_or(Value::Null),
                )),
            }
        }
        _ => Some((if path.is_empty() { "the whole line".to_string() } else { path }, a.clone(), b.clone())),
    }
}

/// A JSON value in at most 80 characters.
fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}
