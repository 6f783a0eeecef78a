//! The pipeline.toml model: parsing, `${VAR}` interpolation and validation.
//!
//! Parsing fails closed: unknown keys, wrong types and bad values are errors
//! that name the key and its line. [`PipelineConfig::validate`] then checks
//! what spans several keys (stage names, lookup references, routes).

mod http_source;
mod interpolate;
pub mod redact;
mod stage;
mod table;

pub use http_source::{CursorConfig, HttpSourceConfig};
pub use interpolate::interpolate;
pub use stage::{CanaryConfig, FailurePolicy, Limits, StageConfig};
pub use table::{ColumnConfig, OutputConfig, TYPES, TableConfig};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A pipeline.toml error, with the line and column it is about when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line and column in the file.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn at(text: &str, offset: usize, message: String) -> Self {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self { position: Some((line, column)), message }
    }

    fn spanned<T>(text: &str, value: &Spanned<T>, message: String) -> Self {
        Self::at(text, value.span().start, message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "line {line}, column {column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A whole pipeline: where records come from, the stages they go through,
/// and where results go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Kafka connection and consumer group.
    pub kafka: KafkaConfig,
    /// The Redis server that serves lookups and receives effects.
    pub redis: RedisConfig,
    /// The input topics and how records are batched.
    pub source: SourceConfig,
    /// Delivery guarantee. Default `at-least-once`.
    #[serde(default)]
    pub delivery: Delivery,
    /// How often offsets are committed, in milliseconds. At-least-once: the
    /// offsets of the batches confirmed since the last commit. Exactly-once:
    /// how long a Kafka transaction stays open to take more batches before
    /// it commits. Default 100: one commit per interval rather than per
    /// batch, for at most that much more latency (exactly-once) or that much
    /// more to read again after a crash (at-least-once).
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: NonZeroU64,
    /// Where the records emitted by the last stage go.
    pub output: OutputConfig,
    /// Named outputs a stage may route records to, by route name.
    #[serde(default)]
    pub routes: BTreeMap<String, OutputConfig>,
    /// PostgreSQL tables outputs may be upserted into, by name.
    #[serde(default)]
    pub tables: BTreeMap<String, TableConfig>,
    /// HTTP JSON APIs polled into topics, by name.
    #[serde(default)]
    pub http_sources: BTreeMap<String, HttpSourceConfig>,
    /// Where records that cannot be processed go, with their reason.
    pub dead_letter: TopicConfig,
    /// Lookup tables served from Redis hashes, by table name.
    #[serde(default)]
    pub lookups: BTreeMap<String, LookupConfig>,
    /// The stages, in order. At least one.
    pub stages: Vec<StageConfig>,
    /// The admin HTTP server.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The sales report (`GET /api/report`, `sluice report`).
    #[serde(default)]
    pub report: ReportConfig,
}

/// Where the sales report reads its counters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Prefix of the counter hashes (the `totals` stage's `prefix`).
    /// Default `sluice:`.
    #[serde(default = "default_counters_prefix")]
    pub counters_prefix: String,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self { counters_prefix: default_counters_prefix() }
    }
}

fn default_counters_prefix() -> String {
    "sluice:".into()
}

/// Consumer properties the host sets itself and `kafka.consumer` may not
/// override, with why: the delivery guarantees rest on them.
pub const RESERVED_CONSUMER: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `kafka.brokers` instead"),
    ("metadata.broker.list", "set `kafka.brokers` instead"),
    ("group.id", "set `kafka.group` instead"),
    ("enable.auto.commit", "the host commits an offset only once its records' outputs and effects are confirmed"),
    ("auto.commit.enable", "the host commits an offset only once its records' outputs and effects are confirmed"),
    ("enable.auto.offset.store", "the host stores an offset only once its records are fully handled"),
    ("isolation.level", "records of aborted transactions must never be read (read_committed)"),
];

