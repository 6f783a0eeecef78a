//! Counters of what the pipeline did, shared by the run loop and the admin
//! API. Every record read ends up counted in exactly one of `records_out`
//! (by input record), `dead_letters` or `filtered`.
//!
//! `/metrics` is OpenMetrics text written by the `prometheus-client` crate,
//! which also escapes label values (stage and topic names come from the
//! configuration and from plugins' routes). The values live here, where the
//! run loop bumps them and the admin API reads them back, so a scrape copies
//! them into a [`Scrape`], a collector of the crate, instead of keeping a
//! second set of counters in a registry.

use crate::pipeline::{BatchResult, Reason};
use crate::record::Record;
use crate::state::{StateStore, StateTotals};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Distinct reason codes of its own that a stage's dead letters are counted
/// under; further new codes of the stage are counted as `other`. Plugins
/// choose their codes, and one that puts an instance in its code (an id, a
/// field's value) instead of a kind of failure would add a series per
/// record, each kept by Prometheus for its retention. 32 is far above the
/// handful of codes a stage documents.
pub const MAX_REASONS_PER_STAGE: usize = 32;

/// The reason that the codes past [`MAX_REASONS_PER_STAGE`] are counted as.
const OTHER_REASON: &str = "other";

#[derive(Debug, Clone)]
struct StageTotals {
    records_in: u64,
    emitted: u64,
    filtered: u64,
    rejected: u64,
    nanos: u128,
    /// Calls of the stage (batches): the crate's histogram keeps its count
    /// to itself.
    calls: u64,
    /// Time of one call of the stage (one batch), in seconds. A clone shares
    /// the counts.
    latency: Histogram,
    memory_bytes: u64,
}

impl StageTotals {
    fn new() -> Self {
        Self {
            records_in: 0,
            emitted: 0,
            filtered: 0,
            rejected: 0,
            nanos: 0,
            calls: 0,
            latency: Histogram::new(LATENCY_BOUNDS.iter().copied()),
            memory_bytes: 0,
        }
    }
}

