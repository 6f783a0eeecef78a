//! Delivery: how a processed batch's outputs, dead letters and offsets
//! reach Kafka once its Redis effects are applied and its rows written.
//!
//! The guarantee is a type: [`AtLeastOnce`] and [`ExactlyOnce`] implement
//! [`Mode`], and the run loop is generic over it. Both share [`Steps`], the
//! steps that wait out a failing peer with backoff (and give up only when a
//! stop is requested and the step has waited [`STOP_GRACE`]).

mod at_least_once;
mod exactly_once;

pub use at_least_once::{AtLeastOnce, IN_FLIGHT};
pub use exactly_once::ExactlyOnce;

use crate::config::PipelineConfig;
use crate::kafka::{Failure, Sent, Sink, Source, Unacknowledged};
use crate::lookup::Unavailable;
use crate::metrics::Metrics;
use crate::pipeline::{BatchResult, Chain, HostRefusal};
use crate::postgres::{Tables, Written};
use crate::record::{Batch, Produce, Row};
use crate::redis::{Applied, Fence, RecordEffect, RedisEffects, RedisState, StateApplied};
use crate::state::{Partition, StateStore, StateWrite};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// First wait after a transient failure; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between two attempts. Default 5 s: an outage is noticed
/// quickly once it ends, without hammering the peer while it lasts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a step of a batch (lookups, delivery, effects) may have waited
/// for a failing peer when a stop is requested before the host gives up and
/// exits without committing the batch.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// A delivery guarantee.
#[allow(async_fn_in_trait)] // used generically inside the crate, never boxed
pub trait Mode {
    /// Takes a batch whose effects are applied and whose result is final:
    /// writes its outputs and dead letters and, in time, commits its
    /// offsets. May wait for earlier batches to be acknowledged.
    async fn deliver(
        &mut self,
        steps: &mut Steps<'_>,
        source: &Source,
        batch: Arc<Batch>,
        result: BatchResult,
    ) -> anyhow::Result<()>;

    /// Acknowledges and commits every batch taken so far: before a reload
    /// goes live, when no record is waiting, and at stop.
    async fn settle(&mut self, steps: &mut Steps<'_>, source: &Source) -> anyhow::Result<()>;

    /// Like [`Mode::settle`], waiting for the commit to complete: during a
    /// rebalance, before revoked partitions are released (see
    /// [`crate::kafka::Handover`]).
    async fn hand_over(&mut self, steps: &mut Steps<'_>, source: &Source) -> anyhow::Result<()>;

    /// Applies a new `commit_interval_ms`.
    fn set_commit_interval(&mut self, every: Duration);

    /// After the last batch (settled or abandoned): commits what is
    /// confirmed and not committed yet.
    fn shutdown(&mut self, source: &Source);
}

/// The steps of a batch that retry until done or stopped, and the
/// producer they write with.
pub struct Steps<'a> {
    /// The pipeline as started (the Redis URL for messages).
    pub config: &'a PipelineConfig,
    /// The host's counters.
    pub metrics: &'a Metrics,
    /// Becomes true when a stop is requested.
    pub stop: watch::Receiver<bool>,
    /// The producer of outputs and dead letters.
    pub sink: Sink,
    /// How many rewinds have moved partitions back: a batch taken before
    /// a rewind and not delivered yet is stale once this moves.
    pub rewinds: u64,
}

/// A batch the chain works on, on a blocking thread, while the run loop
/// finishes the batch before it.
pub struct Processing {
    batch: Arc<Batch>,
    run: tokio::task::JoinHandle<Result<BatchResult, Unavailable>>,
}

impl Processing {
    /// Starts running `batch` through the chain. The chain's lock is held
    /// for the whole batch, so a reload goes live between two batches.
    pub fn start(chain: &Arc<Mutex<Chain>>, batch: Arc<Batch>) -> Self {
        let run = Self::spawn(chain, &batch);
        Self { batch, run }
    }