/// Producer properties the host sets itself and `kafka.producer` may not
/// override, with why.
pub const RESERVED_PRODUCER: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `kafka.brokers` instead"),
    ("metadata.broker.list", "set `kafka.brokers` instead"),
    ("enable.idempotence", "a retried send must never write a record twice"),
    ("acks", "a record counts as written only once every in-sync replica has it (acks=all)"),
    ("request.required.acks", "a record counts as written only once every in-sync replica has it (acks=all)"),
    ("transactional.id", "it is `{group}-{instance_id}`: set `kafka.instance_id` instead"),
];

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

impl KafkaConfig {
    /// The largest record the producer writes: `message.max.bytes` from
    /// `kafka.producer`, else librdkafka's default of 1,000,000 bytes.
    pub fn message_max_bytes(&self) -> usize {
        let set = self.producer.iter().find(|(key, _)| key.get_ref() == "message.max.bytes");
        set.and_then(|(_, value)| value.trim().parse().ok()).unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }
}

/// Kafka connection settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `localhost:9092`.
    pub brokers: String,
    /// The consumer group id.
    pub group: String,
    /// Extra librdkafka properties for the consumer, e.g. `session.timeout.ms`
    /// (not those in [`RESERVED_CONSUMER`]).
    #[serde(default)]
    pub consumer: BTreeMap<Spanned<String>, String>,
    /// Extra librdkafka properties for the producer, e.g. `compression.type`
    /// (not those in [`RESERVED_PRODUCER`]).
    #[serde(default)]
    pub producer: BTreeMap<Spanned<String>, String>,
    /// This instance's name in the group, stable across restarts; with
    /// exactly-once, the transactional id is `{group}-{instance_id}`, so a
    /// restarted instance fences its predecessor's open transaction. Default:
    /// the host name.
    #[serde(default)]
    pub instance_id: String,
}

/// Redis connection settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prefix of the hash (see [`PipelineConfig::fence_key`]) that records,
    /// per source partition, the last offset whose effects are applied, so
    /// that a replayed record never applies its effects twice. Default
    /// `sluice:fence:`.
    #[serde(default = "default_fence_prefix")]
    pub fence_prefix: String,
    /// Prefix of the keys holding stages' keyed state (one hash per stage
    /// and input partition, the state fences and the undo logs). Default
    /// `sluice:state:`. No effect may write under it.
    #[serde(default = "default_state_prefix")]
    pub state_prefix: String,
}

fn default_fence_prefix() -> String {
    "sluice:fence:".into()
}

fn default_state_prefix() -> String {
    "sluice:state:".into()
}

/// Input topics and batching.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Topics to consume. At least one.
    pub topics: Vec<String>,
    /// Most records in one batch through the chain. Default 500: large enough
    /// to amortise the Wasm boundary and the broker round trip, small enough
    /// to keep a batch well under a megabyte of orders.
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
    /// No longer used, accepted so that older pipeline files still load: a
    /// batch is taken as soon as records are waiting and the chain is free
    /// (what arrives while the chain works gathers into the next batch), so
    /// a batch never waits to fill.
    #[serde(default = "default_batch_timeout_ms")]
    pub batch_timeout_ms: NonZeroU64,
    /// Most bytes of records (keys, values and headers) in one batch: a
    /// batch stops growing once it holds this many. Default 16 MiB: bounds
    /// the memory a batch of large records takes.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: NonZeroUsize,
    /// The largest input record (key, value and headers) the chain takes; a
    /// larger one is dead-lettered as `record_too_large`. Default 1 MiB.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: NonZeroUsize,
}

fn default_commit_interval_ms() -> NonZeroU64 {
    NonZeroU64::new(100).expect("non-zero")
}

fn default_batch_max_bytes() -> NonZeroUsize {
    NonZeroUsize::new(16 << 20).expect("non-zero")
}

fn default_max_record_bytes() -> NonZeroUsize {
    NonZeroUsize::new(1 << 20).expect("non-zero")
}

fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(500).expect("non-zero")
}

fn default_batch_timeout_ms() -> NonZeroU64 {
    NonZeroU64::new(20).expect("non-zero")
}

