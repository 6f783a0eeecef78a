//! Counters of what the pipeline did, shared by the run loop and the admin
//! API. Every record read ends up counted in exactly one of `records_out`
//! (by input record), `dead_letters` or `filtered`.

use crate::pipeline::{BatchResult, Record};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
struct StageTotals {
    records_in: u64,
    emitted: u64,
    filtered: u64,
    rejected: u64,
    nanos: u128,
    /// Time of one call of the stage (one batch), in seconds.
    latency: Histogram,
    memory_bytes: u64,
}

/// Upper bounds of the per-stage call time buckets, in seconds.
const LATENCY_BOUNDS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// Upper bounds of the batch size buckets, in records.
const BATCH_BOUNDS: &[f64] = &[1.0, 8.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

/// A Prometheus histogram: cumulative counts per upper bound.
#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.len() != bounds.len() {
            self.counts = vec![0; bounds.len()];
        }
        for (count, bound) in self.counts.iter_mut().zip(bounds) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in bounds.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
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
    /// The generation of the live pipeline (1 at start, +1 per applied reload).
    pub generation: AtomicU64,
    dead_letters: Mutex<BTreeMap<(String, String), u64>>,
    stages: Mutex<BTreeMap<String, StageTotals>>,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
    topics_in: Mutex<BTreeMap<String, u64>>,
    topics_out: Mutex<BTreeMap<String, u64>>,
    batch_sizes: Mutex<Histogram>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Per partition: the next offset to process, and the broker's last
    /// stable offset (from the consumer's statistics).
    positions: Mutex<BTreeMap<(String, i32), (Option<i64>, Option<i64>)>>,
}

/// What a stage handled since the host started.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageCounts {
    /// Records passed in.
    pub records_in: u64,
    /// Records emitted.
    pub emitted: u64,
    /// Records filtered.
    pub filtered: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Seconds spent in the stage.
    pub seconds: f64,
}

