//! Live reloads: the watcher, the reloader and what the admin API shows of
//! the live pipeline.
//!
//! A reload is triggered by a change to pipeline.toml or to a plugin file it
//! names (noticed by polling, so editors that save by rename, half-copied
//! files and Kubernetes ConfigMap symlink swaps all work), by
//! `POST /api/reload`, by SIGHUP, or by promoting a canary. The reloader
//! parses the file, refuses changes that need a restart, builds the new
//! chain off the hot path (compiling only plugins whose bytes are new),
//! probes it on recent records, and hands it to the run loop, which puts it
//! live between two batches. Until then, and whenever anything fails, the
//! old pipeline keeps running.

use crate::config::{self, Pipeline, PipelineConfig};
use crate::engine::{CodeOrigin, Engine};
use crate::metrics::Metrics;
use crate::pipeline::{CanaryStats, Chain, LookupSource, Stage};
use crate::record::Record;
use crate::redis::RedisLookups;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// How often the watched files are checked. Default 100 ms: a change is
/// noticed quickly, at the cost of a few `stat` calls.
pub const POLL: Duration = Duration::from_millis(100);
/// How long a changed file must stay unchanged before it is reloaded, so
/// that a file being copied is read once, complete. Default 200 ms.
pub const SETTLE: Duration = Duration::from_millis(200);
/// Most records kept to probe a new pipeline with.
pub const PROBE_RECORDS: usize = 16;

/// What asked for a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file changed.
    Watch,
    /// SIGHUP.
    Signal,
    /// `POST /api/reload`.
    Api,
    /// `POST /api/promote/{stage}`.
    Promote(String),
}

impl Trigger {
    fn label(&self) -> String {
        match self {
            Self::Watch => "file-change".into(),
            Self::Signal => "sighup".into(),
            Self::Api => "api".into(),
            Self::Promote(stage) => format!("promote {stage}"),
        }
    }
}

/// A reload request, answered with its report when `reply` is set.
pub struct Request {
    /// Why.
    pub trigger: Trigger,
    /// Where to send the report.
    pub reply: Option<oneshot::Sender<Report>>,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The new pipeline is live.
    Applied,
    /// Nothing changed; the live pipeline stays.
    Unchanged,
    /// The new pipeline is invalid; the old one keeps running.
    Rejected,
    /// The change needs a restart; the old pipeline keeps running.
    RestartRequired,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Rejected => "rejected",
            Self::RestartRequired => "restart-required",
        }
    }
}

/// The report of one reload.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What asked for it.
    pub trigger: String,
    /// How it ended.
    pub result: Outcome,
    /// The generation live afterwards.
    pub generation: u64,
    /// What changed (when applied or needing a restart).
    pub changes: Vec<String>,
    /// Why it was rejected.
    pub error: Option<String>,
    /// When it started (RFC 3339, UTC).
    pub at: String,
    /// From the trigger to the new pipeline being live (or to the refusal).
    pub duration_ms: f64,
}

/// A new chain for the run loop to put live between two batches.
pub struct Swap {
    /// The chain, with its generation set.
    pub chain: Chain,
    /// The pipeline it was built from.
    pub pipeline: Pipeline,
    /// Gets the live stages once the chain is live.
    pub applied: oneshot::Sender<Vec<StageView>>,
}

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
            "records": metrics.stage_counts(&self.name),
            "plugin_failures": metrics.plugin_failures(&self.name),
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
pub struct Status {
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
    last_reload: Option<Report>,
    last_error: Option<Report>,
}

impl Status {
    /// Records the pipeline that is live now.
    pub fn set_live(&self, file: &Path, generation: u64, config: &PipelineConfig, stages: Vec<StageView>) {
        let mut s = self.inner.lock().expect("status lock");
        s.file = file.to_path_buf();
        s.generation = generation;
        s.live_since = Some(SystemTime::now());
        s.config = Some(config.clone());
        s.stages = stages;
    }

    fn set_report(&self, report: &Report, promoted: Vec<String>) {
        let mut s = self.inner.lock().expect("status lock");
        s.last_reload = Some(report.clone());
        if matches!(report.result, Outcome::Rejected | Outcome::RestartRequired) {
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
            "lookups": config.map(|c| c.lookups.keys().cloned().collect::<Vec<_>>()),
            "stages": s.stages.iter().map(|v| v.to_json(metrics)).collect::<Vec<_>>(),
            "promoted": s.promoted,
            "last_reload": s.last_reload,
            "last_error": s.last_error,
        })
    }
}

