//! `sluice run`: the composition root and the consume -> process -> apply
//! -> deliver loop.
//!
//! The source reads ahead on its own task into a bounded buffer (two
//! batches); the loop takes what is waiting as soon as it is free, so a
//! batch never waits to fill and batches grow with the load. Each batch
//! goes through the chain, on a blocking thread, while the batch before it
//! is written to the peers. Its rows for PostgreSQL tables are written
//! first, with a per-partition offset fence in the same PostgreSQL
//! transaction; a record with a row PostgreSQL refuses is dead-lettered
//! (`row_refused`) and produces nothing more. Its Redis effects are applied
//! next, behind a per-partition offset fence, so a replayed record never
//! applies them twice, and a record whose effects Redis refuses is
//! dead-lettered (`effect_failed`) and produces nothing more (its rows,
//! written by then, stay). The delivery mode
//! ([`crate::delivery`]) then writes its outputs and commits its offsets.
//! Transient failures (lookups, broker, Redis) are retried with backoff
//! while the batch waits; nothing is skipped.

use crate::bindings::ErrorInfo;
use crate::config::{self, Delivery, PipelineConfig};
use crate::delivery::{AtLeastOnce, ExactlyOnce, Mode, Processing, Steps};
use crate::engine::Engine;
use crate::http;
use crate::http::views::{PipelineStatus, StageView};
use crate::kafka::{Commit, Sink, Source, Writer};
use crate::lookup::LookupSource;
use crate::metrics::Metrics;
use crate::pipeline::{BatchResult, Chain, HostRefusal};
use crate::postgres::{FENCES, Tables, Written};
use crate::record::{Batch, Effect, Record};
use crate::redis::{Applied, Fence, RecordEffect, RedisEffects, RedisLookups, RedisState};
use crate::reload::{self, PROBE_RECORDS, Reloader, Request, Trigger};
use crate::state::StateStore;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Runs the pipeline until SIGINT or SIGTERM, then finishes the batch in
/// flight, commits and returns. `path` is watched for live reloads.
/// With `status_line_on_tty`, a status line is printed every few seconds when stderr is
/// a terminal.
pub async fn run(path: &Path, pipeline: config::Pipeline, status_line_on_tty: bool) -> anyhow::Result<()> {
    let config = pipeline.config.clone();
    let metrics = Arc::new(Metrics::default());
    let pipeline_status = Arc::new(PipelineStatus::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (requests, requests_rx) = mpsc::channel::<Request>(64);
    tokio::spawn(handle_signals(stop_tx, requests.clone()));

    let addr: SocketAddr = config
        .admin
        .addr
        .parse()
        .with_context(|| format!("admin.addr `{}` is not an address like 127.0.0.1:8080", config.admin.addr))?;
    let admin = http::Admin {
        metrics: metrics.clone(),
        status: pipeline_status.clone(),
        requests: requests.clone(),
        report: Arc::new(crate::tools::report::Cached::new(crate::tools::report::Counters::of(&config))),
        ingest: Arc::new(http::Ingest {
            producer: Writer::for_pipeline(&config).context("cannot create the ingest producer")?,
            topics: config.admin.ingest_topics.clone().unwrap_or_else(|| config.source.topics.clone()),
            max_bytes: config.admin.ingest_max_bytes.get(),
            permits: Arc::new(tokio::sync::Semaphore::new(http::INGEST_CONCURRENCY)),
        }),
        token: std::env::var("SLUICE_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()).map(Arc::from),
        allowed_hosts: config.admin.allowed_hosts.clone().into(),
    };
    http::check_exposure(addr, admin.token.is_some(), config.admin.insecure).map_err(anyhow::Error::msg)?;
    let http =
        http::serve(addr, admin, stopped(stop_rx.clone())).await.with_context(|| format!("cannot listen on {addr}"))?;

    let engine = Engine::new()?;
    let lookups: Arc<dyn LookupSource> =
        Arc::new(RedisLookups::new(&config.redis.url, &config.lookups).context("redis.url")?);
    let started = std::time::Instant::now();
    let redis_state = RedisState::new(&config.redis.url, &config.redis.state_prefix).context("redis.url")?;
    let state = StateStore::new(&config.redis.state_prefix, Box::new(redis_state.handle()));
    metrics.watch_state(state.clone());
    let measuring = tokio::spawn(measure_state(redis_state.handle(), state.clone()));
    let (build_engine, build_pipeline, build_lookups, build_state) =
        (engine.clone(), pipeline.clone(), lookups.clone(), state.clone());
    let chain =
        tokio::task::spawn_blocking(move || Chain::build(&build_engine, &build_pipeline, build_lookups, build_state))
            .await??;
    for stage in chain.stages() {
        let c = &stage.spec().component;
        tracing::info!(
            stage = %stage.name(), plugin = %c.path.display(), version = c.version(), code = ?c.origin,
            load_ms = c.load_time.as_millis() as u64, "stage loaded"
        );
    }
    tracing::info!(ms = started.elapsed().as_millis() as u64, stages = chain.stages().len(), "pipeline loaded");
    pipeline_status.set_live(path, 1, &config, StageView::all(&chain, &config));
    metrics.generation.store(1, Ordering::Relaxed);
    let probe = Arc::new(Mutex::new(Vec::new()));
    let watched = Arc::new(Mutex::new(Vec::new()));
    let (configs, configs_rx) = watch::channel(Arc::new(config.clone()));
    let versions = reload::versions(&chain);
    let chain = Arc::new(Mutex::new(chain));
    let reloader = Reloader {
        path: path.to_path_buf(),
        engine,
        file: pipeline.clone(),
        live: pipeline.clone(),
        lookups,
        state: state.clone(),
        generation: 1,
        promoted: Default::default(),
        probe: probe.clone(),
        configs,
        status: pipeline_status.clone(),
        metrics: metrics.clone(),
        watched: watched.clone(),
        versions,
        chain: chain.clone(),
    };
    let reloads = tokio::spawn(reloader.serve(requests_rx));
    let on_terminal = status_line_on_tty && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let status_line = on_terminal.then(|| tokio::spawn(status_line(metrics.clone())));
    let watcher = tokio::spawn(reload::watch(watched, requests));

    let sources: Vec<_> = config
        .http_sources
        .keys()
        .map(|name| {
            let source = crate::http_source::HttpSource::new(name, &config, metrics.clone())?;
            tracing::info!(source = %name, topic = %config.http_sources[name].topic, "polling an HTTP source");
            Ok(tokio::spawn(source.run(stop_rx.clone())))
        })
        .collect::<anyhow::Result<_>>()?;
    let live_config = config.clone();
    let mut effects = RedisEffects::new(&config.redis.url).context("redis.url")?;
    adopt_group_fences(&mut effects, &config).await;
    let mut tables = Tables::new(&config).map_err(anyhow::Error::msg)?;
    if let Err(e) = tables.connect().await {
        // Waited out with the first batch that has rows.
        tracing::warn!(error = %e, "cannot prepare the PostgreSQL tables yet");
    }
    let source = Source::new(&config, metrics.clone()).context("cannot create the Kafka consumer")?;
    let on_revoke = state.clone();
    source.also_on_revoke(Box::new(move |revoked| on_revoke.revoked(revoked)));
    let exactly_once = config.delivery == Delivery::ExactlyOnce;
    let transactional_id = exactly_once.then(|| format!("{}-{}", config.kafka.group, instance_id(&config)));
    let sink = Sink::new(&config, transactional_id.as_deref()).context("cannot create the Kafka producer")?;
    tracing::info!(
        topics = ?config.source.topics, group = %config.kafka.group, brokers = %config.kafka.brokers,
        delivery = ?config.delivery, transactional_id = transactional_id.as_deref().unwrap_or("-"), "consuming"
    );
    metrics.ready.store(true, Ordering::Relaxed);

    let every = Duration::from_millis(config.commit_interval_ms.get());
    let mut steps = Steps { config: &config, metrics: &metrics, stop: stop_rx.clone(), sink, rewinds: 0 };
    let mut consuming = Consuming {
        source: &source,
        chain: &chain,
        probe: &probe,
        effects,
        redis_state,
        state,
        tables,
        live_config,
        configs: configs_rx,
        metrics: &metrics,
        stop: stop_rx.clone(),
    };
    let outcome = match config.delivery {
        Delivery::AtLeastOnce => consuming.run(AtLeastOnce::new(every), &mut steps).await,
        Delivery::ExactlyOnce => consuming.run(ExactlyOnce::new(every), &mut steps).await,
    };
    metrics.ready.store(false, Ordering::Relaxed);
    watcher.abort();
    reloads.abort();
    measuring.abort();
    for source in sources {
        source.abort();
    }
    if let Some(task) = status_line {
        task.abort();
    }
    source.unsubscribe();
    if let Err(e) = steps.sink.flush(Duration::from_secs(5)) {
        tracing::warn!(error = %e, "producer flush at exit");
    }
    http.abort();
    let in_ = metrics.records_in.load(Ordering::Relaxed);
    tracing::info!(records = in_, dead_letters = metrics.dead_letter_total(), "stopped");
    outcome
}

/// The consume -> process -> apply -> deliver loop, and what it holds.
struct Consuming<'a> {
    source: &'a Source,
    chain: &'a Arc<Mutex<Chain>>,
    probe: &'a Mutex<Vec<Record>>,
    effects: RedisEffects,
    /// Where stages' keyed state is made durable.
    redis_state: RedisState,
    state: Arc<StateStore>,
    /// The PostgreSQL table outputs.
    tables: Tables,
    /// The settings of the source now live.
    live_config: PipelineConfig,
    /// The pipeline of each reload, once its chain is live.
    configs: watch::Receiver<Arc<PipelineConfig>>,
    metrics: &'a Metrics,
    stop: watch::Receiver<bool>,
}

impl Consuming<'_> {
    /// Runs batches until a stop is requested, delivering them with
    /// `mode`, then settles what is in flight and commits.
    async fn run<M: Mode>(&mut self, mut mode: M, steps: &mut Steps<'_>) -> anyhow::Result<()> {
        self.source.handover().serve();
        let outcome = self.turns(&mut mode, steps).await;
        self.source.handover().close();
        mode.shutdown(self.source);
        outcome
    }

    /// Applies a reloaded pipeline's source settings: resubscribes when
    /// the input topics changed (once every batch taken is delivered and
    /// committed), and takes its batching and commit interval.
    async fn reconfigure<M: Mode>(
        &mut self,
        next: &PipelineConfig,
        mode: &mut M,
        steps: &mut Steps<'_>,
    ) -> anyhow::Result<()> {
        if next.source.topics != self.live_config.source.topics {
            mode.settle(steps, self.source).await?;
            let at_least_once = self.live_config.delivery == Delivery::AtLeastOnce;
            if at_least_once && let Err(e) = self.source.commit_stored(Commit::Sync) {
                tracing::warn!(error = %e, "offset commit before resubscribing failed; some records may be read again");
            }
            self.source.resubscribe(&next.source.topics).context("cannot subscribe to the new source.topics")?;
            self.metrics.retain_topics(&next.source.topics);
            tracing::info!(topics = ?next.source.topics, "resubscribed");
        }
        self.source.set_batching(next.source.batch_size.get(), next.source.batch_max_bytes.get());
        mode.set_commit_interval(Duration::from_millis(next.commit_interval_ms.get()));
        self.live_config = next.clone();
        Ok(())
    }

    async fn turns<M: Mode>(&mut self, mode: &mut M, steps: &mut Steps<'_>) -> anyhow::Result<()> {
        let mut probe_taken = std::time::Instant::now() - PROBE_EVERY;
        // The next batch, in the chain while the one before it is finished.
        let mut ahead: Option<Processing> = None;
        loop {
            // A reload's chain went live when the reloader swapped it in,
            // between two batches; its source settings apply here, once the
            // batch taken under the old ones is finished.
            if self.configs.has_changed().unwrap_or(false) {
                if let Some(processing) = ahead.take() {
                    let (batch, result) = steps.processed(self.chain, processing).await?;
                    self.finish(mode, steps, batch, result, &mut probe_taken).await?;
                }
                let next = self.configs.borrow_and_update().clone();
                self.reconfigure(&next, mode, steps).await?;
            }
            // A rebalance is revoking partitions: every batch taken is
            // finished and committed before they are released.
            if self.source.handover().pending() {
                if let Some(processing) = ahead.take() {
                    let (batch, result) = steps.processed(self.chain, processing).await?;
                    self.finish(mode, steps, batch, result, &mut probe_taken).await?;
                }
                mode.hand_over(steps, self.source).await?;
                self.source.handover().answer();
            }
            let processing = match ahead.take() {
                Some(processing) => processing,
                None => {
                    let batch = tokio::select! {
                        biased;
                        () = stopped(self.stop.clone()) => break,
                        () = self.source.handover().asked() => continue,
                        batch = self.source.next_batch() => batch,
                    };
                    if batch.is_empty() {
                        // Nothing new: acknowledge and commit what is in flight now.
                        mode.settle(steps, self.source).await?;
                        continue;
                    }
                    Processing::start(self.chain, Arc::new(batch))
                }
            };
            let (batch, result) = steps.processed(self.chain, processing).await?;
            // The chain takes the records waiting now while this batch's
            // rows, effects and outputs are written: the chain does not
            // wait for the peers, nor the peers for the chain. Nothing the
            // chain reads (lookup tables) is written by effects.
            if !*self.stop.borrow() {
                let next = self.source.take_waiting();
                if !next.is_empty() {
                    ahead = Some(Processing::start(self.chain, Arc::new(next)));
                }
            }
            let rewinds = steps.rewinds;
            self.finish(mode, steps, batch, result, &mut probe_taken).await?;
            if steps.rewinds != rewinds
                && let Some(stale) = ahead.take()
            {
                // Partitions were moved back behind the batch taken ahead:
                // it is read again from there, so it is dropped, and its
                // own partitions are moved back to its first records.
                steps.rewind(self.source, [&**stale.batch()]).await?;
            }
        }
        mode.settle(steps, self.source).await
    }

    /// Writes a processed batch's rows, applies its effects, and hands it
    /// to the delivery mode.
    async fn finish<M: Mode>(
        &mut self,
        mode: &mut M,
        steps: &mut Steps<'_>,
        batch: Arc<Batch>,
        mut result: BatchResult,
        probe_taken: &mut std::time::Instant,
    ) -> anyhow::Result<()> {
        if probe_taken.elapsed() >= PROBE_EVERY {
            *probe_taken = std::time::Instant::now();
            *self.probe.lock().expect("probe lock") = probe_sample(batch.records(), &result);
        }
        // Rows first, in both modes: a record whose rows PostgreSQL
        // refuses is dead-lettered and produces nothing more.
        if !result.rows.is_empty() {
            let written = steps.write_rows(&mut self.tables, &batch, &result.rows).await?;
            self.metrics.rows_skipped.fetch_add(written.skipped as u64, Ordering::Relaxed);
            check_table_fences(self.source, &self.tables, &written, &batch)?;
            for refused in written.refused {
                let info = ErrorInfo { reason: HostRefusal::RowRefused.as_str().into(), message: refused.message };
                result.reject(batch.records(), refused.record, refused.stage, &info);
            }
        }
        // Then effects: a record whose effects Redis refuses is
        // dead-lettered and produces nothing more.
        let effect_stages = std::mem::take(&mut result.effect_stages);
        let (fence, record_effects) =
            fenced_effects(self.live_config.fence_key(), &batch, std::mem::take(&mut result.effects));
        let applied = steps.apply(&mut self.effects, &fence, &record_effects).await?;
        self.metrics.effects_skipped.fetch_add(applied.skipped as u64, Ordering::Relaxed);
        check_fences(self.source, &fence, &applied, &batch)?;
        for refused in &applied.refused {
            let stage = record_effects.iter().position(|e| e.record == refused.record).map(|i| effect_stages[i]);
            let info =
                ErrorInfo { reason: HostRefusal::EffectFailed.as_str().into(), message: refused.message.clone() };
            result.reject(batch.records(), refused.record, stage.unwrap_or(0), &info);
        }
        let state_writes = std::mem::take(&mut result.state_writes);
        if !state_writes.is_empty() {
            steps.apply_state(&mut self.redis_state, &self.state, self.source, &state_writes).await?;
        }
        mode.deliver(steps, self.source, batch, result).await
    }
}