/// The delivery guarantee.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Offsets are committed after every output, dead letter and Redis effect
    /// of the batch is confirmed. A crash may replay a batch: its outputs may
    /// appear twice (its Redis effects never apply twice).
    #[default]
    AtLeastOnce,
    /// Outputs, dead letters and offsets are committed in one Kafka
    /// transaction per batch; Redis effects are applied once, behind the
    /// per-partition fence, before the transaction commits.
    ExactlyOnce,
}

/// A Kafka topic to write to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// The topic name.
    pub topic: String,
}

/// A lookup table: Redis hashes at `{key_prefix}{key}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// Prepended to the key a plugin looks up, e.g. `user:`.
    pub key_prefix: String,
    /// How long a row (or its absence) is cached, in milliseconds. Default
    /// 60000: lookup tables change rarely, and a minute bounds staleness.
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// Most rows cached for this table. Default 100000 (tens of MB at most).
    #[serde(default = "default_cache_rows")]
    pub cache_rows: NonZeroUsize,
}

fn default_ttl_ms() -> u64 {
    60_000
}

fn default_cache_rows() -> NonZeroUsize {
    NonZeroUsize::new(100_000).expect("non-zero")
}

/// The admin HTTP server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_admin_addr")]
    pub addr: String,
    /// Topics `POST /api/ingest/{topic}` may write to. Default: the source
    /// topics.
    #[serde(default)]
    pub ingest_topics: Option<Vec<String>>,
    /// Largest ingest body, in bytes. Default 1 MiB: thousands of orders.
    #[serde(default = "default_ingest_max_bytes")]
    pub ingest_max_bytes: NonZeroU64,
    /// Serve the admin API beyond loopback without `SLUICE_ADMIN_TOKEN`, so
    /// that whoever reaches the port may ingest, reload and promote.
    /// Default false: `sluice run` refuses to start so exposed.
    #[serde(default)]
    pub insecure: bool,
    /// Host names the admin API answers to, besides IP addresses and
    /// `localhost` (say the Kubernetes Service's name). A request whose
    /// `Host` is another name is refused: a web page could have sent it
    /// through a name of its own that resolves here (DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

fn default_admin_addr() -> String {
    "127.0.0.1:8080".into()
}

fn default_ingest_max_bytes() -> NonZeroU64 {
    NonZeroU64::new(1 << 20).expect("non-zero")
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: default_admin_addr(),
            ingest_topics: None,
            ingest_max_bytes: default_ingest_max_bytes(),
            insecure: false,
            allowed_hosts: Vec::new(),
        }
    }
}

/// A parsed and validated pipeline, with the directory its relative plugin
/// paths are resolved against.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The config.
    pub config: PipelineConfig,
    /// The directory of pipeline.toml.
    pub base_dir: PathBuf,
}

impl Pipeline {
    /// The absolute or working-directory-relative path of a stage's plugin.
    pub fn plugin_path(&self, stage: &StageConfig) -> PathBuf {
        self.base_dir.join(&stage.plugin)
    }

    /// Every plugin file the pipeline names: stages and canaries.
    pub fn plugin_files(&self) -> Vec<PathBuf> {
        let stages = self.config.stages.iter();
        let canaries = self.config.stages.iter().filter_map(|s| s.canary.as_ref());
        stages.map(|s| self.base_dir.join(&s.plugin)).chain(canaries.map(|c| self.base_dir.join(&c.plugin))).collect()
    }
}

impl PipelineConfig {
    /// The Redis hash of the per-partition offset fences:
    /// `{fence_prefix}` followed by the prefixes the stages may write
    /// (sorted, joined with `+`). The fence belongs to the counters it
    /// protects, not to the consumer group: a renamed group that reads a
    /// topic again applies nothing twice.
    pub fn fence_key(&self) -> String {
        let mut writes: Vec<&str> =
            self.stages.iter().flat_map(|s| s.writes.iter().map(|w| w.get_ref().as_str())).collect();
        writes.sort_unstable();
        writes.dedup();
        format!("{}{}", self.redis.fence_prefix, writes.join("+"))
    }

