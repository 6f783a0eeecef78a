//! Live reloads: the protocol. The file watcher is in `watcher`, what changed
//! between two pipelines in `diff`; what the admin API shows of the live
//! pipeline is in `http::views`.
//!
//! A reload is triggered by a change to pipeline.toml or to a plugin file it
//! names (noticed by polling, so editors that save by rename, half-copied
//! files and Kubernetes ConfigMap symlink swaps all work), by
//! `POST /api/reload`, by SIGHUP, or by promoting a canary. The reloader
//! parses the file, refuses changes that need a restart, builds the new
//! chain off the hot path (compiling only plugins whose bytes are new),
//! probes it on recent records and puts it live itself, between two batches
//! (the run loop holds the live chain's lock while it processes one); the
//! run loop then takes the new source settings (topics, batching, commit
//! interval). Until then, and whenever anything fails, the old pipeline keeps
//! running.

mod diff;
mod watcher;

pub use watcher::{POLL, SETTLE, watch};

use crate::config::{self, Pipeline, PipelineConfig};
use crate::engine::Engine;
use crate::http::views::{PipelineStatus, StageView, rfc3339, round};
use crate::lookup::LookupSource;
use crate::metrics::Metrics;
use crate::pipeline::Chain;
use crate::record::Record;
use crate::redis::RedisLookups;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

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
    pub reply: Option<oneshot::Sender<ReloadReport>>,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadOutcome {
    /// The new pipeline is live.
    Applied,
    /// Nothing changed; the live pipeline stays.
    Unchanged,
    /// The new pipeline is invalid; the old one keeps running.
    Rejected,
    /// The change needs a restart; the old pipeline keeps running.
    RestartRequired,
}

impl ReloadOutcome {
    /// The `result` label of `sluice_reloads_total`.
    pub fn label(self) -> &'static str {
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
pub struct ReloadReport {
    /// What asked for it.
    pub trigger: String,
    /// How it ended.
    pub result: ReloadOutcome,
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
    /// The stages' keyed state.
    pub state: Arc<crate::state::StateStore>,
    /// The live generation.
    pub generation: u64,
    /// Promoted canaries: stage name -> the canary plugin made live.
    pub promoted: BTreeMap<String, PathBuf>,
    /// Recent records to probe new pipelines with.
    pub probe: Arc<Mutex<Vec<Record>>>,
    /// Where the run loop takes the source settings of each reload from.
    pub configs: watch::Sender<Arc<PipelineConfig>>,
    /// The live chain, which a reload replaces between two batches.
    pub chain: Arc<Mutex<Chain>>,
    /// What the admin API shows.
    pub status: Arc<PipelineStatus>,
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

    async fn reload(&mut self, trigger: Trigger) -> ReloadReport {
        let started = Instant::now();
        let at = rfc3339(SystemTime::now());
        let promoted = self.promoted.clone();
        let attempt = self.attempt(&trigger).await;
        if attempt.is_err() {
            self.promoted = promoted;
        }
        let (result, changes, error) = match attempt {
            Ok(Some(changes)) => (ReloadOutcome::Applied, changes, None),
            Ok(None) => (ReloadOutcome::Unchanged, Vec::new(), None),
            Err(Refused::Restart(keys)) => (ReloadOutcome::RestartRequired, keys, None),
            Err(Refused::Invalid(error)) => (ReloadOutcome::Rejected, Vec::new(), Some(error)),
        };
        let report = ReloadReport {
            trigger: trigger.label(),
            result,
            generation: self.generation,
            changes,
            error,
            at,
            duration_ms: round(started.elapsed().as_secs_f64() * 1e3),
        };
        match report.result {
            ReloadOutcome::Applied => tracing::info!(
                trigger = %report.trigger, generation = report.generation, ms = report.duration_ms,
                changes = ?report.changes, "reload applied"
            ),
            ReloadOutcome::Unchanged => tracing::info!(trigger = %report.trigger, "reload: nothing changed"),
            ReloadOutcome::Rejected => tracing::error!(
                trigger = %report.trigger, error = report.error.as_deref().unwrap_or(""),
                "reload rejected: the previous pipeline keeps running"
            ),
            ReloadOutcome::RestartRequired => tracing::warn!(
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
        let build_state = self.state.clone();
        let probe: Vec<Record> = self.probe.lock().expect("probe lock").clone();
        let built = tokio::task::spawn_blocking(move || {
            let mut chain = Chain::build(&engine, &build_from, build_lookups, build_state)
                .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
            if !probe.is_empty() {
                chain.probe(&probe)?;
            }
            Ok::<_, String>(chain)
        })
        .await
        .map_err(|e| Refused::Invalid(format!("the reload task failed: {e}")))?;
        let mut chain = built.map_err(Refused::Invalid)?;
        let versions = versions(&chain);
        let changes = diff::changes(&self.live, &self.versions, &live, &versions);
        if changes.is_empty() {
            self.file = file;
            return Ok(None);
        }
        chain.set_generation(self.generation + 1);
        let stages = swap(&self.chain, chain, &live.config)
            .await
            .map_err(|e| Refused::Invalid(format!("the reload task failed: {e}")))?;
        self.generation += 1;
        tracing::info!(generation = self.generation, "pipeline generation live");
        self.configs.send_replace(Arc::new(live.config.clone()));
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

/// Puts `new` live in place of the chain in `live`, between two batches
/// (the run loop holds the lock while it processes one): the instances of
/// unchanged stages carry over, and the old chain is dropped outside the
/// lock. Returns the stages as the admin API shows them.
async fn swap(
    live: &Arc<Mutex<Chain>>,
    mut new: Chain,
    config: &PipelineConfig,
) -> Result<Vec<StageView>, tokio::task::JoinError> {
    let (live, config) = (live.clone(), config.clone());
    tokio::task::spawn_blocking(move || {
        let mut current = live.lock().expect("chain lock");
        new.adopt_unchanged(&mut current);
        let old = std::mem::replace(&mut *current, new);
        let stages = StageView::all(&current, &config);
        drop(current);
        drop(old);
        stages
    })
    .await
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