/// Builds new pipelines when asked and hands them to the run loop.
pub struct Reloader {
    /// pipeline.toml.
    pub path: PathBuf,
    /// The engine plugins are compiled with (and cached in).
    pub engine: Engine,
    /// The pipeline as last read from the file and applied.
    pub file: Pipeline,
    /// What is live: `file` with the promoted canaries made live.
    pub live: Pipeline,
    /// The lookups of the live pipeline.
    pub lookups: Arc<dyn LookupSource>,
    /// The live generation.
    pub generation: u64,
    /// Promoted canaries: stage name -> the canary plugin made live.
    pub promoted: BTreeMap<String, PathBuf>,
    /// Recent records to probe new pipelines with.
    pub probe: Arc<Mutex<Vec<Record>>>,
    /// Where the run loop takes new chains from.
    pub swaps: mpsc::Sender<Swap>,
    /// What the admin API shows.
    pub status: Arc<Status>,
    /// Reload counters.
    pub metrics: Arc<Metrics>,
    /// The files the watcher polls.
    pub watched: Arc<Mutex<Vec<PathBuf>>>,
    /// sha256 of every plugin file of the live pipeline, by path.
    pub versions: HashMap<PathBuf, String>,
}

impl Reloader {
    /// Serves reload requests until the channel closes.
    pub async fn serve(mut self, mut requests: mpsc::Receiver<Request>) {
        self.set_watched(&self.file.clone());
        while let Some(first) = requests.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = requests.try_recv() {
                batch.push(more);
            }
            // Every file change, signal and API call queued so far is served
            // by one reload; promotions each get their own.
            let (promotions, reloads): (Vec<Request>, Vec<Request>) =
                batch.into_iter().partition(|r| matches!(r.trigger, Trigger::Promote(_)));
            if let Some(first) = reloads.first() {
                let report = self.reload(first.trigger.clone()).await;
                for request in reloads {
                    if let Some(reply) = request.reply {
                        let _ = reply.send(report.clone());
                    }
                }
            }
            for request in promotions {
                let report = self.reload(request.trigger.clone()).await;
                if let Some(reply) = request.reply {
                    let _ = reply.send(report);
                }
            }
        }
    }

    async fn reload(&mut self, trigger: Trigger) -> Report {
        let started = Instant::now();
        let at = rfc3339(SystemTime::now());
        let promoted = self.promoted.clone();
        let attempt = self.attempt(&trigger).await;
        if attempt.is_err() {
            self.promoted = promoted;
        }
        let (result, changes, error) = match attempt {
            Ok(Some(changes)) => (Outcome::Applied, changes, None),
            Ok(None) => (Outcome::Unchanged, Vec::new(), None),
            Err(Refused::Restart(keys)) => (Outcome::RestartRequired, keys, None),
            Err(Refused::Invalid(error)) => (Outcome::Rejected, Vec::new(), Some(error)),
        };
        let report = Report {
            trigger: trigger.label(),
            result,
            generation: self.generation,
            changes,
            error,
            at,
            duration_ms: round(started.elapsed().as_secs_f64() * 1e3),
        };
        match report.result {
            Outcome::Applied => tracing::info!(
                trigger = %report.trigger, generation = report.generation, ms = report.duration_ms,
                changes = ?report.changes, "reload applied"
            ),
            Outcome::Unchanged => tracing::info!(trigger = %report.trigger, "reload: nothing changed"),
            Outcome::Rejected => tracing::error!(
                trigger = %report.trigger, error = report.error.as_deref().unwrap_or(""),
                "reload rejected: the previous pipeline keeps running"
            ),
            Outcome::RestartRequired => tracing::warn!(
                trigger = %report.trigger, keys = ?report.changes,
                "these settings only change with a restart: the running pipeline is unchanged"
            ),
        }
        self.metrics.record_reload(report.result.label());
        self.status.set_report(&report, self.promoted.keys().cloned().collect());
        report
    }

    /// Builds and applies the new pipeline: `Ok(Some(changes))` when it is
    /// live, `Ok(None)` when nothing changed.
    async fn attempt(&mut self, trigger: &Trigger) -> Result<Option<Vec<String>>, Refused> {
        let file = match trigger {
            Trigger::Promote(stage) => {
                let canary = self.file.config.stages.iter().find(|s| s.name.get_ref() == stage);
                let Some(canary) = canary.and_then(|s| s.canary.as_ref()) else {
                    return Err(Refused::Invalid(format!("stage `{stage}` has no canary to promote")));
                };
                self.promoted.insert(stage.clone(), canary.plugin.clone());
                self.file.clone()
            }
            _ => {
                let file = config::load_file(&self.path)
                    .map_err(|e| Refused::Invalid(format!("{}: {e}", self.path.display())))?;
                self.set_watched(&file);
                file
            }
        };
        let restart = self.file.config.restart_required(&file.config);
        if !restart.is_empty() {
            return Err(Refused::Restart(restart.into_iter().map(String::from).collect()));
        }
        let live = self.promote(&file);
        let lookups: Arc<dyn LookupSource> = if live.config.lookups == self.live.config.lookups {
            self.lookups.clone()
        } else {
            Arc::new(
                RedisLookups::new(&live.config.redis.url, &live.config.lookups)
                    .map_err(|e| Refused::Invalid(format!("redis.url: {e}")))?,
            )
        };
        let (engine, build_from, build_lookups) = (self.engine.clone(), live.clone(), lookups.clone());
        let probe: Vec<Record> = self.probe.lock().expect("probe lock").clone();
        let built = tokio::task::spawn_blocking(move || {
            let mut chain = Chain::build(&engine, &build_from, build_lookups).map_err(|e| e.to_string())?;
            if !probe.is_empty() {
                chain.probe(&probe)?;
            }
            Ok::<_, String>(chain)
        })
        .await
        .map_err(|e| Refused::Invalid(format!("the reload task failed: {e}")))?;
        let mut chain = built.map_err(Refused::Invalid)?;
        let versions = versions(&chain);
        let changes = changes(&self.live, &self.versions, &live, &versions);
        if changes.is_empty() {
            self.file = file;
            return Ok(None);
        }
        chain.set_generation(self.generation + 1);
        let (applied, views) = oneshot::channel();
        let swap = Swap { chain, pipeline: live.clone(), applied };
        if self.swaps.send(swap).await.is_err() {
            return Err(Refused::Invalid("the host is stopping".into()));
        }
        let stages = views.await.map_err(|_| Refused::Invalid("the host is stopping".into()))?;
        self.generation += 1;
        self.metrics.generation.store(self.generation, std::sync::atomic::Ordering::Relaxed);
        self.status.set_live(&self.path, self.generation, &live.config, stages);
        (self.file, self.live, self.lookups, self.versions) = (file, live, lookups, versions);
        Ok(Some(changes))
    }

    /// `file` with the promoted canaries made live; promotions whose canary
    /// is no longer in the file are dropped.
    fn promote(&mut self, file: &Pipeline) -> Pipeline {
        let mut live = file.clone();
        self.promoted.retain(|stage, plugin| {
            let found = live.config.stages.iter_mut().find(|s| s.name.get_ref() == stage);
            match found {
                Some(s) if s.canary.as_ref().is_some_and(|c| &c.plugin == plugin) => {
                    s.plugin = plugin.clone();
                    s.canary = None;
                    true
                }
                _ => false,
            }
        });
        live
    }

    fn set_watched(&self, file: &Pipeline) {
        let mut files = vec![self.path.clone()];
        for path in file.plugin_files().into_iter().chain(self.live.plugin_files()) {
            if !files.contains(&path) {
                files.push(path);
            }
        }
        *self.watched.lock().expect("watched lock") = files;
    }
}