/// How often the size of the stages' state is measured.
const STATE_MEASURE_EVERY: Duration = Duration::from_secs(5);
/// How often the expired values of the state of the partitions this
/// instance owns are swept out of Redis (a value read after it expired is
/// deleted at once). A hash whose sweep found nothing waits twice as long
/// for the next one, up to [`SWEEP_AT_MOST_EVERY`]: a stage that sets no
/// time-to-live costs a scan every quarter of an hour, not every minute.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The longest wait between background sweeps of a hash.
pub const SWEEP_AT_MOST_EVERY: Duration = Duration::from_secs(16 * 60);
/// Deleted values taken into the state's memory at a time.
const SWEPT_CHUNK: usize = 1000;

/// When each hash is next swept, and how long the wait after that is.
type SweepPlan = std::collections::HashMap<String, (tokio::time::Instant, Duration)>;

/// Measures, every [`STATE_MEASURE_EVERY`], the keys and bytes of the state
/// of each stage that has used state, for `/api/pipeline` and the metrics;
/// sweeps their expired values first when due (see [`SWEEP_EVERY`]).
async fn measure_state(mut redis: RedisState, store: Arc<StateStore>) {
    let mut plan = SweepPlan::new();
    loop {
        for stage in store.totals().into_keys() {
            sweep_state(&mut redis, &store, &stage, &mut plan).await;
            match redis.sizes(&store.hashes_of(&stage)).await {
                Ok((keys, bytes)) => store.set_sizes(&stage, keys, bytes),
                Err(e) => tracing::debug!(%stage, error = %e, "cannot measure the stage's state"),
            }
        }
        tokio::time::sleep(STATE_MEASURE_EVERY).await;
    }
}