/// Upper bounds of the per-stage call time buckets, in seconds.
const LATENCY_BOUNDS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// Upper bounds of the batch size buckets, in records.
const BATCH_BOUNDS: &[f64] = &[1.0, 8.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

/// Records per batch; a type of its own because the crate's histogram has
/// no `Default`.
#[derive(Debug)]
struct BatchSizes(Histogram);

impl Default for BatchSizes {
    fn default() -> Self {
        Self(Histogram::new(BATCH_BOUNDS.iter().copied()))
    }
}

/// Process-wide counters.
#[derive(Default)]
pub struct Metrics {
    /// Records read from the source and fully handled (committed).
    pub records_in: AtomicU64,
    /// Records written to outputs.
    pub records_out: AtomicU64,
    /// Input records that were filtered.
    pub filtered: AtomicU64,
    /// Input records that produced at least one output.
    pub completed: AtomicU64,
    /// Batches handled.
    pub batches: AtomicU64,
    /// Transient failures (lookups, produce, Redis effects) that were retried.
    pub retries: AtomicU64,
    /// True while every stage is loaded and no outage is being waited out.
    pub ready: AtomicBool,
    /// True while the consumer has partitions assigned.
    pub assigned: AtomicBool,
    /// Assignment changes (revocations and assignments) seen so far.
    pub rebalances: AtomicU64,
    /// Kafka transactions committed (exactly-once).
    pub transactions: AtomicU64,
    /// Kafka transactions aborted (exactly-once): their batches are read
    /// and processed again.
    pub transactions_aborted: AtomicU64,
    /// Rebalances that released revoked partitions before what was read of
    /// them was committed (see [`crate::kafka::Handover`]).
    pub handovers_missed: AtomicU64,
    /// Transactional producers replaced after a fatal or fencing error
    /// (exactly-once).
    pub producer_replacements: AtomicU64,
    /// Offset commits requested (at-least-once).
    pub offset_commits: AtomicU64,
    /// Effects not applied because their record was at or below its
    /// partition's fence (a replay after a crash, an abort or a rebalance).
    pub effects_skipped: AtomicU64,
    /// Rows not written again because their record was at or below its
    /// partition's fence.
    pub rows_skipped: AtomicU64,
    /// The generation of the live pipeline (1 at start, +1 per applied reload).
    pub generation: AtomicU64,
    /// Per stage, per reason (at most [`MAX_REASONS_PER_STAGE`] of the
    /// stage's own, see [`reason_label`]).
    dead_letters: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    stages: Mutex<BTreeMap<String, StageTotals>>,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
    topics_in: Mutex<BTreeMap<String, u64>>,
    topics_out: Mutex<BTreeMap<String, u64>>,
    tables_out: Mutex<BTreeMap<String, u64>>,
    /// Per HTTP source: polls by result, objects by outcome.
    http_sources: Mutex<BTreeMap<String, HttpSourceTotals>>,
    batch_sizes: BatchSizes,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Per partition: the next offset to process, and the broker's last
    /// stable offset (from the consumer's statistics).
    positions: Mutex<BTreeMap<Partition, Position>>,
    /// Per assigned partition: its end offset as last reported by the
    /// consumer's statistics since it was assigned.
    ends: Mutex<BTreeMap<(String, i32), i64>>,
    /// The stages' keyed state, once `sluice run` has one.
    state: OnceLock<Arc<StateStore>>,
}

impl Metrics {
    /// Adds a committed batch.
    pub fn record_batch(&self, batch: &[Record], result: &BatchResult) {
        let records = batch.len();
        self.records_in.fetch_add(records as u64, Ordering::Relaxed);
        self.batch_sizes.0.observe(records as f64);
        {
            // Per partition of the batch (a handful): records and the next offset.
            let mut partitions: Vec<(&str, i32, u64, i64)> = Vec::new();
            for r in batch {
                match partitions.iter_mut().find(|p| p.0 == r.topic && p.1 == r.partition) {
                    Some(p) => (p.2, p.3) = (p.2 + 1, p.3.max(r.offset + 1)),
                    None => partitions.push((&r.topic, r.partition, 1, r.offset + 1)),
                }
            }
            let mut topics = self.topics_in.lock().expect("metrics lock");
            let mut positions = self.positions.lock().expect("metrics lock");
            for (topic, partition, records, next) in partitions {
                *topics.entry(topic.to_string()).or_default() += records;
                let slot = positions.entry((topic.to_string(), partition)).or_default();
                slot.0 = Some(slot.0.unwrap_or(0).max(next));
            }
            let mut out = self.topics_out.lock().expect("metrics lock");
            for p in result.outputs.iter().chain(result.dead_letters.iter().map(|d| &d.record)) {
                match out.get_mut(&*p.topic) {
                    Some(n) => *n += 1,
                    None => {
                        out.insert(p.topic.to_string(), 1);
                    }
                }
            }
        }
        if !result.rows.is_empty() {
            let mut tables = self.tables_out.lock().expect("metrics lock");
            for table in result.rows.iter().flat_map(|(_, _, row)| row.tables.iter()) {
                match tables.get_mut(&**table) {
                    Some(n) => *n += 1,
                    None => {
                        tables.insert(table.to_string(), 1);
                    }
                }
            }
        }
        self.records_out.fetch_add(result.outputs.len() as u64, Ordering::Relaxed);
        self.filtered.fetch_add(result.filtered, Ordering::Relaxed);
        self.completed.fetch_add(result.completed, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        let mut dead = self.dead_letters.lock().expect("metrics lock");
        for d in &result.dead_letters {
            let reasons = match dead.get_mut(&*d.stage) {
                Some(reasons) => reasons,
                None => dead.entry(d.stage.to_string()).or_default(),
            };
            let reason = reason_label(reasons, &d.reason);
            match reasons.get_mut(reason) {
                Some(n) => *n += 1,
                None => {
                    reasons.insert(reason.to_string(), 1);
                }
            }
        }
        let mut stages = self.stages.lock().expect("metrics lock");
        for s in &result.stages {
            let t = match stages.get_mut(&*s.name) {
                Some(t) => t,
                None => stages.entry(s.name.to_string()).or_insert_with(StageTotals::new),
            };
            t.records_in += s.records_in;
            t.emitted += s.emitted;
            t.filtered += s.filtered;
            t.rejected += s.rejected;
            t.nanos += s.elapsed.as_nanos();
            t.calls += 1;
            t.latency.observe(s.elapsed.as_secs_f64());
            t.memory_bytes = s.memory_bytes;
        }
    }

    /// Counts a poll of the HTTP source `name`.
    pub fn record_http_poll(&self, name: &str, poll: &crate::http_source::Poll) {
        let mut sources = self.http_sources.lock().expect("metrics lock");
        let totals = sources.entry(name.to_string()).or_default();
        if poll.not_modified {
            totals.polls[1] += 1;
        } else {
            totals.polls[0] += 1;
        }
        totals.objects[0] += poll.produced as u64;
        totals.objects[1] += poll.duplicates as u64;
        totals.objects[2] += poll.without_id as u64;
    }

    /// Counts a failed poll of the HTTP source `name`.
    pub fn record_http_poll_error(&self, name: &str) {
        self.http_sources.lock().expect("metrics lock").entry(name.to_string()).or_default().polls[2] += 1;
    }

    /// Counts an error talking to `peer` (`kafka`, `redis` or `postgres`).
    pub fn record_error(&self, peer: &'static str) {
        *self.errors.lock().expect("metrics lock").entry(peer).or_default() += 1;
    }

    /// Notes the broker's last stable offset of a partition, for the lag.
    pub fn record_high_watermark(&self, topic: &str, partition: i32, offset: i64) {
        let mut positions = self.positions.lock().expect("metrics lock");
        positions.entry((topic.to_string(), partition)).or_default().1 = Some(offset);
        self.ends.lock().expect("metrics lock").insert((topic.to_string(), partition), offset);
    }

    /// The end offset of a partition reported since it was (last) assigned.
    pub fn end_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.ends.lock().expect("metrics lock").get(&(topic.to_string(), partition)).copied()
    }

    /// Forgets the end offsets of partitions no longer assigned.
    pub fn forget_ends(&self, revoked: &[(String, i32)]) {
        let mut ends = self.ends.lock().expect("metrics lock");
        for key in revoked {
            ends.remove(key);
        }
    }

    /// Forgets the partitions of topics no longer read.
    pub fn retain_topics(&self, topics: &[String]) {
        self.positions.lock().expect("metrics lock").retain(|(t, _), _| topics.contains(t));
    }

    /// Records not yet processed, per partition: the last stable offset
    /// minus the next offset to process (0 where nothing was read yet and
    /// the partition is empty).
    pub fn lag(&self) -> BTreeMap<(String, i32), i64> {
        let positions = self.positions.lock().expect("metrics lock");
        positions
            .iter()
            .filter_map(|(k, (next, end))| Some((k.clone(), (end.as_ref()? - next.unwrap_or(0)).max(0))))
            .collect()
    }

    /// Ready to serve: stages loaded, partitions assigned, no outage.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.assigned.load(Ordering::Relaxed)
    }

    /// Counts a reload by its result (`applied`, `unchanged`, `rejected`,
    /// `restart-required`).
    pub fn record_reload(&self, result: &'static str) {
        *self.reloads.lock().expect("metrics lock").entry(result).or_default() += 1;
    }

    /// What the stage `name` handled so far, as `/api/pipeline` shows it:
    /// records in, emitted, filtered and rejected, and seconds spent.
    pub fn stage_counts(&self, name: &str) -> serde_json::Value {
        let stages = self.stages.lock().expect("metrics lock");
        let t = stages.get(name).cloned().unwrap_or_else(StageTotals::new);
        serde_json::json!({
            "records_in": t.records_in,
            "emitted": t.emitted,
            "filtered": t.filtered,
            "rejected": t.rejected,
            "seconds": t.nanos as f64 / 1e9,
        })
    }

    /// The counters the dashboard plots, as JSON.
    pub fn snapshot(&self) -> serde_json::Value {
        let lag = self.lag();
        let dead_letters = self.dead_letter_total();
        let stages = self.stages.lock().expect("metrics lock");
        serde_json::json!({
            "records_in": self.records_in.load(Ordering::Relaxed),
            "records_out": self.records_out.load(Ordering::Relaxed),
            "filtered": self.filtered.load(Ordering::Relaxed),
            "completed": self.completed.load(Ordering::Relaxed),
            "dead_letters": dead_letters,
            "batches": self.batches.load(Ordering::Relaxed),
            "generation": self.generation.load(Ordering::Relaxed),
            "ready": self.is_ready(),
            "lag_total": lag.values().sum::<i64>(),
            "lag": lag.iter().map(|((topic, partition), lag)| serde_json::json!({
                "topic": topic, "partition": partition, "lag": lag,
            })).collect::<Vec<_>>(),
            "stages": stages.iter().map(|(name, t)| serde_json::json!({
                "name": name,
                "records_in": t.records_in,
                "calls": t.calls,
                "seconds": t.nanos as f64 / 1e9,
                "memory_bytes": t.memory_bytes,
            })).collect::<Vec<_>>(),
        })
    }

    /// Records of `stage` dead-lettered because the plugin failed (trap,
    /// deadline, memory, contract) or its circuit breaker was open.
    pub fn plugin_failures(&self, stage: &str) -> u64 {
        let dead = self.dead_letters.lock().expect("metrics lock");
        let reasons = dead.get(stage).into_iter().flatten();
        reasons.filter(|(reason, _)| Reason::of(reason).is_plugin_failure()).map(|(_, n)| n).sum()
    }

    /// Exposes the counts and sizes of the stages' keyed state.
    pub fn watch_state(&self, store: Arc<StateStore>) {
        let _ = self.state.set(store);
    }

    /// What a stage's state calls did and how large its state is, if the
    /// stage used state.
    pub fn state_of(&self, stage: &str) -> Option<StateTotals> {
        self.state.get()?.totals_of(stage)
    }

    /// Dead letters so far.
    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.lock().expect("metrics lock").values().flat_map(|reasons| reasons.values()).sum()
    }

    /// The OpenMetrics text exposition of every counter, to serve as
    /// [`CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.scrape()));
        let mut out = String::new();
        text::encode(&mut out, &registry).expect("every value fits its OpenMetrics type");
        out
    }

    /// The values of a scrape, copied out.
    fn scrape(&self) -> Scrape {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let errors = self.errors.lock().expect("metrics lock");
        let reloads = self.reloads.lock().expect("metrics lock");
        Scrape {
            records_in: load(&self.records_in),
            records_out: load(&self.records_out),
            filtered: load(&self.filtered),
            completed: load(&self.completed),
            batches: load(&self.batches),
            retries: load(&self.retries),
            rebalances: load(&self.rebalances),
            effects_skipped: load(&self.effects_skipped),
            rows_skipped: load(&self.rows_skipped),
            transactions: load(&self.transactions),
            transactions_aborted: load(&self.transactions_aborted),
            handovers_missed: load(&self.handovers_missed),
            producer_replacements: load(&self.producer_replacements),
            offset_commits: load(&self.offset_commits),
            dead_letters: self.dead_letters.lock().expect("metrics lock").clone(),
            stages: self.stages.lock().expect("metrics lock").clone(),
            topics_in: self.topics_in.lock().expect("metrics lock").clone(),
            topics_out: self.topics_out.lock().expect("metrics lock").clone(),
            tables_out: self.tables_out.lock().expect("metrics lock").clone(),
            http_sources: self.http_sources.lock().expect("metrics lock").clone(),
            batch_sizes: self.batch_sizes.0.clone(),
            lag: self.lag(),
            errors: ["kafka", "redis", "postgres"].map(|peer| (peer, errors.get(peer).copied().unwrap_or(0))),
            reloads: ["applied", "unchanged", "rejected", "restart-required"]
                .map(|result| (result, reloads.get(result).copied().unwrap_or(0))),
            generation: load(&self.generation),
            ready: self.is_ready(),
            state: self.state.get().map(|s| s.totals()).unwrap_or_default(),
            state_undone: self.state.get().map_or(0, |s| s.undone.load(Ordering::Relaxed)),
        }
    }
}

