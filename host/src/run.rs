//! `sluice run`: the consume -> process -> apply -> deliver -> commit loop.
//!
//! The source reads ahead on its own task into a bounded buffer (two
//! batches); the loop takes what is waiting as soon as it is free, so a
//! batch never waits to fill and batches grow with the load.
//! In both modes a batch's Redis effects are applied first, behind a
//! per-partition offset fence, so a replayed record never applies them
//! twice, and a record whose effects Redis refuses is dead-lettered
//! (`effect_failed`) and produces nothing. At-least-once: the batch's
//! outputs and dead letters are handed to the producer while the next batch
//! is taken and processed; they are acknowledged before the next batch's
//! outputs go out, and the offsets of acknowledged batches are committed
//! every `commit_interval_ms`. Exactly-once: the
//! outputs, dead letters and offsets of the batches of `commit_interval_ms`
//! go in one Kafka transaction; a failed transaction is aborted and its
//! batches read again. Transient failures (lookups, broker, Redis) are
//! retried with backoff while the batch waits; nothing is skipped.

use crate::bindings::ErrorInfo;
use crate::config::{self, Delivery, PipelineConfig};
use crate::engine::Engine;
use crate::http;
use crate::kafka::{Sent, Sink, Source};
use crate::metrics::Metrics;
use crate::pipeline::{BatchResult, Chain, LookupSource};
use crate::record::{Batch, Effect, Produce, Record};
use crate::redis::{Applied, Fence, RecordEffect, RedisEffects, RedisLookups};
use crate::reload::{self, PROBE_RECORDS, Reloader, Request, StageView, Status, Swap, Trigger};
use anyhow::Context;
use rdkafka::consumer::CommitMode;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// First wait after a transient failure; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between two attempts. Default 5 s: an outage is noticed
/// quickly once it ends, without hammering the peer while it lasts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a step of a batch (lookups, delivery, effects) may have waited
/// for a failing peer when a stop is requested before the host gives up and
/// exits without committing the batch.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// Runs the pipeline until SIGINT or SIGTERM, then finishes the batch in
/// flight, commits and returns. `path` is watched for live reloads.
/// With `status_line_on_tty`, a status line is printed every few seconds when stderr is
/// a terminal.
pub async fn run(path: &Path, pipeline: config::Pipeline, status_line_on_tty: bool) -> anyhow::Result<()> {
    let config = pipeline.config.clone();
    let metrics = Arc::new(Metrics::default());
    let pipeline_status = Arc::new(Status::default());
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
        report: Arc::new(crate::report::Cached::new(crate::report::Source::of(&config))),
        ingest: Arc::new(http::Ingest {
            producer: Sink::plain_producer(&config).context("cannot create the ingest producer")?,
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
    let (build_engine, build_pipeline, build_lookups) = (engine.clone(), pipeline.clone(), lookups.clone());
    let chain =
        tokio::task::spawn_blocking(move || Chain::build(&build_engine, &build_pipeline, build_lookups)).await??;
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
    let (swaps, mut swaps_rx) = mpsc::channel::<Swap>(1);
    let reloader = Reloader {
        path: path.to_path_buf(),
        engine,
        file: pipeline.clone(),
        live: pipeline.clone(),
        lookups,
        generation: 1,
        promoted: Default::default(),
        probe: probe.clone(),
        swaps,
        status: pipeline_status.clone(),
        metrics: metrics.clone(),
        watched: watched.clone(),
        versions: reload::versions(&chain),
    };
    let reloads = tokio::spawn(reloader.serve(requests_rx));
    let on_terminal = status_line_on_tty && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let status_line = on_terminal.then(|| tokio::spawn(status_line(metrics.clone())));
    let watcher = tokio::spawn(reload::watch(watched, requests));

    let chain = Arc::new(Mutex::new(chain));
    let mut live_config = config.clone();
    let mut effects = RedisEffects::new(&config.redis.url).context("redis.url")?;
    adopt_group_fences(&mut effects, &config).await;
    let source = Source::new(&config, metrics.clone()).context("cannot create the Kafka consumer")?;
    let exactly_once = config.delivery == Delivery::ExactlyOnce;
    let transactional_id = exactly_once.then(|| format!("{}-{}", config.kafka.group, instance_id(&config)));
    let sink = Sink::new(&config, transactional_id.as_deref()).context("cannot create the Kafka producer")?;
    tracing::info!(
        topics = ?config.source.topics, group = %config.kafka.group, brokers = %config.kafka.brokers,
        delivery = ?config.delivery, transactional_id = transactional_id.as_deref().unwrap_or("-"), "consuming"
    );
    metrics.ready.store(true, Ordering::Relaxed);

    let mut loop_ = Loop {
        config: &config,
        metrics: &metrics,
        stop: stop_rx.clone(),
        sink,
        replace_producer: false,
        commit_every: Duration::from_millis(config.commit_interval_ms.get()),
        committed: std::time::Instant::now(),
    };
    let outcome = async {
        let mut rewinds = Backoff::new();
        let mut probe_taken = std::time::Instant::now() - PROBE_EVERY;
        // At-least-once: the batch whose outputs are on their way to the
        // broker while the next one is read, processed and applied.
        let mut delivering: Option<Delivering> = None;
        // Exactly-once: the open transaction and the batches in it.
        let mut transaction: Option<Transaction> = None;
        loop {
            // A reloaded pipeline goes live here, between two batches: the
            // batch in flight finished on the old one, and every later
            // record of every partition goes through the new one.
            if !swaps_rx.is_empty() {
                if let Some(done) = delivering.take() {
                    loop_.finish(&source, done).await?;
                }
                if let Some(open) = transaction.take() {
                    loop_.close(&source, open, &mut rewinds).await?;
                }
            }
            while let Ok(swap) = swaps_rx.try_recv() {
                put_live(swap, &chain, &mut live_config, &source, &metrics, exactly_once)?;
                loop_.commit_every = Duration::from_millis(live_config.commit_interval_ms.get());
            }
            let batch = tokio::select! {
                biased;
                () = stopped(stop_rx.clone()) => break,
                batch = source.next_batch() => batch,
            };
            if batch.is_empty() {
                // Nothing new: finish the batch in flight and commit, or
                // commit the open transaction, now.
                if let Some(done) = delivering.take() {
                    loop_.finish(&source, done).await?;
                }
                loop_.commit_offsets(&source, CommitMode::Async);
                if let Some(open) = transaction.take() {
                    loop_.close(&source, open, &mut rewinds).await?;
                }
                continue;
            }
            let records = Arc::new(batch);
            let mut result = loop_.process(&chain, &records).await?;
            if probe_taken.elapsed() >= PROBE_EVERY {
                probe_taken = std::time::Instant::now();
                *probe.lock().expect("probe lock") = probe_sample(records.records(), &result);
            }
            // Effects first, in both modes: a record whose effects Redis
            // refuses is dead-lettered and produces nothing.
            let effect_stages = std::mem::take(&mut result.effect_stages);
            let (fence, record_effects) =
                fenced_effects(live_config.fence_key(), &records, std::mem::take(&mut result.effects));
            let applied = loop_.apply(&mut effects, &fence, &record_effects).await?;
            metrics.effects_skipped.fetch_add(applied.skipped as u64, Ordering::Relaxed);
            check_fences(&source, &fence, &applied, &records)?;
            if !applied.refused.is_empty() {
                let chain = chain.lock().expect("chain lock");
                for refused in &applied.refused {
                    let stage =
                        record_effects.iter().position(|e| e.record == refused.record).map(|i| effect_stages[i]);
                    let info = ErrorInfo { reason: "effect_failed".into(), message: refused.message.clone() };
                    chain.reject(&mut result, records.records(), refused.record, stage.unwrap_or(0), &info);
                }
            }
            if exactly_once {
                // The batch joins the open transaction (one is begun if
                // none is open), which commits once it has been open for
                // `commit_interval_ms`.
                if transaction.is_none() {
                    if let Err(e) = loop_.begin() {
                        loop_.wait("beginning a transaction", &format!("{e:#}"), &mut rewinds).await?;
                        loop_.rewind(&source, [&*records]).await?;
                        continue;
                    }
                    transaction = Some(Transaction { batches: Vec::new(), begun: std::time::Instant::now() });
                }
                let open = transaction.as_mut().expect("begun above");
                let sent = loop_.sink.enqueue(&produced(&result)).await;
                open.batches.push(Delivering { records, result, sent });
                if open.begun.elapsed() >= Duration::from_millis(live_config.commit_interval_ms.get()) {
                    let open = transaction.take().expect("open");
                    loop_.close(&source, open, &mut rewinds).await?;
                }
            } else {
                // The previous batch's outputs were written while this one
                // was processed; they are acknowledged (and committed)
                // before this one's go out, so each partition's outputs stay
                // in order.
                if let Some(done) = delivering.take() {
                    loop_.finish(&source, done).await?;
                }
                let sent = loop_.sink.enqueue(&produced(&result)).await;
                delivering = Some(Delivering { records, result, sent });
            }
        }
        if let Some(done) = delivering.take() {
            loop_.finish(&source, done).await?;
        }
        if let Some(open) = transaction.take() {
            loop_.close(&source, open, &mut rewinds).await?;
        }
        Ok(())
    }
    .await;
    metrics.ready.store(false, Ordering::Relaxed);
    watcher.abort();
    reloads.abort();
    if let Some(task) = status_line {
        task.abort();
    }
    if !exactly_once && let Err(e) = source.commit_stored(CommitMode::Sync) {
        tracing::warn!(error = %e, "final offset commit failed; the last batches may be processed again");
    }
    source.unsubscribe();
    if let Err(e) = loop_.sink.flush(Duration::from_secs(5)) {
        tracing::warn!(error = %e, "producer flush at exit");
    }
    http.abort();
    let in_ = metrics.records_in.load(Ordering::Relaxed);
    tracing::info!(records = in_, dead_letters = metrics.dead_letter_total(), "stopped");
    outcome
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
        result.dead_letters.iter().filter(|d| d.reason.starts_with("plugin_")).map(|d| d.origin).collect();
    let kept = records.iter().enumerate().filter(|(i, _)| !failed.contains(i));
    kept.map(|(_, r)| r.clone()).take(PROBE_RECORDS).collect()
}

/// Puts a reloaded chain live: keeps the instances of unchanged stages,
/// resubscribes when the input topics changed and applies new batching.
fn put_live(
    swap: Swap,
    chain: &Mutex<Chain>,
    live: &mut PipelineConfig,
    source: &Source,
    metrics: &Metrics,
    exactly_once: bool,
) -> anyhow::Result<()> {
    let next = &swap.pipeline.config;
    let mut new = swap.chain;
    let generation = new.generation();
    let old = {
        let mut current = chain.lock().expect("chain lock");
        new.adopt_unchanged(&mut current);
        std::mem::replace(&mut *current, new)
    };
    drop(old);
    if next.source.topics != live.source.topics {
        if !exactly_once && let Err(e) = source.commit_stored(CommitMode::Sync) {
            tracing::warn!(error = %e, "offset commit before resubscribing failed; some records may be read again");
        }
        source.resubscribe(&next.source.topics).context("cannot subscribe to the new source.topics")?;
        metrics.retain_topics(&next.source.topics);
        tracing::info!(topics = ?next.source.topics, "resubscribed");
    }
    source.set_batching(next.source.batch_size.get(), next.source.batch_max_bytes.get());
    *live = next.clone();
    let views = StageView::all(&chain.lock().expect("chain lock"), next);
    tracing::info!(generation, "pipeline generation live");
    let _ = swap.applied.send(views);
    Ok(())
}

/// Every record a batch writes: its outputs, then its dead letters.
fn produced(result: &BatchResult) -> Vec<&Produce> {
    result.outputs.iter().chain(result.dead_letters.iter().map(|d| &d.record)).collect()
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
    // `fence.partitions` are the batch's spans, in order.
    for (span, &before) in batch.spans().iter().zip(&applied.fences_before) {
        let (topic, partition) = (span.topic.as_str(), span.partition);
        if before < span.first {
            continue; // nothing of this partition was behind the fence
        }
        // Unknown for the first seconds of an assignment: the next batch of
        // the partition checks again.
        match source.end_offset(topic, partition) {
            Some(end) if before >= end => anyhow::bail!(
                "the effects fence of topic `{topic}` partition {partition} is at offset {before}, past the \
                 partition's end ({end}): the topic was recreated or truncated, and the effects of its records \
                 would be skipped as already applied. If that is intended, remove the fence \
                 (redis-cli HDEL '{key}' '{topic}:{partition}') and start again",
                key = fence.key
            ),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a Kafka error leaves the transactional producer unusable: it
/// must be replaced before the next transaction.
fn is_fatal(error: &rdkafka::error::KafkaError) -> bool {
    matches!(error, rdkafka::error::KafkaError::Transaction(e) if e.is_fatal())
}

/// The parts of the run loop that retry until done or stopped.
struct Loop<'a> {
    config: &'a PipelineConfig,
    metrics: &'a Metrics,
    stop: watch::Receiver<bool>,
    sink: Sink,
    /// The transactional producer failed fatally (or could not be replaced
    /// yet): replace it before the next transaction.
    replace_producer: bool,
    /// At-least-once: how often confirmed offsets are committed
    /// (`commit_interval_ms`).
    commit_every: Duration,
    /// When offsets were last committed.
    committed: std::time::Instant,
}

/// An at-least-once batch whose outputs and dead letters were handed to the
/// producer and are not acknowledged yet.
struct Delivering {
    records: Arc<Batch>,
    result: BatchResult,
    sent: Sent,
}

/// An open Kafka transaction (exactly-once) and the batches written in it,
/// their effects applied.
struct Transaction {
    batches: Vec<Delivering>,
    begun: std::time::Instant,
}

/// A batch could not be finished before the stop grace ran out.
#[derive(Debug)]
struct Abandoned(&'static str);

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped while {}: the batch was not committed and will be processed again", self.0)
    }
}

impl std::error::Error for Abandoned {}

impl Loop<'_> {
    async fn process(&mut self, chain: &Arc<Mutex<Chain>>, records: &Arc<Batch>) -> anyhow::Result<BatchResult> {
        let mut backoff = Backoff::new();
        loop {
            let (chain, records) = (chain.clone(), records.clone());
            let result =
                tokio::task::spawn_blocking(move || chain.lock().expect("chain lock").process(records.records()))
                    .await?;
            match result {
                Ok(result) => return Ok(result),
                Err(e) => self.wait("waiting for lookups", &e.to_string(), &mut backoff).await?,
            }
        }
    }

    /// Waits for an at-least-once batch's acknowledgements (sending again
    /// what failed), then commits its offsets and counts it.
    async fn finish(&mut self, source: &Source, done: Delivering) -> anyhow::Result<()> {
        let Delivering { records, result, sent } = done;
        let pending = produced(&result);
        if let Err((e, failed)) = sent.acknowledged(&pending).await {
            let mut backoff = Backoff::new();
            let why = format!("{} of {} records not acknowledged: {e}", failed.len(), pending.len());
            self.wait("delivering to Kafka", &why, &mut backoff).await?;
            self.deliver(failed, backoff).await?;
        }
        source.store(&records);
        if self.committed.elapsed() >= self.commit_every {
            self.commit_offsets(source, CommitMode::Async);
        }
        self.metrics.record_batch(records.records(), &result);
        self.metrics.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Sends `pending` until every record is acknowledged, waiting out
    /// failures with `backoff`.
    /// Commits the offsets of the batches finished since the last commit.
    fn commit_offsets(&mut self, source: &Source, mode: CommitMode) {
        self.committed = std::time::Instant::now();
        match source.commit_stored(mode) {
            Ok(false) => {}
            Ok(true) => {
                self.metrics.offset_commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "offset commit failed; the next commit covers it"),
        }
    }

    async fn deliver(&mut self, mut pending: Vec<&Produce>, mut backoff: Backoff) -> anyhow::Result<()> {
        while !pending.is_empty() {
            match self.sink.send_all(&pending).await {
                Ok(()) => break,
                Err((e, failed)) => {
                    let why = format!("{} of {} records not acknowledged: {e}", failed.len(), pending.len());
                    pending = failed;
                    self.wait("delivering to Kafka", &why, &mut backoff).await?;
                }
            }
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        effects: &mut RedisEffects,
        fence: &Fence,
        batch: &[RecordEffect],
    ) -> anyhow::Result<Applied> {
        let mut backoff = Backoff::new();
        loop {
            match effects.apply_fenced(fence, batch).await {
                Ok(applied) => return Ok(applied),
                Err(e) => {
                    let why = format!("{e} ({})", crate::config::redact::url(&self.config.redis.url));
                    self.wait("applying Redis effects", &why, &mut backoff).await?;
                }
            }
        }
    }

    /// Begins a transaction, replacing the producer first if it failed
    /// fatally. A fatal error marks the producer for replacement.
    fn begin(&mut self) -> anyhow::Result<()> {
        if self.replace_producer {
            self.sink.recreate().context("cannot recreate the transactional producer")?;
            self.replace_producer = false;
        }
        if let Err(e) = self.sink.begin() {
            self.replace_producer = is_fatal(&e);
            return Err(e).context("begin transaction");
        }
        Ok(())
    }

    /// Commits an open transaction: waits for its records'
    /// acknowledgements, adds the consumer offsets after its batches and
    /// commits, then counts its batches. On failure aborts it (or marks the
    /// producer for replacement), waits, and rewinds its partitions so that
    /// its batches are read and processed again (their effects, behind the
    /// fence, are not applied again).
    async fn close(&mut self, source: &Source, open: Transaction, rewinds: &mut Backoff) -> anyhow::Result<()> {
        let mut batches = Vec::with_capacity(open.batches.len());
        let mut sent = Vec::with_capacity(open.batches.len());
        for Delivering { records, result, sent: s } in open.batches {
            batches.push((records, result));
            sent.push(s);
        }
        match self.commit(source, &batches, sent).await {
            Ok(()) => {
                *rewinds = Backoff::new();
                self.metrics.transactions.fetch_add(1, Ordering::Relaxed);
                for (records, result) in &batches {
                    self.metrics.record_batch(records.records(), result);
                }
                self.metrics.ready.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                let fatal = error.chain().filter_map(|c| c.downcast_ref::<rdkafka::error::KafkaError>()).any(is_fatal);
                if fatal {
                    tracing::warn!(error = %error, "fatal transaction error: the producer is replaced");
                    self.replace_producer = true;
                } else if let Err(e) = self.sink.abort() {
                    tracing::warn!(error = %e, "abort failed: the producer is replaced");
                    self.replace_producer = true;
                }
                self.wait("committing a transaction", &format!("{error:#}"), rewinds).await?;
                self.rewind(source, batches.iter().map(|(r, _)| &**r)).await
            }
        }
    }

    async fn commit(
        &mut self,
        source: &Source,
        batches: &[(Arc<Batch>, BatchResult)],
        sent: Vec<Sent>,
    ) -> anyhow::Result<()> {
        for ((_, result), sent) in batches.iter().zip(sent) {
            let pending = produced(result);
            if let Err((e, failed)) = sent.acknowledged(&pending).await {
                anyhow::bail!("{} of {} records not acknowledged: {e}", failed.len(), pending.len());
            }
        }
        let group = source.group_metadata().context("the consumer has no group metadata")?;
        let offsets = Source::offsets_after(batches.iter().map(|(r, _)| &**r))?;
        self.sink.send_offsets(&offsets, &group).context("send offsets to the transaction")?;
        let mut commit = self.sink.commit();
        for _ in 0..3 {
            match &commit {
                Err(rdkafka::error::KafkaError::Transaction(e)) if e.is_retriable() => commit = self.sink.commit(),
                _ => break,
            }
        }
        commit.context("commit transaction")
    }

    /// Moves the partitions of uncommitted batches back to their committed
    /// offsets, retrying while the broker cannot answer.
    async fn rewind<'b>(
        &mut self,
        source: &Source,
        batches: impl IntoIterator<Item = &'b Batch> + Clone,
    ) -> anyhow::Result<()> {
        let mut backoff = Backoff::new();
        loop {
            match source.rewind(batches.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => self.wait("rewinding after an aborted transaction", &e.to_string(), &mut backoff).await?,
            }
        }
    }

    /// Logs a transient failure, marks the host not ready and sleeps; fails
    /// when a stop is requested and this step has already waited
    /// [`STOP_GRACE`] in all.
    async fn wait(&mut self, doing: &'static str, why: &str, backoff: &mut Backoff) -> anyhow::Result<()> {
        self.metrics.ready.store(false, Ordering::Relaxed);
        self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        self.metrics.record_error(match doing {
            "waiting for lookups" | "applying Redis effects" => "redis",
            _ => "kafka",
        });
        let delay = backoff.next();
        tracing::warn!(
            retry_in_ms = delay.as_millis() as u64,
            error = why,
            "transient failure while {doing}; retrying"
        );
        if *self.stop.borrow() && backoff.waited >= STOP_GRACE {
            return Err(Abandoned(doing).into());
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

struct Backoff {
    delay: Duration,
    waited: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { delay: MIN_BACKOFF, waited: Duration::ZERO }
    }

    fn next(&mut self) -> Duration {
        let delay = self.delay;
        self.waited += delay;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
        delay
    }
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