/// Deletes the expired values of `stage`'s state in the partitions this
/// instance owns whose sweep is due.
async fn sweep_state(redis: &mut RedisState, store: &StateStore, stage: &str, plan: &mut SweepPlan) {
    let now = tokio::time::Instant::now();
    for (partition, token) in store.owned() {
        let hash = store.hash(stage, &partition);
        let (due, wait) = *plan.entry(hash.clone()).or_insert((now + SWEEP_EVERY, SWEEP_EVERY));
        if due > now {
            continue;
        }
        let started = std::time::Instant::now();
        let wait = match redis.sweep_async(&partition, &token, &hash, crate::state::now_ms()).await {
            Ok(Some(swept)) => {
                for chunk in swept.deleted.chunks(SWEPT_CHUNK) {
                    store.swept(stage, &partition, &token, started, chunk);
                }
                if swept.deleted.is_empty() { (wait * 2).min(SWEEP_AT_MOST_EVERY) } else { SWEEP_EVERY }
            }
            Ok(None) => wait,
            Err(e) => {
                tracing::debug!(%stage, error = %e, "cannot sweep the stage's state");
                wait
            }
        };
        plan.insert(hash, (tokio::time::Instant::now() + wait, wait));
    }
}

/// How often `sluice run` prints its status line on a terminal.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Prints a compact status line every [`STATUS_EVERY`]: records/s in and
/// out, lag, dead letters and the pipeline generation.
async fn status_line(metrics: Arc<Metrics>) {
    let snapshot = |m: &Metrics| (m.records_in.load(Ordering::Relaxed), m.records_out.load(Ordering::Relaxed));
    let mut last = (snapshot(&metrics), std::time::Instant::now());
    loop {
        tokio::time::sleep(STATUS_EVERY).await;
        let (now, at) = (snapshot(&metrics), std::time::Instant::now());
        let secs = at.duration_since(last.1).as_secs_f64();
        let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
        let lag: i64 = metrics.lag().values().sum();
        eprintln!(
            "sluice | in {:.0}/s | out {:.0}/s | lag {lag} | dead letters {} | generation {} | {}",
            rate(now.0, last.0.0),
            rate(now.1, last.0.1),
            metrics.dead_letter_total(),
            metrics.generation.load(Ordering::Relaxed),
            if metrics.is_ready() { "ready" } else { "NOT READY" }
        );
        last = (now, at);
    }
}