    fn spawn(
        chain: &Arc<Mutex<Chain>>,
        batch: &Arc<Batch>,
    ) -> tokio::task::JoinHandle<Result<BatchResult, Unavailable>> {
        let (chain, batch) = (chain.clone(), batch.clone());
        tokio::task::spawn_blocking(move || chain.lock().expect("chain lock").process(batch.records()))
    }

    /// The batch being processed.
    pub fn batch(&self) -> &Arc<Batch> {
        &self.batch
    }
}

/// A batch whose outputs and dead letters were handed to the producer and
/// are not acknowledged yet.
pub(crate) struct Delivering {
    pub(crate) batch: Arc<Batch>,
    pub(crate) result: BatchResult,
    pub(crate) sent: Sent,
}

/// A record sent again: an output, with the index of its input record in
/// its batch, or a dead letter.
struct Resend {
    origin: Option<usize>,
    record: Produce,
}

/// What a record refused for good by the broker dead-letters its input as,
/// and the message.
fn refusal(record: &Produce, error: &KafkaError) -> (HostRefusal, String) {
    let size = matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
        )
    );
    let refusal = if size { HostRefusal::OutputTooLarge } else { HostRefusal::OutputRefused };
    let bytes = record.key.as_ref().map_or(0, Vec::len) + record.value.len();
    (
        refusal,
        format!(
            "the broker refused an output to `{}` ({bytes} bytes of key and value), also sent alone: {error}",
            record.topic
        ),
    )
}

/// Every record a batch writes: its outputs, then its dead letters.
pub fn produced(result: &BatchResult) -> Vec<&Produce> {
    result.outputs.iter().chain(result.dead_letters.iter().map(|d| &d.record)).collect()
}

/// A batch could not be finished before the stop grace ran out.
#[derive(Debug)]
pub struct Abandoned {
    /// The step it was waiting on.
    pub step: Step,
}

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped while {}: the batch was not committed and will be processed again", self.step)
    }
}

impl std::error::Error for Abandoned {}

/// The peer a step waits for, for `sluice_errors_total{peer}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The Kafka brokers.
    Kafka,
    /// Redis (lookups and effects).
    Redis,
    /// PostgreSQL (table outputs).
    Postgres,
}

impl Peer {
    /// The `peer` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }
}

/// What a batch is waiting on when a peer fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Its lookups (Redis).
    Lookups,
    /// Its effects, applied behind the fence (Redis).
    Effects,
    /// Its writes to stages' keyed state (Redis).
    State,
    /// Its rows, written behind the fence (PostgreSQL).
    Rows,
    /// The acknowledgement of its outputs (Kafka).
    Delivery,
    /// The rewind of its partitions after an aborted transaction (Kafka).
    Rewind,
    /// The start of a transaction (Kafka).
    Begin,
    /// The commit of its transaction (Kafka).
    Commit,
}

impl Step {
    /// The peer the step needs.
    pub fn peer(self) -> Peer {
        match self {
            Self::Lookups | Self::Effects | Self::State => Peer::Redis,
            Self::Rows => Peer::Postgres,
            Self::Delivery | Self::Rewind | Self::Begin | Self::Commit => Peer::Kafka,
        }
    }
}

impl Step {
    /// What the batch is doing, as log lines say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lookups => "waiting for lookups",
            Self::Effects => "applying Redis effects",
            Self::State => "making stages' state durable",
            Self::Rows => "writing rows to PostgreSQL",
            Self::Delivery => "delivering to Kafka",
            Self::Rewind => "rewinding after an aborted transaction",
            Self::Begin => "beginning a transaction",
            Self::Commit => "committing a transaction",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Steps<'_> {
    /// The result of a batch the chain was started on, running it again
    /// while lookups cannot be served.
    pub async fn processed(
        &mut self,
        chain: &Arc<Mutex<Chain>>,
        processing: Processing,
    ) -> anyhow::Result<(Arc<Batch>, BatchResult)> {
        let Processing { batch, mut run } = processing;
        let mut backoff = Backoff::new();
        loop {
            match run.await? {
                Ok(result) => return Ok((batch, result)),
                Err(e) => self.wait(Step::Lookups, &e.to_string(), &mut backoff).await?,
            }
            run = Processing::spawn(chain, &batch);
        }
    }

