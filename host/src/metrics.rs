//! Counters of what the pipeline did, shared by the run loop and the admin
//! API. Every record read ends up counted in exactly one of `records_out`
//! (by input record), `dead_letters` or `filtered`.

use crate::pipeline::BatchResult;
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
    pub fn record_batch(&self, records: usize, result: &BatchResult) {
        self.records_in.fetch_add(records as u64, Ordering::Relaxed);
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
        }
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
        drop(stages);
        out.push_str("# HELP sluice_reloads_total Reload attempts, by result.\n# TYPE sluice_reloads_total counter\n");
        for (result, n) in self.reloads.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "sluice_reloads_total{{result=\"{result}\"}} {n}");
        }
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
