//! The JSON documents of the admin API that show the live pipeline:
//! `GET /api/pipeline` with its stages, their canaries and the last reload.

use crate::config::{self, PipelineConfig};
use crate::engine::CodeOrigin;
use crate::metrics::Metrics;
use crate::pipeline::values::Encodings;
use crate::pipeline::{CanaryStats, Chain, Stage};
use crate::reload::{ReloadOutcome, ReloadReport};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A live stage as the admin API shows it.
#[derive(Clone)]
pub struct StageView {
    name: String,
    plugin: PathBuf,
    sha256: String,
    code: CodeOrigin,
    load_ms: f64,
    loaded_at: SystemTime,
    config: Value,
    lookups: Vec<String>,
    writes: Vec<String>,
    limits: config::Limits,
    on_failure: config::FailurePolicy,
    encodings: Encodings,
    canary: Option<(Box<StageView>, f64, Arc<Mutex<CanaryStats>>)>,
}

impl StageView {
    fn of(stage: &Stage) -> Self {
        let spec = stage.spec();
        Self {
            name: spec.name.to_string(),
            plugin: spec.component.path.clone(),
            sha256: spec.component.sha256.clone(),
            code: spec.component.origin,
            load_ms: spec.component.load_time.as_secs_f64() * 1e3,
            loaded_at: spec.loaded_at,
            config: config::redact::value(serde_json::from_str(&spec.config_json).unwrap_or(Value::Null)),
            lookups: spec.tables.to_vec(),
            writes: spec.writes.allowed.clone(),
            limits: spec.limits.clone(),
            on_failure: spec.on_failure,
            encodings: spec.encodings,
            canary: None,
        }
    }

    /// Every stage of `chain`, with its canary.
    pub fn all(chain: &Chain, pipeline: &PipelineConfig) -> Vec<StageView> {
        let samples = pipeline.stages.iter().map(|s| s.canary.as_ref().map_or(0.0, |c| c.sample));
        (chain.stages().iter().enumerate().zip(samples))
            .map(|((i, stage), sample)| {
                let mut view = Self::of(stage);
                if let (Some(canary), Some(stats)) = (chain.canary(i), chain.canary_stats(i)) {
                    view.canary = Some((Box::new(Self::of(canary)), sample, stats));
                }
                view
            })
            .collect()
    }

    fn to_json(&self, metrics: &Metrics) -> Value {
        let mut value = json!({
            "name": self.name,
            "plugin": self.plugin.display().to_string(),
            "sha256": self.sha256,
            "version": &self.sha256[..12],
            "loaded_at": rfc3339(self.loaded_at),
            "code": self.code,
            "load_ms": round(self.load_ms),
            "config": self.config,
            "lookups": self.lookups,
            "writes": self.writes,
            "limits": {
                "memory_mib": self.limits.memory_mib,
                "timeout_ms": self.limits.timeout_ms,
                "max_retries": self.limits.max_retries,
                "stack_kib": self.limits.stack_kib,
                "results_mib": self.limits.results_mib,
                "max_outputs": self.limits.max_outputs,
                "max_effects": self.limits.max_effects,
            },
            "on_failure": match self.on_failure {
                config::FailurePolicy::DeadLetter => "dead-letter",
                config::FailurePolicy::Halt => "halt",
            },
            // How its values cross from the stage before and to the next.
            "values": { "input": self.encodings.input.as_str(), "output": self.encodings.output.as_str() },
            "records": metrics.stage_counts(&self.name),
            "plugin_failures": metrics.plugin_failures(&self.name),
            "state": metrics.state_of(&self.name),
        });
        if let Some((candidate, sample, stats)) = &self.canary {
            let stats = stats.lock().expect("canary lock").clone();
            value["canary"] = json!({
                "plugin": candidate.plugin.display().to_string(),
                "sha256": candidate.sha256,
                "version": &candidate.sha256[..12],
                "loaded_at": rfc3339(candidate.loaded_at),
                "code": candidate.code,
                "sample": sample,
                "compared": stats.compared,
                "diffs": stats.diffs,
                "failures": stats.failures,
                "examples": stats.examples,
            });
        }
        value
    }
}