/// How often the run loop refreshes the records new pipelines are probed
/// with. Default 1 s: recent records, at no cost to the hot path.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Up to [`PROBE_RECORDS`] records of a batch, leaving out those the live
/// pipeline itself failed on (a poison record must not block reloads).
fn probe_sample(records: &[Record], result: &BatchResult) -> Vec<Record> {
    let failed: Vec<usize> =
        result.dead_letters.iter().filter(|d| d.reason.is_plugin_failure()).map(|d| d.origin).collect();
    let kept = records.iter().enumerate().filter(|(i, _)| !failed.contains(i));
    kept.map(|(_, r)| r.clone()).take(PROBE_RECORDS).collect()
}

/// This instance's stable name: `kafka.instance_id`, else the host name.
fn instance_id(config: &PipelineConfig) -> String {
    if !config.kafka.instance_id.is_empty() {
        return config.kafka.instance_id.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into())
}

/// The fence of a batch (its last offset per partition) and its effects
/// tagged with their record's index, partition and offset.
fn fenced_effects(key: String, batch: &Batch, effects: Vec<(usize, Effect)>) -> (Fence, Vec<RecordEffect>) {
    let effects = effects
        .into_iter()
        .map(|(origin, effect)| RecordEffect {
            record: origin,
            partition: batch.span_of(origin),
            offset: batch.records()[origin].offset,
            effect,
        })
        .collect();
    (Fence::of(key, batch.spans()), effects)
}