enum Refused {
    Restart(Vec<String>),
    Invalid(String),
}

/// sha256 of every plugin file of `chain`, by path.
pub fn versions(chain: &Chain) -> HashMap<PathBuf, String> {
    let mut versions = HashMap::new();
    for (i, stage) in chain.stages().iter().enumerate() {
        for s in std::iter::once(stage).chain(chain.canary(i)) {
            let c = &s.spec().component;
            versions.insert(c.path.clone(), c.sha256.clone());
        }
    }
    versions
}

/// What differs between two pipelines, readably; empty when nothing does.
fn changes(
    old: &Pipeline,
    old_versions: &HashMap<PathBuf, String>,
    new: &Pipeline,
    new_versions: &HashMap<PathBuf, String>,
) -> Vec<String> {
    let mut changes = Vec::new();
    let (a, b) = (&old.config, &new.config);
    let names = |c: &PipelineConfig| c.stages.iter().map(|s| s.name.get_ref().clone()).collect::<Vec<_>>();
    let (old_names, new_names) = (names(a), names(b));
    for name in &new_names {
        if !old_names.contains(name) {
            changes.push(format!("stage `{name}` added"));
        }
    }
    for name in &old_names {
        if !new_names.contains(name) {
            changes.push(format!("stage `{name}` removed"));
        }
    }
    let common = |names: &[String], other: &[String]| -> Vec<String> {
        names.iter().filter(|n| other.contains(n)).cloned().collect()
    };
    if common(&old_names, &new_names) != common(&new_names, &old_names) {
        changes.push(format!("stages reordered: {}", new_names.join(" -> ")));
    }
    let version = |versions: &HashMap<PathBuf, String>, pipeline: &Pipeline, plugin: &Path| {
        versions.get(&pipeline.base_dir.join(plugin)).map(|v| v[..12].to_string()).unwrap_or_default()
    };
    for s in &b.stages {
        let Some(o) = a.stages.iter().find(|o| o.name == s.name) else { continue };
        let name = s.name.get_ref();
        let (v_old, v_new) = (version(old_versions, old, &o.plugin), version(new_versions, new, &s.plugin));
        if v_old != v_new {
            changes.push(format!("stage `{name}`: plugin {v_old} -> {v_new}"));
        } else if o.plugin != s.plugin {
            changes.push(format!("stage `{name}`: plugin path {}", s.plugin.display()));
        }
        if o.config != s.config {
            changes.push(format!("stage `{name}`: config"));
        }
        if o.lookups != s.lookups || o.limits != s.limits || o.on_failure != s.on_failure {
            changes.push(format!("stage `{name}`: lookups, limits or on_failure"));
        }
        let canary_version = |c: &Option<config::CanaryConfig>, versions, pipeline| {
            c.as_ref().map(|c| (version(versions, pipeline, &c.plugin), c.sample))
        };
        if canary_version(&o.canary, old_versions, old) != canary_version(&s.canary, new_versions, new) {
            changes.push(format!("stage `{name}`: canary"));
        }
    }
    let mut differs = |key: &str, same: bool| {
        if !same {
            changes.push(key.to_string());
        }
    };
    differs("commit_interval_ms", a.commit_interval_ms == b.commit_interval_ms);
    differs("source.topics", a.source.topics == b.source.topics);
    differs("source.batch_size", a.source.batch_size == b.source.batch_size);
    differs("source.batch_max_bytes", a.source.batch_max_bytes == b.source.batch_max_bytes);
    differs("source.max_record_bytes", a.source.max_record_bytes == b.source.max_record_bytes);
    differs("output.topic", a.output.topic == b.output.topic);
    differs("dead_letter.topic", a.dead_letter.topic == b.dead_letter.topic);
    differs("routes", a.routes == b.routes);
    differs("lookups", a.lookups == b.lookups);
    changes
}