/// The live pipeline and the last reload, for the admin API.
#[derive(Default)]
pub struct PipelineStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Default)]
struct StatusInner {
    file: PathBuf,
    generation: u64,
    live_since: Option<SystemTime>,
    config: Option<PipelineConfig>,
    stages: Vec<StageView>,
    promoted: Vec<String>,
    last_reload: Option<ReloadReport>,
    last_error: Option<ReloadReport>,
}

impl PipelineStatus {
    /// Records the pipeline that is live now.
    pub fn set_live(&self, file: &Path, generation: u64, config: &PipelineConfig, stages: Vec<StageView>) {
        let mut s = self.inner.lock().expect("status lock");
        s.file = file.to_path_buf();
        s.generation = generation;
        s.live_since = Some(SystemTime::now());
        s.config = Some(config.clone());
        s.stages = stages;
    }

    /// Records the last reload and the canaries promoted so far.
    pub fn set_report(&self, report: &ReloadReport, promoted: Vec<String>) {
        let mut s = self.inner.lock().expect("status lock");
        s.last_reload = Some(report.clone());
        if matches!(report.result, ReloadOutcome::Rejected | ReloadOutcome::RestartRequired) {
            s.last_error = Some(report.clone());
        }
        s.promoted = promoted;
    }

    /// Whether a stage of that name is live, and whether it has a canary.
    pub fn stage(&self, name: &str) -> Option<bool> {
        let s = self.inner.lock().expect("status lock");
        s.stages.iter().find(|v| v.name == name).map(|v| v.canary.is_some())
    }

    /// Whether a pipeline is live yet.
    pub fn is_live(&self) -> bool {
        self.inner.lock().expect("status lock").config.is_some()
    }

    /// The `GET /api/pipeline` document.
    pub fn to_json(&self, metrics: &Metrics) -> Value {
        let s = self.inner.lock().expect("status lock");
        let config = s.config.as_ref();
        json!({
            "file": s.file.display().to_string(),
            "generation": s.generation,
            "live_since": s.live_since.map(rfc3339),
            "ready": metrics.is_ready(),
            "delivery": config.map(|c| match c.delivery {
                config::Delivery::AtLeastOnce => "at-least-once",
                config::Delivery::ExactlyOnce => "exactly-once",
            }),
            "commit_interval_ms": config.map(|c| c.commit_interval_ms),
            "source": config.map(|c| json!({
                "topics": c.source.topics,
                "batch_size": c.source.batch_size,
                "batch_max_bytes": c.source.batch_max_bytes,
                "max_record_bytes": c.source.max_record_bytes,
            })),
            "output": config.map(|c| &c.output.topic),
            "dead_letter": config.map(|c| &c.dead_letter.topic),
            "routes": config.map(|c| c.routes.iter().map(|(k, v)| (k.clone(), v.topic.clone())).collect::<BTreeMap<_, _>>()),
            "output_tables": config.map(|c| &c.output.tables),
            "tables": config.map(|c| c.tables.keys().cloned().collect::<Vec<_>>()),
            "lookups": config.map(|c| c.lookups.keys().cloned().collect::<Vec<_>>()),
            "stages": s.stages.iter().map(|v| v.to_json(metrics)).collect::<Vec<_>>(),
            "promoted": s.promoted,
            "last_reload": s.last_reload,
            "last_error": s.last_error,
        })
    }
}

/// Milliseconds rounded to the microsecond.
pub fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// `2026-11-22T10:04:05.123Z`: RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_utc_to_the_millisecond() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_342_245_123);
        assert_eq!(rfc3339(t), "2026-11-22T10:10:45.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