/// Before Sluice 0.2 the fence was keyed by the consumer group
/// (`{fence_prefix}{group}`): carry those fences over to the key they now
/// live at, so an upgrade applies nothing twice.
async fn adopt_group_fences(effects: &mut RedisEffects, config: &PipelineConfig) {
    let (old, new) = (format!("{}{}", config.redis.fence_prefix, config.kafka.group), config.fence_key());
    match effects.adopt_fences(&old, &new).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(from = %old, to = %new, partitions = n, "offset fences carried over"),
        Err(e) => tracing::warn!(error = %e, from = %old, "cannot carry over the offset fences"),
    }
}

/// Fails when a partition's fence is at or past the partition's end: the
/// topic was deleted and created again (or truncated), and every effect of
/// its new records would be skipped as already applied.
fn check_fences(source: &Source, fence: &Fence, applied: &Applied, batch: &Batch) -> anyhow::Result<()> {
    check_fence_positions(source, batch, &applied.fences_before, "effects", |topic, partition| {
        format!("redis-cli HDEL '{}' '{topic}:{partition}'", fence.key)
    })
}

/// [`check_fences`] for the fences of the PostgreSQL tables.
fn check_table_fences(source: &Source, tables: &Tables, written: &Written, batch: &Batch) -> anyhow::Result<()> {
    let targets: Vec<String> = tables.targets().iter().map(|t| format!("'{t}'")).collect();
    check_fence_positions(source, batch, &written.fences_before, "table rows", |topic, partition| {
        let targets = targets.join(", ");
        format!("DELETE FROM {FENCES} WHERE target IN ({targets}) AND topic = '{topic}' AND partition = {partition}")
    })
}