/// The reason that a dead letter of `reason` is counted as, given the
/// `reasons` its stage has so far: its own, unless it is new and the stage
/// already has [`MAX_REASONS_PER_STAGE`] of its own, then `other`. The host's
/// codes are a small fixed set and always keep their names: `plugin_failures`
/// counts some of them.
fn reason_label<'a>(reasons: &BTreeMap<String, u64>, reason: &'a Reason) -> &'a str {
    let code = reason.as_str();
    if reason.is_hosts() || reasons.contains_key(code) {
        return code;
    }
    let own = reasons.keys().filter(|r| !Reason::of(r).is_hosts() && *r != OTHER_REASON).count();
    if own < MAX_REASONS_PER_STAGE { code } else { OTHER_REASON }
}

/// A topic's partition.
type Partition = (String, i32);

/// The counts of one HTTP source.
#[derive(Debug, Clone, Default)]
struct HttpSourceTotals {
    /// By [`Self::POLLS`].
    polls: [u64; 3],
    /// By [`Self::OBJECTS`].
    objects: [u64; 3],
}

impl HttpSourceTotals {
    const POLLS: [&'static str; 3] = ["ok", "not_modified", "error"];
    const OBJECTS: [&'static str; 3] = ["produced", "duplicate", "without_id"];
}

/// A partition's next offset to process, and the broker's last stable
/// offset.
type Position = (Option<i64>, Option<i64>);

/// What one scrape exposes, copied out of [`Metrics`]: the crate's
/// collectors own what they encode. The histograms are shared, not copied.
#[derive(Debug)]
struct Scrape {
    records_in: u64,
    records_out: u64,
    filtered: u64,
    completed: u64,
    batches: u64,
    retries: u64,
    rebalances: u64,
    effects_skipped: u64,
    rows_skipped: u64,
    transactions: u64,
    transactions_aborted: u64,
    handovers_missed: u64,
    producer_replacements: u64,
    offset_commits: u64,
    dead_letters: BTreeMap<String, BTreeMap<String, u64>>,
    stages: BTreeMap<String, StageTotals>,
    topics_in: BTreeMap<String, u64>,
    topics_out: BTreeMap<String, u64>,
    tables_out: BTreeMap<String, u64>,
    http_sources: BTreeMap<String, HttpSourceTotals>,
    batch_sizes: Histogram,
    lag: BTreeMap<(String, i32), i64>,
    errors: [(&'static str, u64); 3],
    reloads: [(&'static str, u64); 4],
    generation: u64,
    ready: bool,
    state: BTreeMap<Arc<str>, StateTotals>,
    state_undone: u64,
}

impl Scrape {
    /// Encodes the family `name`, a sample per stage.
    fn per_stage<M>(
        &self,
        e: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&StageTotals) -> M,
    ) -> fmt::Result
    where
        M: EncodeMetric + TypedMetric,
    {
        family(e, name, help, self.stages.iter().map(|(stage, t)| ([("stage", stage.as_str())], value(t))))
    }
}

impl Collector for Scrape {
    /// Every family, in a fixed order. A counter is named without `_total`:
    /// OpenMetrics names the family so and the crate appends `_total` to its
    /// sample, so `sluice_records_in` is scraped as `sluice_records_in_total`.
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        for (name, help, n) in [
            ("sluice_records_in", "Records read and fully handled.", self.records_in),
            ("sluice_records_out", "Records written to outputs.", self.records_out),
            ("sluice_filtered", "Input records filtered by a stage.", self.filtered),
            (
                "sluice_records_completed",
                "Input records that produced output. records_in = completed + dead_letters + filtered.",
                self.completed,
            ),
            ("sluice_batches", "Batches handled.", self.batches),
            ("sluice_retries", "Transient failures retried.", self.retries),
            ("sluice_rebalances", "Partition assignment changes.", self.rebalances),
            ("sluice_transactions", "Kafka transactions committed (exactly-once).", self.transactions),
            (
                "sluice_transactions_aborted",
                "Kafka transactions aborted (exactly-once); their batches are processed again.",
                self.transactions_aborted,
            ),
            (
                "sluice_handovers_missed",
                "Rebalances that released revoked partitions before what was read of them was committed.",
                self.handovers_missed,
            ),
            (
                "sluice_producer_replacements",
                "Transactional producers replaced after a fatal or fencing error (exactly-once).",
                self.producer_replacements,
            ),
            (
                "sluice_offset_commits",
                "Offset commits of acknowledged batches (at-least-once), one per commit_interval_ms at most.",
                self.offset_commits,
            ),
            (
                "sluice_effects_skipped",
                "Redis effects not applied again because their record was behind its partition's fence (a replay).",
                self.effects_skipped,
            ),
            (
                "sluice_table_rows_skipped",
                "Rows not written again to a PostgreSQL table because their record was behind its partition's fence.",
                self.rows_skipped,
            ),
        ] {
            single(e, name, help, ConstCounter::new(n))?;
        }
        let dead = self.dead_letters.iter().flat_map(|(stage, reasons)| {
            let stage = ("stage", stage.as_str());
            reasons.iter().map(move |(reason, n)| ([stage, ("reason", reason.as_str())], ConstCounter::new(*n)))
        });
        family(e, "sluice_dead_letters", "Records dead-lettered, by stage and reason.", dead)?;
        for (name, help, value) in [
            ("sluice_stage_records_in", "Records passed to a stage.", (|t| t.records_in) as fn(&StageTotals) -> u64),
            ("sluice_stage_emitted", "Records a stage emitted.", |t| t.emitted),
            ("sluice_stage_filtered", "Records a stage filtered.", |t| t.filtered),
            ("sluice_stage_rejected", "Records a stage rejected.", |t| t.rejected),
        ] {
            self.per_stage(e, name, help, |t| ConstCounter::new(value(t)))?;
        }
        let seconds = |t: &StageTotals| ConstCounter::new(t.nanos as f64 / 1e9);
        self.per_stage(e, "sluice_stage_seconds", "Time spent in a stage.", seconds)?;
        let calls = |t: &StageTotals| t.latency.clone();
        self.per_stage(e, "sluice_stage_call_seconds", "Time of one call of a stage (one batch).", calls)?;
        let memory = |t: &StageTotals| ConstGauge::new(t.memory_bytes);
        self.per_stage(e, "sluice_stage_memory_bytes", "Linear memory of a stage's instance.", memory)?;
        for (name, help, topics) in [
            ("sluice_topic_records_in", "Records read and handled, by source topic.", &self.topics_in),
            (
                "sluice_topic_records_out",
                "Records written, by destination topic (dead letters included).",
                &self.topics_out,
            ),
        ] {
            let samples = topics.iter().map(|(topic, n)| ([("topic", topic.as_str())], ConstCounter::new(*n)));
            family(e, name, help, samples)?;
        }
        let rows = self.tables_out.iter().map(|(table, n)| ([("table", table.as_str())], ConstCounter::new(*n)));
        family(
            e,
            "sluice_table_rows",
            "Rows of handled records upserted into PostgreSQL tables, by table (`[tables.NAME]`).",
            rows,
        )?;
        let polls = self.http_sources.iter().flat_map(|(source, t)| {
            let results = HttpSourceTotals::POLLS.iter().zip(t.polls);
            results.map(move |(result, n)| ([("source", source.as_str()), ("result", result)], ConstCounter::new(n)))
        });
        family(e, "sluice_http_source_polls", "Polls of an HTTP source, by result (ok, not_modified, error).", polls)?;
        let objects = self.http_sources.iter().flat_map(|(source, t)| {
            let outcomes = HttpSourceTotals::OBJECTS.iter().zip(t.objects);
            outcomes
                .map(move |(outcome, n)| ([("source", source.as_str()), ("outcome", outcome)], ConstCounter::new(n)))
        });
        let help = "Objects an HTTP source returned, by outcome (produced, duplicate, without_id).";
        family(e, "sluice_http_source_objects", help, objects)?;
        single(e, "sluice_batch_records", "Records per batch.", self.batch_sizes.clone())?;
        let lag = self.lag.iter().map(|((topic, partition), lag)| {
            (([("topic", topic.as_str())], [("partition", *partition)]), ConstGauge::new(*lag))
        });
        family(e, "sluice_consumer_lag", "Records not yet processed, per partition.", lag)?;
        let errors = self.errors.iter().map(|(peer, n)| ([("peer", *peer)], ConstCounter::new(*n)));
        family(e, "sluice_errors", "Failed calls to a peer (retried), by peer.", errors)?;
        let reloads = self.reloads.iter().map(|(result, n)| ([("result", *result)], ConstCounter::new(*n)));
        family(e, "sluice_reloads", "Reload attempts, by result.", reloads)?;
        for (name, help, value) in [
            ("sluice_state_reads", "Keys of its state a stage read.", (|t| t.reads) as fn(&StateTotals) -> u64),
            ("sluice_state_fetched", "Keys of its state a stage read from Redis (not in memory).", |t| t.fetched),
            ("sluice_state_writes", "Sets and deletes of a stage's state.", |t| t.writes),
            ("sluice_state_expired", "Values of a stage's state read after their time-to-live (then deleted).", |t| {
                t.expired
            }),
            ("sluice_state_refused", "Sets of a stage's state refused by its limits.", |t| t.refused),
        ] {
            let samples = self.state.iter().map(|(stage, t)| ([("stage", &**stage)], ConstCounter::new(value(t))));
            family(e, name, help, samples)?;
        }
        for (name, help, value) in [
            (
                "sluice_state_keys",
                "Keys of a stage's state in Redis, as last measured.",
                (|t| t.keys) as fn(&StateTotals) -> u64,
            ),
            ("sluice_state_bytes", "Bytes of a stage's state in Redis (MEMORY USAGE), as last measured.", |t| t.bytes),
        ] {
            let samples = self.state.iter().map(|(stage, t)| ([("stage", &**stage)], ConstGauge::new(value(t) as i64)));
            family(e, name, help, samples)?;
        }
        let undone = ConstCounter::new(self.state_undone);
        single(e, "sluice_state_rolled_back", "State writes undone because their records are read again.", undone)?;
        let generation = ConstGauge::new(self.generation);
        single(e, "sluice_pipeline_generation", "Generation of the live pipeline.", generation)?;
        let ready = ConstGauge::new(i64::from(self.ready));
        single(e, "sluice_ready", "1 when consuming with every stage loaded and no outage.", ready)
    }
}

/// Encodes the family `name` of one unlabelled sample.
fn single<M: EncodeMetric + TypedMetric>(e: &mut DescriptorEncoder, name: &str, help: &str, metric: M) -> fmt::Result {
    metric.encode(e.encode_descriptor(name, help, None, M::TYPE)?)
}

/// Encodes the family `name`, a sample per label set of `samples`.
fn family<L, M>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    M: EncodeMetric + TypedMetric,
{
    let mut family = e.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{DeadLetter, StageStats};
    use crate::record::Produce;
    use std::time::Duration;

    fn record(topic: &str, offset: i64) -> Record {
        let value = Some(b"{}".to_vec());
        Record { key: None, value, headers: Vec::new(), topic: topic.into(), partition: 0, offset, timestamp_ms: None }
    }

    fn produce(topic: &str) -> Produce {
        Produce { topic: topic.into(), key: None, value: Vec::new(), headers: Vec::new() }
    }

    fn dead(stage: &str, reason: &str) -> DeadLetter {
        let (stage, reason) = (stage.into(), Reason::of(reason));
        DeadLetter { origin: 0, stage, reason, message: String::new(), record: produce("orders.dlq") }
    }

    /// A stage that passed one record through in `seconds`.
    fn stage(name: &str, seconds: f64) -> StageStats {
        let elapsed = Duration::from_secs_f64(seconds);
        StageStats { name: name.into(), records_in: 1, emitted: 1, elapsed, memory_bytes: 65536, ..Default::default() }
    }

    /// A sample: its name, its labels (unescaped) and its value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// A sample line as OpenMetrics writes it, `name{label="value",...}
    /// value`; `None` for anything else.
    fn parse_sample(line: &str) -> Option<Sample> {
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let (name, mut rest) = line.split_at(line.find(|c| !name_char(c)).unwrap_or(line.len()));
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            rest = inner;
            loop {
                let (key, after) = rest.split_once("=\"")?;
                if key.is_empty() || !key.chars().all(name_char) {
                    return None;
                }
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next()? {
                        (i, '"') => break i,
                        (_, '\\') => value.push(match chars.next()?.1 {
                            '\\' => '\\',
                            '"' => '"',
                            'n' => '\n',
                            _ => return None,
                        }),
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key.to_string(), value));
                rest = &after[end + 1..];
                match rest.strip_prefix(',') {
                    Some(more) => rest = more,
                    None => {
                        rest = rest.strip_prefix('}')?;
                        break;
                    }
                }
            }
        }
        let value = rest.strip_prefix(' ')?;
        let value = if value == "+Inf" { f64::INFINITY } else { value.parse().ok()? };
        (!name.is_empty()).then(|| (name.to_string(), labels, value))
    }

    /// Every sample of an exposition; fails on a line that is neither a
    /// sample nor a comment.
    fn samples(text: &str) -> Vec<Sample> {
        let sample = |l: &str| parse_sample(l).unwrap_or_else(|| panic!("not one sample: {l:?} in\n{text}"));
        text.lines().filter(|l| !l.starts_with('#')).map(sample).collect()
    }

    /// The value of the sample `name` with exactly `labels`, in any order.
    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let matches =
            |l: &[(String, String)]| l.len() == want.len() && l.iter().all(|(k, v)| want.get(&**k) == Some(&&**v));
        samples.iter().find(|(n, l, _)| n == name && matches(l)).map(|s| s.2)
    }

    /// The label `key` of a sample.
    fn label<'a>(sample: &'a Sample, key: &str) -> Option<&'a str> {
        sample.1.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn render_exposes_every_series() {
        let metrics = Metrics::default();
        metrics.generation.store(1, Ordering::Relaxed);
        metrics.ready.store(true, Ordering::Relaxed);
        metrics.assigned.store(true, Ordering::Relaxed);
        let result = BatchResult {
            outputs: vec![produce("orders.enriched")],
            output_origins: vec![0],
            dead_letters: vec![dead("enrich", "unknown_sku")],
            completed: 1,
            stages: vec![stage("normalize", 0.001), stage("enrich", 0.002)],
            ..Default::default()
        };
        metrics.record_batch(&[record("orders", 0), record("orders", 1)], &result);
        metrics.record_high_watermark("orders", 0, 5);
        metrics.record_error("redis");
        metrics.record_reload("applied");
        let text = metrics.render();
        let s = samples(&text);
        // (series, labels, value)
        type Sample<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);
        let want: &[Sample] = &[
            ("sluice_records_in_total", &[], 2.0),
            ("sluice_records_out_total", &[], 1.0),
            ("sluice_filtered_total", &[], 0.0),
            ("sluice_records_completed_total", &[], 1.0),
            ("sluice_batches_total", &[], 1.0),
            ("sluice_retries_total", &[], 0.0),
            ("sluice_rebalances_total", &[], 0.0),
            ("sluice_dead_letters_total", &[("stage", "enrich"), ("reason", "unknown_sku")], 1.0),
            ("sluice_stage_records_in_total", &[("stage", "normalize")], 1.0),
            ("sluice_stage_emitted_total", &[("stage", "enrich")], 1.0),
            ("sluice_stage_filtered_total", &[("stage", "enrich")], 0.0),
            ("sluice_stage_rejected_total", &[("stage", "enrich")], 0.0),
            ("sluice_stage_seconds_total", &[("stage", "enrich")], 0.002),
            ("sluice_stage_call_seconds_bucket", &[("stage", "enrich"), ("le", "+Inf")], 1.0),
            ("sluice_stage_call_seconds_sum", &[("stage", "enrich")], 0.002),
            ("sluice_stage_call_seconds_count", &[("stage", "normalize")], 1.0),
            ("sluice_stage_memory_bytes", &[("stage", "enrich")], 65536.0),
            ("sluice_topic_records_in_total", &[("topic", "orders")], 2.0),
            ("sluice_topic_records_out_total", &[("topic", "orders.enriched")], 1.0),
            ("sluice_topic_records_out_total", &[("topic", "orders.dlq")], 1.0),
            ("sluice_batch_records_bucket", &[("le", "+Inf")], 1.0),
            ("sluice_batch_records_sum", &[], 2.0),
            ("sluice_batch_records_count", &[], 1.0),
            ("sluice_consumer_lag", &[("topic", "orders"), ("partition", "0")], 3.0),
            ("sluice_errors_total", &[("peer", "kafka")], 0.0),
            ("sluice_errors_total", &[("peer", "redis")], 1.0),
            ("sluice_reloads_total", &[("result", "applied")], 1.0),
            ("sluice_reloads_total", &[("result", "unchanged")], 0.0),
            ("sluice_reloads_total", &[("result", "rejected")], 0.0),
            ("sluice_reloads_total", &[("result", "restart-required")], 0.0),
            ("sluice_pipeline_generation", &[], 1.0),
            ("sluice_ready", &[], 1.0),
        ];
        for (name, labels, want) in want {
            assert_eq!(value(&s, name, labels), Some(*want), "{name}{labels:?} in\n{text}");
        }
        // The lines that the integration tests and scripts match as text.
        for line in [
            "\nsluice_records_in_total 2\n",
            "\nsluice_consumer_lag{topic=\"orders\",partition=\"0\"} 3\n",
            "\nsluice_dead_letters_total{stage=\"enrich\",reason=\"unknown_sku\"} 1\n",
            "\nsluice_reloads_total{result=\"applied\"} 1\n",
            "\nsluice_stage_call_seconds_count{stage=\"normalize\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        for (family, kind) in [
            ("sluice_records_in", "counter"),
            ("sluice_dead_letters", "counter"),
            ("sluice_stage_call_seconds", "histogram"),
            ("sluice_stage_memory_bytes", "gauge"),
            ("sluice_batch_records", "histogram"),
            ("sluice_consumer_lag", "gauge"),
        ] {
            assert!(text.contains(&format!("\n# TYPE {family} {kind}\n")), "{family} {kind} in\n{text}");
        }
        assert!(text.starts_with("# HELP sluice_records_in Records read and fully handled.\n"), "{text}");
        assert!(text.ends_with("\n# EOF\n"), "{text}");
    }

    #[test]
    fn stage_call_buckets_are_cumulative() {
        let metrics = Metrics::default();
        let observed = [0.0003, 0.003, 2.0];
        for seconds in observed {
            let result = BatchResult { completed: 1, stages: vec![stage("normalize", seconds)], ..Default::default() };
            metrics.record_batch(&[record("orders", 0)], &result);
        }
        let text = metrics.render();
        let s = samples(&text);
        let buckets: Vec<(f64, f64)> = s
            .iter()
            .filter(|sample| {
                sample.0 == "sluice_stage_call_seconds_bucket" && label(sample, "stage") == Some("normalize")
            })
            .map(|sample| {
                let le = label(sample, "le").unwrap();
                (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, sample.2)
            })
            .collect();
        let mut want: Vec<(f64, f64)> =
            LATENCY_BOUNDS.iter().map(|&le| (le, observed.iter().filter(|&&v| v <= le).count() as f64)).collect();
        want.push((f64::INFINITY, 3.0));
        assert_eq!(buckets, want, "in\n{text}");
        assert_eq!(
            &want[..6],
            &[(0.0001, 0.0), (0.00025, 0.0), (0.0005, 1.0), (0.001, 1.0), (0.0025, 1.0), (0.005, 2.0)],
            "cumulative: each bucket counts the observations at most its bound"
        );
        let stage = [("stage", "normalize")];
        assert_eq!(value(&s, "sluice_stage_call_seconds_count", &stage), Some(3.0));
        let sum = value(&s, "sluice_stage_call_seconds_sum", &stage).unwrap();
        assert!((sum - 2.0033).abs() < 1e-9, "{text}");
        assert_eq!(value(&s, "sluice_batch_records_bucket", &[("le", "1.0")]), Some(3.0), "{text}");
        assert_eq!(metrics.snapshot()["stages"][0]["calls"], 3);
    }

    #[test]
    fn reasons_beyond_the_cap_are_counted_as_other() {
        let metrics = Metrics::default();
        let mut dead_letters: Vec<DeadLetter> = (0..40).map(|i| dead("enrich", &format!("code_{i}"))).collect();
        for reason in ["plugin_trap", "circuit_open", "unknown_route", "effect_denied", "code_0"] {
            dead_letters.push(dead("enrich", reason));
        }
        dead_letters.push(dead("normalize", "code_39"));
        metrics.record_batch(&[], &BatchResult { dead_letters, ..Default::default() });
        let later = vec![dead("enrich", "code_40"), dead("enrich", "code_5"), dead("enrich", "plugin_timeout")];
        metrics.record_batch(&[], &BatchResult { dead_letters: later, ..Default::default() });

        let text = metrics.render();
        let s = samples(&text);
        let reasons = |stage: &str| -> BTreeMap<String, f64> {
            let of_stage =
                |sample: &&Sample| sample.0 == "sluice_dead_letters_total" && label(sample, "stage") == Some(stage);
            s.iter().filter(of_stage).map(|sample| (label(sample, "reason").unwrap().to_string(), sample.2)).collect()
        };
        let enrich = reasons("enrich");
        let own = enrich.keys().filter(|r| r.starts_with("code_")).count();
        assert_eq!(own, MAX_REASONS_PER_STAGE, "{text}");
        assert!((0..32).all(|i| enrich.contains_key(&format!("code_{i}"))), "the first codes keep their names");
        assert_eq!(enrich["other"], 9.0, "code_32..=code_40");
        assert_eq!(enrich["code_0"], 2.0);
        assert_eq!(enrich["code_5"], 2.0, "a kept code still counts once the cap is reached");
        for host in ["plugin_trap", "plugin_timeout", "circuit_open", "unknown_route", "effect_denied"] {
            assert_eq!(enrich[host], 1.0, "{host}");
        }
        assert_eq!(enrich.len(), MAX_REASONS_PER_STAGE + 1 + 5);
        assert_eq!(reasons("normalize"), BTreeMap::from([("code_39".to_string(), 1.0)]), "a cap per stage");
        assert_eq!(metrics.dead_letter_total(), 49);
        assert_eq!(metrics.plugin_failures("enrich"), 3);
        assert_eq!(metrics.plugin_failures("normalize"), 0);
    }

    #[test]
    fn label_values_cannot_inject_lines() {
        let evil = "evil\"} 1\nsluice_injected_total 99\n# EOF\n\\";
        let metrics = Metrics::default();
        let result = BatchResult {
            outputs: vec![produce(evil)],
            output_origins: vec![0],
            dead_letters: vec![DeadLetter { record: produce(evil), ..dead(evil, "bad_input") }],
            completed: 1,
            stages: vec![stage(evil, 0.001)],
            ..Default::default()
        };
        metrics.record_batch(&[record(evil, 0), record(evil, 1)], &result);
        metrics.record_high_watermark(evil, 0, 7);
        let text = metrics.render();

        for line in text.lines().filter(|l| l.starts_with('#')) {
            let known = line.starts_with("# HELP sluice_") || line.starts_with("# TYPE sluice_");
            assert!(known || line == "# EOF", "{line:?} in\n{text}");
        }
        assert_eq!(text.lines().filter(|l| *l == "# EOF").count(), 1, "{text}");
        let s = samples(&text);
        assert!(s.iter().all(|(name, _, _)| name.starts_with("sluice_") && !name.contains("injected")), "{text}");
        let named: Vec<&str> = s.iter().flat_map(|sample| label(sample, "stage").or(label(sample, "topic"))).collect();
        assert!(named.len() >= 20, "the stage, topic and lag series:\n{text}");
        assert!(named.iter().all(|&v| v == evil), "{named:?}");
        assert_eq!(value(&s, "sluice_consumer_lag", &[("topic", evil), ("partition", "0")]), Some(5.0));
    }
}