/// Polls the watched files and asks for a reload once a change has settled.
pub async fn watch(watched: Arc<Mutex<Vec<PathBuf>>>, requests: mpsc::Sender<Request>) {
    let mut seen: Vec<(PathBuf, Option<Fingerprint>)> = Vec::new();
    let mut changed_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let files = watched.lock().expect("watched lock").clone();
        let now: Vec<(PathBuf, Option<Fingerprint>)> =
            files.into_iter().map(|f| (f.clone(), fingerprint(&f))).collect();
        // A file that joins the list is not a change (it was just loaded);
        // a file on both lists that differs is.
        let changed = now.iter().any(|(path, print)| seen.iter().any(|(p, old)| p == path && old != print));
        seen = now;
        if changed {
            changed_at = Some(Instant::now());
            continue;
        }
        if changed_at.is_some_and(|at| at.elapsed() >= SETTLE) {
            changed_at = None;
            if requests.send(Request { trigger: Trigger::Watch, reply: None }).await.is_err() {
                return;
            }
        }
    }
}

/// What tells a file's versions apart without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    changed: i64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
        changed: m.ctime_nsec() + m.ctime() * 1_000_000_000,
    })
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// `2026-11-22T10:04:05.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_342_245_123);
        assert_eq!(rfc3339(t), "2026-11-22T10:10:45.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