impl Metrics {
    /// Adds a committed batch.
    pub fn record_batch(&self, batch: &[Record], result: &BatchResult) {
        let records = batch.len();
        self.records_in.fetch_add(records as u64, Ordering::Relaxed);
        self.batch_sizes.lock().expect("metrics lock").observe(BATCH_BOUNDS, records as f64);
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
        self.records_out.fetch_add(result.outputs.len() as u64, Ordering::Relaxed);
        self.filtered.fetch_add(result.filtered, Ordering::Relaxed);
        self.completed.fetch_add(result.completed, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        let mut dead = self.dead_letters.lock().expect("metrics lock");
        for d in &result.dead_letters {
            *dead.entry((d.stage.to_string(), d.reason.clone())).or_default() += 1;
        }
        let mut stages = self.stages.lock().expect("metrics lock");
        for s in &result.stages {
            let t = match stages.get_mut(&*s.name) {
                Some(t) => t,
                None => stages.entry(s.name.to_string()).or_default(),
            };
            t.records_in += s.records_in;
            t.emitted += s.emitted;
            t.filtered += s.filtered;
            t.rejected += s.rejected;
            t.nanos += s.elapsed.as_nanos();
            t.latency.observe(LATENCY_BOUNDS, s.elapsed.as_secs_f64());
            t.memory_bytes = s.memory_bytes;
        }
    }

    /// Counts an error talking to `peer` (`kafka` or `redis`).
    pub fn record_error(&self, peer: &'static str) {
        *self.errors.lock().expect("metrics lock").entry(peer).or_default() += 1;
    }

    /// Notes the broker's last stable offset of a partition, for the lag.
    pub fn record_high_watermark(&self, topic: &str, partition: i32, offset: i64) {
        let mut positions = self.positions.lock().expect("metrics lock");
        positions.entry((topic.to_string(), partition)).or_default().1 = Some(offset);
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

    /// What the stage `name` handled so far.
    pub fn stage_counts(&self, name: &str) -> StageCounts {
        let stages = self.stages.lock().expect("metrics lock");
        stages.get(name).map_or_else(StageCounts::default, |t| StageCounts {
            records_in: t.records_in,
            emitted: t.emitted,
            filtered: t.filtered,
            rejected: t.rejected,
            seconds: t.nanos as f64 / 1e9,
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
                "calls": t.latency.count,
                "seconds": t.nanos as f64 / 1e9,
                "memory_bytes": t.memory_bytes,
            })).collect::<Vec<_>>(),
        })
    }

    /// Records of `stage` dead-lettered because the plugin failed (trap,
    /// deadline, memory, contract) or its circuit breaker was open.
    pub fn plugin_failures(&self, stage: &str) -> u64 {
        let dead = self.dead_letters.lock().expect("metrics lock");
        let failed = |reason: &str| reason.starts_with("plugin_") || reason == "circuit_open";
        dead.iter().filter(|((s, reason), _)| s == stage && failed(reason)).map(|(_, n)| n).sum()
    }

    /// Dead letters so far.
    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.lock().expect("metrics lock").values().sum()
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter("sluice_records_in_total", "Records read and fully handled.", self.records_in.load(Ordering::Relaxed));
        counter("sluice_records_out_total", "Records written to outputs.", self.records_out.load(Ordering::Relaxed));
        counter("sluice_filtered_total", "Input records filtered by a stage.", self.filtered.load(Ordering::Relaxed));
        counter(
            "sluice_records_completed_total",
            "Input records that produced output. records_in = completed + dead_letters + filtered.",
            self.completed.load(Ordering::Relaxed),
        );
        counter("sluice_batches_total", "Batches handled.", self.batches.load(Ordering::Relaxed));
        counter("sluice_retries_total", "Transient failures retried.", self.retries.load(Ordering::Relaxed));
        counter("sluice_rebalances_total", "Partition assignment changes.", self.rebalances.load(Ordering::Relaxed));
        out.push_str("# HELP sluice_dead_letters_total Records dead-lettered, by stage and reason.\n");
        out.push_str("# TYPE sluice_dead_letters_total counter\n");
        for ((stage, reason), n) in self.dead_letters.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "sluice_dead_letters_total{{stage=\"{stage}\",reason=\"{reason}\"}} {n}");
        }
        let stages = self.stages.lock().expect("metrics lock");
        for (metric, help, get) in [
            (
                "sluice_stage_records_in_total",
                "Records passed to a stage.",
                (|t: &StageTotals| t.records_in) as fn(&StageTotals) -> u64,
            ),
            ("sluice_stage_emitted_total", "Records a stage emitted.", |t| t.emitted),
            ("sluice_stage_filtered_total", "Records a stage filtered.", |t| t.filtered),
            ("sluice_stage_rejected_total", "Records a stage rejected.", |t| t.rejected),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (name, t) in stages.iter() {
                let _ = writeln!(out, "{metric}{{stage=\"{name}\"}} {}", get(t));
            }
        }
        out.push_str(
            "# HELP sluice_stage_seconds_total Time spent in a stage.\n# TYPE sluice_stage_seconds_total counter\n",
        );
        for (name, t) in stages.iter() {
            let _ = writeln!(out, "sluice_stage_seconds_total{{stage=\"{name}\"}} {:.6}", t.nanos as f64 / 1e9);
        }
        out.push_str("# HELP sluice_stage_call_seconds Time of one call of a stage (one batch).\n# TYPE sluice_stage_call_seconds histogram\n");
        for (name, t) in stages.iter() {
            t.latency.render(&mut out, "sluice_stage_call_seconds", &format!("stage=\"{name}\""), LATENCY_BOUNDS);
        }
        out.push_str("# HELP sluice_stage_memory_bytes Linear memory of a stage's instance.\n# TYPE sluice_stage_memory_bytes gauge\n");
        for (name, t) in stages.iter() {
            let _ = writeln!(out, "sluice_stage_memory_bytes{{stage=\"{name}\"}} {}", t.memory_bytes);
        }
        drop(stages);
        for (metric, help, map) in [
            ("sluice_topic_records_in_total", "Records read and handled, by source topic.", &self.topics_in),
            (
                "sluice_topic_records_out_total",
                "Records written, by destination topic (dead letters included).",
                &self.topics_out,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (topic, n) in map.lock().expect("metrics lock").iter() {
                let _ = writeln!(out, "{metric}{{topic=\"{topic}\"}} {n}");
            }
        }
        out.push_str("# HELP sluice_batch_records Records per batch.\n# TYPE sluice_batch_records histogram\n");
        self.batch_sizes.lock().expect("metrics lock").render(&mut out, "sluice_batch_records", "", BATCH_BOUNDS);
        out.push_str(
            "# HELP sluice_consumer_lag Records not yet processed, per partition.\n# TYPE sluice_consumer_lag gauge\n",
        );
        for ((topic, partition), lag) in self.lag() {
            let _ = writeln!(out, "sluice_consumer_lag{{topic=\"{topic}\",partition=\"{partition}\"}} {lag}");
        }
        out.push_str("# HELP sluice_errors_total Failed calls to a peer (retried), by peer.\n# TYPE sluice_errors_total counter\n");
        let errors = self.errors.lock().expect("metrics lock");
        for peer in ["kafka", "redis"] {
            let _ = writeln!(out, "sluice_errors_total{{peer=\"{peer}\"}} {}", errors.get(peer).copied().unwrap_or(0));
        }
        drop(errors);
        out.push_str("# HELP sluice_reloads_total Reload attempts, by result.\n# TYPE sluice_reloads_total counter\n");
        let reloads = self.reloads.lock().expect("metrics lock");
        for result in ["applied", "unchanged", "rejected", "restart-required"] {
            let n = reloads.get(result).copied().unwrap_or(0);
            let _ = writeln!(out, "sluice_reloads_total{{result=\"{result}\"}} {n}");
        }
        drop(reloads);
        let generation = self.generation.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP sluice_pipeline_generation Generation of the live pipeline.\n# TYPE sluice_pipeline_generation gauge\nsluice_pipeline_generation {generation}"
        );
        let ready = u64::from(self.is_ready());
        let _ = writeln!(
            out,
            "# HELP sluice_ready 1 when consuming with every stage loaded and no outage.\n# TYPE sluice_ready gauge\nsluice_ready {ready}"
        );
        out
    }
}