/// Fails when the fence before the batch (`fences_before`, one per span of
/// `batch`) of a partition is at or past its end, naming what the fence
/// protects (`what`) and how to remove it (`remove`).
fn check_fence_positions(
    source: &Source,
    batch: &Batch,
    fences_before: &[i64],
    what: &str,
    remove: impl Fn(&str, i32) -> String,
) -> anyhow::Result<()> {
    for (span, &before) in batch.spans().iter().zip(fences_before) {
        let (topic, partition) = (span.topic.as_str(), span.partition);
        if before < span.first {
            continue; // nothing of this partition was behind the fence
        }
        // Unknown for the first seconds of an assignment: the next batch of
        // the partition checks again.
        match source.end_offset(topic, partition) {
            Some(end) if before >= end => anyhow::bail!(
                "the {what} fence of topic `{topic}` partition {partition} is at offset {before}, past the \
                 partition's end ({end}): the topic was recreated or truncated, and the {what} of its records \
                 would be skipped as already applied. If that is intended, remove the fence ({}) and start again",
                remove(topic, partition)
            ),
            _ => {}
        }
    }
    Ok(())
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// SIGINT and SIGTERM stop the host; SIGHUP reloads the pipeline.
async fn handle_signals(stop: watch::Sender<bool>, requests: mpsc::Sender<Request>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("install the SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the pipeline");
                let _ = requests.send(Request { trigger: Trigger::Signal, reply: None }).await;
            }
        }
    }
    tracing::info!("stop requested: finishing the batch in flight");
    let _ = stop.send(true);
}