    /// Key prefixes no effect may write: the offset fence (moving it would
    /// skip or replay counts) and every lookup table (other stages read them).
    pub fn protected_prefixes(&self) -> Vec<String> {
        let tables = self.lookups.values().map(|t| t.key_prefix.clone());
        [self.redis.fence_prefix.clone(), self.redis.state_prefix.clone()].into_iter().chain(tables).collect()
    }

    /// Why a stage may not declare `prefix` in `writes`, if it may not.
    fn unwritable(&self, prefix: &str) -> Option<String> {
        if prefix.is_empty() {
            return Some("is empty: it would let the stage write every key".into());
        }
        if prefix.starts_with(&self.redis.fence_prefix) {
            return Some(format!("is inside the offset fence (redis.fence_prefix `{}`)", self.redis.fence_prefix));
        }
        if prefix.starts_with(&self.redis.state_prefix) {
            return Some(format!("is inside the stages' state (redis.state_prefix `{}`)", self.redis.state_prefix));
        }
        let (name, table) = self.lookups.iter().find(|(_, t)| prefix.starts_with(&t.key_prefix))?;
        Some(format!("is inside the lookup table `{name}` (key_prefix `{}`)", table.key_prefix))
    }

    /// The settings that differ between `self` and `next` and that a running
    /// host cannot change: the Kafka client, Redis, the delivery guarantee,
    /// the admin address and the PostgreSQL tables. Everything else applies live.
    pub fn restart_required(&self, next: &PipelineConfig) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |key: &'static str, same: bool| {
            if !same {
                keys.push(key);
            }
        };
        check("kafka.brokers", self.kafka.brokers == next.kafka.brokers);
        check("kafka.group", self.kafka.group == next.kafka.group);
        check("kafka.instance_id", self.kafka.instance_id == next.kafka.instance_id);
        check("kafka.consumer", self.kafka.consumer == next.kafka.consumer);
        check("kafka.producer", self.kafka.producer == next.kafka.producer);
        check("redis.url", self.redis.url == next.redis.url);
        check("redis.fence_prefix", self.redis.fence_prefix == next.redis.fence_prefix);
        check("redis.state_prefix", self.redis.state_prefix == next.redis.state_prefix);
        check("delivery", self.delivery == next.delivery);
        check("admin", self.admin == next.admin);
        check("report", self.report == next.report);
        check("tables", self.tables == next.tables);
        check("http_sources", self.http_sources == next.http_sources);
        keys
    }
}

/// Reads, interpolates, parses and validates a pipeline.toml file.
pub fn load_file(path: &Path) -> Result<Pipeline, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError { position: None, message: format!("cannot read {}: {e}", path.display()) })?;
    let config = load_str(&text, |name| std::env::var(name).ok())?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Pipeline { config, base_dir })
}

/// Interpolates, parses and validates pipeline.toml text.
pub fn load_str(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<PipelineConfig, ConfigError> {
    let text = interpolate(text, env)?;
    let config: PipelineConfig = toml::from_str(&text).map_err(|e| {
        let message = e.message().trim_end();
        match e.span() {
            Some(span) => match key_at(&text, span.start) {
                Some(key) => ConfigError::at(&text, span.start, format!("`{key}`: {message}")),
                None => ConfigError::at(&text, span.start, message.to_string()),
            },
            None => ConfigError { position: None, message: message.to_string() },
        }
    })?;
    config.validate(&text)?;
    Ok(config)
}

/// The dotted key (`section.key`) of the `key = value` line at `offset`,
/// so that a type error names its key; `None` when the line is no such line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with(['[', '#']) {
        return None;
    }
    let section = text[..start].lines().rev().map(str::trim).find(|l| l.starts_with('['));
    Some(match section {
        Some(header) => format!("{}.{key}", header.trim_matches(|c| c == '[' || c == ']').trim()),
        None => key.to_string(),
    })
}