    /// Applies a batch's effects behind its fence, waiting while Redis
    /// cannot be reached.
    pub async fn apply(
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
                    self.wait(Step::Effects, &why, &mut backoff).await?;
                }
            }
        }
    }

    /// Makes a batch's writes to stages' keyed state durable, partition by
    /// partition, waiting while Redis cannot take them. The writes of a
    /// partition claimed again since they were made (it is read again from
    /// an earlier offset, here or by another instance) are dropped.
    pub async fn apply_state(
        &mut self,
        redis: &mut RedisState,
        store: &StateStore,
        source: &Source,
        writes: &[StateWrite],
    ) -> anyhow::Result<()> {
        let mut groups: Vec<(&Partition, &str, Vec<&StateWrite>)> = Vec::new();
        for write in writes {
            match groups.iter_mut().find(|(p, t, _)| **p == write.partition && *t == &*write.token) {
                Some((.., group)) => group.push(write),
                None => groups.push((&write.partition, &write.token, vec![write])),
            }
        }
        for (partition, token, group) in groups {
            let committed = source.committed(&partition.0, partition.1);
            let mut backoff = Backoff::new();
            let applied = loop {
                match redis.apply(partition, token, committed, &group).await {
                    Ok(applied) => break applied,
                    Err(e) => {
                        let why = format!("{e} ({})", crate::config::redact::url(&self.config.redis.url));
                        self.wait(Step::State, &why, &mut backoff).await?;
                    }
                }
            };
            match applied {
                StateApplied::Applied(_) => {
                    let last = group.iter().map(|w| w.offset).max().unwrap_or(-1);
                    store.durable(partition, token, last);
                }
                StateApplied::Claimed => tracing::info!(
                    topic = %partition.0, partition = partition.1, writes = group.len(),
                    "state writes dropped: the partition is read again from an earlier offset"
                ),
            }
        }
        Ok(())
    }

    /// Writes a batch's rows to their tables behind their fences, waiting
    /// while PostgreSQL cannot take them.
    pub async fn write_rows(
        &mut self,
        tables: &mut Tables,
        batch: &Batch,
        rows: &[(usize, usize, Row)],
    ) -> anyhow::Result<Written> {
        let mut backoff = Backoff::new();
        loop {
            match tables.write(batch, rows).await {
                Ok(written) => return Ok(written),
                Err(e) => self.wait(Step::Rows, &e.to_string(), &mut backoff).await?,
            }
        }
    }

    /// Sends again what the broker did not acknowledge of a batch's outputs
    /// and dead letters (`failed` indexes [`produced`]`(result)`), until
    /// every record is acknowledged.
    ///
    /// An output the broker refuses for good ([`Failure::Record`]) is sent
    /// once more alone, since a refusal may name a whole request of records
    /// that are fine alone. Refused alone as well, it dead-letters its input
    /// record in `result` (`output_too_large`, or `output_refused`, with the
    /// broker's answer), and that dead letter is sent instead. Any other
    /// failure is waited out with backoff.
    pub async fn redeliver(
        &mut self,
        batch: &Batch,
        result: &mut BatchResult,
        failed: Unacknowledged,
    ) -> anyhow::Result<()> {
        let outputs = result.outputs.len();
        let mut pending: Vec<(Resend, KafkaError)> = (failed.failed.into_iter())
            .map(|(i, e)| match i.checked_sub(outputs) {
                None => (Resend { origin: Some(result.output_origins[i]), record: result.outputs[i].clone() }, e),
                Some(d) => (Resend { origin: None, record: result.dead_letters[d].record.clone() }, e),
            })
            .collect();
        let mut refused = HashSet::new();
        let mut backoff = Backoff::new();
        while !pending.is_empty() {
            let mut again = Vec::with_capacity(pending.len());
            let mut why = None;
            for (resend, error) in pending {
                let alone = match resend.origin {
                    Some(origin) if refused.contains(&origin) => continue,
                    Some(origin) if Failure::of(&error) == Failure::Record => {
                        self.sink.send_all(&[&resend.record]).await.map_err(|e| (origin, e))
                    }
                    _ => {
                        why.get_or_insert_with(|| error.to_string());
                        again.push(resend);
                        continue;
                    }
                };
                match alone {
                    Ok(()) => {}
                    Err((origin, e)) if Failure::of(e.first()) == Failure::Record => {
                        let (refusal, message) = refusal(&resend.record, e.first());
                        tracing::warn!(topic = %resend.record.topic, error = %message, "an output was refused for good: its input is dead-lettered");
                        refused.insert(origin);
                        again.retain(|r: &Resend| r.origin != Some(origin));
                        let letter = result.refuse_output(batch.records(), origin, refusal, message).clone();
                        again.push(Resend { origin: None, record: letter });
                    }
                    Err((_, e)) => {
                        why.get_or_insert_with(|| e.to_string());
                        again.push(resend);
                    }
                }
            }
            if let Some(why) = why {
                self.wait(Step::Delivery, &why, &mut backoff).await?;
            }
            let records: Vec<&Produce> = again.iter().map(|r| &r.record).collect();
            pending = match self.sink.send_all(&records).await {
                Ok(()) => Vec::new(),
                Err(e) => {
                    let mut again: Vec<Option<Resend>> = again.into_iter().map(Some).collect();
                    e.failed.into_iter().map(|(i, e)| (again[i].take().expect("one error per record"), e)).collect()
                }
            };
        }
        Ok(())
    }

    /// Moves the partitions of uncommitted batches back to their committed
    /// offsets, retrying while the broker cannot answer.
    pub async fn rewind<'b>(
        &mut self,
        source: &Source,
        batches: impl IntoIterator<Item = &'b Batch> + Clone,
    ) -> anyhow::Result<()> {
        let mut backoff = Backoff::new();
        loop {
            match source.rewind(batches.clone()).await {
                Ok(()) => {
                    self.rewinds += 1;
                    return Ok(());
                }
                Err(e) => {
                    let why = e.to_string();
                    self.wait(Step::Rewind, &why, &mut backoff).await?
                }
            }
        }
    }

    /// Logs a transient failure, marks the host not ready and sleeps; fails
    /// when a stop is requested and this step has already waited
    /// [`STOP_GRACE`] in all.
    pub async fn wait(&mut self, step: Step, why: &str, backoff: &mut Backoff) -> anyhow::Result<()> {
        self.metrics.ready.store(false, Ordering::Relaxed);
        self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        self.metrics.record_error(step.peer().as_str());
        let delay = backoff.next();
        tracing::warn!(retry_in_ms = delay.as_millis() as u64, error = why, "transient failure while {step}; retrying");
        if *self.stop.borrow() && backoff.waited >= STOP_GRACE {
            return Err(Abandoned { step }.into());
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// Waits between attempts: [`MIN_BACKOFF`], doubling up to
/// [`MAX_BACKOFF`], and the total waited.
pub struct Backoff {
    delay: Duration,
    waited: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// A backoff that has not waited yet.
    pub fn new() -> Self {
        Self { delay: MIN_BACKOFF, waited: Duration::ZERO }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.next()
    }

    fn next(&mut self) -> Duration {
        let delay = self.delay;
        self.waited += delay;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_counts_what_it_waited() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..8).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.waited, Duration::from_millis(21200));
    }
}
