//! Shared test support: real peers (tansu, Redis, the sluice binary) and
//! helpers to drive them. Every peer is started on its own port and stopped
//! when dropped; Redis keys live under a per-test prefix that is deleted.
#![allow(dead_code)]

pub mod container;
pub mod inputs;
pub mod kafka;
pub mod model;
pub mod process;
pub mod slow;
pub mod workdir;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The Redis every machine runs.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The plugins and fixtures `make build` puts in plugins/dist, which the
/// tests run.
pub const BUILT_PLUGINS: [&str; 9] = [
    "normalize.wasm",
    "enrich.wasm",
    "categorize.wasm",
    "totals.wasm",
    "testguest.wasm",
    "wasi-command.wasm",
    "categorize-uncategorized.wasm",
    "vip.wasm",
    "suspicious.wasm",
];

/// The repository root. Fails, saying what to do, when the plugins the
/// tests run are not built.
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let missing: Vec<&str> =
        BUILT_PLUGINS.into_iter().filter(|p| !root.join("plugins/dist").join(p).is_file()).collect();
    assert!(
        missing.is_empty(),
        "plugins/dist lacks {}: the tests run the built plugins; run `make build` first (or `make test`, which \
         builds them)",
        missing.join(", ")
    );
    root
}

/// The shared example data (../shared/data beside the repository).
pub fn data_dir() -> PathBuf {
    let dir = repo_root().join("../shared/data");
    assert!(dir.is_dir(), "{} is missing: the shared data must sit beside the repository", dir.display());
    dir
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Redis key prefix unique to this test run; its keys are deleted on
/// creation and on drop.
pub struct RedisPrefix(pub String);

impl RedisPrefix {
    pub fn new(name: &str) -> Self {
        let prefix = format!("test:{name}:{}:", std::process::id());
        delete_prefix(&prefix);
        Self(prefix)
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        delete_prefix(&self.0);
    }
}

fn delete_prefix(prefix: &str) {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut con = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut con).unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query(&mut con).unwrap();
    }
}

/// A redis-server of the test's own, on its own port, keeping nothing on disk.
pub struct OwnRedis {
    child: std::process::Child,
    pub port: u16,
}

impl OwnRedis {
    pub fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start on {port}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends a signal (STOP, CONT) to the server.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Loads shared/data/lookups.json into Redis under `prefix`.
pub async fn load_shared_lookups(prefix: &str) {
    let text = std::fs::read_to_string(data_dir().join("lookups.json")).unwrap();
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut tables = sluice::tools::generator::Tables::new();
    for (table, rows) in raw.as_object().unwrap() {
        for (id, fields) in rows.as_object().unwrap() {
            for (field, value) in fields.as_object().unwrap() {
                let text = value.as_str().map_or_else(|| value.to_string(), str::to_string);
                tables.entry(table.clone()).or_default().entry(id.clone()).or_default().insert(field.clone(), text);
            }
        }
    }
    sluice::tools::generator::load_lookups(REDIS_URL, prefix, &tables).await.unwrap();
}

/// Every counter hash under `prefix` as {key without prefix: {field: value}}
/// (the offset fences and the set of replayed dead letters excluded).
pub async fn read_counters(prefix: &str) -> BTreeMap<String, BTreeMap<String, i64>> {
    read_counters_at(REDIS_URL, prefix).await
}

/// [`read_counters`] from the Redis at `url`.
pub async fn read_counters_at(url: &str, prefix: &str) -> BTreeMap<String, BTreeMap<String, i64>> {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut con).await.unwrap();
    let mut out = BTreeMap::new();
    let counter = |k: &String| {
        let name = &k[prefix.len()..];
        !name.starts_with("fence") && !name.starts_with("replayed:") && !name.starts_with("state:")
    };
    for key in keys.into_iter().filter(counter) {
        let fields: BTreeMap<String, i64> = redis::cmd("HGETALL").arg(&key).query_async(&mut con).await.unwrap();
        out.insert(key[prefix.len()..].to_string(), fields);
    }
    out
}

/// An environment lookup from pairs.
pub fn env_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The repository's pipeline.toml with `env` as its environment.
pub fn default_pipeline(env: &BTreeMap<String, String>) -> sluice::config::Pipeline {
    let text = std::fs::read_to_string(repo_root().join("pipeline.toml")).unwrap();
    let config = sluice::config::load_str(&text, |name| env.get(name).cloned()).unwrap();
    sluice::config::Pipeline { config, base_dir: repo_root() }
}

/// Records of the topic `in`, partition 0, at offsets 0, 1, ..., whose
/// values are `commands` (for the test guest, plugins/testguest).
pub fn command_records(commands: &[&str]) -> Vec<sluice::record::Record> {
    commands
        .iter()
        .enumerate()
        .map(|(i, c)| sluice::record::Record {
            key: None,
            value: Some(c.as_bytes().to_vec()),
            headers: Vec::new(),
            topic: "in".into(),
            partition: 0,
            offset: i as i64,
            timestamp_ms: None,
        })
        .collect()
}