impl PipelineConfig {
    /// Checks what parsing alone cannot: names, references and non-empty
    /// values. `text` is the interpolated file, for line numbers.
    pub fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let whole = |message: String| ConfigError { position: None, message };
        let non_empty = |what: &str, value: &str| {
            if value.trim().is_empty() { Err(whole(format!("`{what}` must not be empty"))) } else { Ok(()) }
        };
        non_empty("kafka.brokers", &self.kafka.brokers)?;
        for (table, properties, reserved) in [
            ("kafka.consumer", &self.kafka.consumer, RESERVED_CONSUMER),
            ("kafka.producer", &self.kafka.producer, RESERVED_PRODUCER),
        ] {
            for key in properties.keys() {
                if let Some((_, why)) = reserved.iter().find(|(name, _)| *name == key.get_ref().trim()) {
                    let message = format!("`{table}.\"{}\"`: the host sets this property itself: {why}", key.get_ref());
                    return Err(ConfigError::spanned(text, key, message));
                }
            }
        }
        non_empty("kafka.group", &self.kafka.group)?;
        non_empty("redis.url", &self.redis.url)?;
        for (name, table) in &self.tables {
            table.check(name).map_err(whole)?;
        }
        self.output.check("output", &self.tables).map_err(whole)?;
        for (name, source) in &self.http_sources {
            source.check(name).map_err(whole)?;
        }
        non_empty("dead_letter.topic", &self.dead_letter.topic)?;
        if self.source.topics.is_empty() {
            return Err(whole("`source.topics` must name at least one topic".into()));
        }
        for (i, topic) in self.source.topics.iter().enumerate() {
            non_empty(&format!("source.topics[{i}]"), topic)?;
        }
        for (name, route) in &self.routes {
            route.check(&format!("routes.{name}"), &self.tables).map_err(whole)?;
        }
        if self.stages.is_empty() {
            return Err(whole("the pipeline has no stages: add at least one [[stages]]".into()));
        }
        let mut seen = BTreeMap::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let name = stage.name.get_ref();
            let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                let message = format!("stages[{i}].name `{name}` must be letters, digits, `-` or `_`");
                return Err(ConfigError::spanned(text, &stage.name, message));
            }
            if let Some(first) = seen.insert(name.clone(), i) {
                let message = format!("stages[{i}].name `{name}` is already the name of stages[{first}]");
                return Err(ConfigError::spanned(text, &stage.name, message));
            }
            if stage.plugin.as_os_str().is_empty() {
                return Err(ConfigError::spanned(text, &stage.name, format!("stages[{i}].plugin must not be empty")));
            }
            if let Some(canary) = &stage.canary {
                if canary.plugin.as_os_str().is_empty() {
                    let message = format!("stages[{i}].canary.plugin must not be empty");
                    return Err(ConfigError::spanned(text, &stage.name, message));
                }
                if !(canary.sample > 0.0 && canary.sample <= 1.0) {
                    let message =
                        format!("stages[{i}].canary.sample is {}: it must be above 0 and at most 1", canary.sample);
                    return Err(ConfigError::spanned(text, &stage.name, message));
                }
            }
            for table in &stage.lookups {
                if !self.lookups.contains_key(table.get_ref()) {
                    let declared: Vec<&str> = self.lookups.keys().map(String::as_str).collect();
                    let message = format!(
                        "stages[{i}].lookups: `{}` is not a declared lookup table (declared: [{}])",
                        table.get_ref(),
                        declared.join(", ")
                    );
                    return Err(ConfigError::spanned(text, table, message));
                }
            }
            for prefix in &stage.writes {
                if let Some(why) = self.unwritable(prefix.get_ref()) {
                    let message = format!("stages[{i}].writes: `{}` {why}", prefix.get_ref());
                    return Err(ConfigError::spanned(text, prefix, message));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let text = r#"
            kafka = { brokers = "b:9092", group = "g" }
            redis = { url = "redis://r" }
            source = { topics = ["in"] }
            output = { topic = "out" }
            dead_letter = { topic = "dlq" }
            [[stages]]
            name = "s"
            plugin = "s.wasm"
        "#;
        let config = load_str(text, |_| None).unwrap();
        assert_eq!(config.source.batch_size.get(), 500);
        assert_eq!(config.delivery, Delivery::AtLeastOnce);
        assert_eq!(config.stages[0].limits.memory_mib.get(), 64);
        assert_eq!(config.admin.addr, "127.0.0.1:8080");
    }
}
