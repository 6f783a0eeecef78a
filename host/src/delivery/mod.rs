//! Delivery: how a processed batch's outputs, dead letters and offsets
//! reach Kafka once its Redis effects are applied.
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
use crate::kafka::{Sent, Sink, Source};
use crate::metrics::Metrics;
use crate::pipeline::{BatchResult, Chain};
use crate::record::{Batch, Produce};
use crate::redis::{Applied, Fence, RecordEffect, RedisEffects};
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

    /// Applies a new `commit_interval_ms`.
    fn set_commit_interval(&mut self, every: Duration);

    /// After the last batch (settled or abandoned): commits what is
    /// confirmed and not committed yet.
    fn shutdown(&mut self, source: &Source);
}

/// A Kafka error, classified once, by what the step that met it must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Try again later: the broker is away, a leader moved, a queue is
    /// full, a request timed out.
    Retriable,
    /// The open transaction cannot commit: abort it and process its
    /// batches again. The producer is fine.
    Abortable,
    /// The producer cannot be used any more (fenced by a newer instance, a
    /// fatal idempotence or transaction error): replace it.
    Fatal,
}

impl Failure {
    /// What `error` means.
    pub fn of(error: &rdkafka::error::KafkaError) -> Self {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
        let code = match error {
            KafkaError::Transaction(e) if e.is_fatal() => return Self::Fatal,
            KafkaError::Transaction(e) if e.txn_requires_abort() => return Self::Abortable,
            KafkaError::Transaction(e) => Some(e.code()),
            _ => error.rdkafka_error_code(),
        };
        match code {
            Some(
                Code::Fatal
                | Code::ProducerFenced
                | Code::InvalidProducerEpoch
                | Code::TransactionalIdAuthorizationFailed,
            ) => Self::Fatal,
            _ => Self::Retriable,
        }
    }

    /// The classification of the first Kafka error in `error`'s chain
    /// ([`Failure::Retriable`] when there is none).
    pub fn in_chain(error: &anyhow::Error) -> Self {
        error.chain().find_map(|c| c.downcast_ref::<rdkafka::error::KafkaError>()).map_or(Self::Retriable, Self::of)
    }
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
}

/// A batch whose outputs and dead letters were handed to the producer and
/// are not acknowledged yet.
pub(crate) struct Delivering {
    pub(crate) batch: Arc<Batch>,
    pub(crate) result: BatchResult,
    pub(crate) sent: Sent,
}

/// Every record a batch writes: its outputs, then its dead letters.
pub fn produced(result: &BatchResult) -> Vec<&Produce> {
    result.outputs.iter().chain(result.dead_letters.iter().map(|d| &d.record)).collect()
}

/// A batch could not be finished before the stop grace ran out.
#[derive(Debug)]
pub struct Abandoned(&'static str);

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped while {}: the batch was not committed and will be processed again", self.0)
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
}

impl Steps<'_> {
    /// Runs `batch` through the chain, waiting while lookups cannot be
    /// served.
    pub async fn process(&mut self, chain: &Arc<Mutex<Chain>>, batch: &Arc<Batch>) -> anyhow::Result<BatchResult> {
        let mut backoff = Backoff::new();
        loop {
            let (chain, batch) = (chain.clone(), batch.clone());
            let result =
                tokio::task::spawn_blocking(move || chain.lock().expect("chain lock").process(batch.records())).await?;
            match result {
                Ok(result) => return Ok(result),
                Err(e) => self.wait(Peer::Redis, "waiting for lookups", &e.to_string(), &mut backoff).await?,
            }
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
                    self.wait(Peer::Redis, "applying Redis effects", &why, &mut backoff).await?;
                }
            }
        }
    }

    /// Sends `pending` until every record is acknowledged, waiting out
    /// failures with `backoff`.
    pub async fn deliver(&mut self, mut pending: Vec<&Produce>, mut backoff: Backoff) -> anyhow::Result<()> {
        while !pending.is_empty() {
            match self.sink.send_all(&pending).await {
                Ok(()) => break,
                Err((e, failed)) => {
                    let why = format!("{} of {} records not acknowledged: {e}", failed.len(), pending.len());
                    pending = failed;
                    self.wait(Peer::Kafka, "delivering to Kafka", &why, &mut backoff).await?;
                }
            }
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
                Ok(()) => return Ok(()),
                Err(e) => {
                    let why = e.to_string();
                    self.wait(Peer::Kafka, "rewinding after an aborted transaction", &why, &mut backoff).await?
                }
            }
        }
    }

    /// Logs a transient failure, marks the host not ready and sleeps; fails
    /// when a stop is requested and this step has already waited
    /// [`STOP_GRACE`] in all.
    pub async fn wait(
        &mut self,
        peer: Peer,
        doing: &'static str,
        why: &str,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        self.metrics.ready.store(false, Ordering::Relaxed);
        self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        self.metrics.record_error(match peer {
            Peer::Kafka => "kafka",
            Peer::Redis => "redis",
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

    #[test]
    fn kafka_errors_are_classified_by_code_not_by_text() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::ProducerFenced)), Failure::Fatal);
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::Fatal)), Failure::Fatal);
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::MessageTimedOut)), Failure::Retriable);
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::QueueFull)), Failure::Retriable);
        assert_eq!(Failure::of(&KafkaError::Canceled), Failure::Retriable);
        let wrapped = anyhow::Error::new(KafkaError::MessageProduction(Code::InvalidProducerEpoch)).context("commit");
        assert_eq!(Failure::in_chain(&wrapped), Failure::Fatal);
        assert_eq!(Failure::in_chain(&anyhow::anyhow!("no Kafka error here")), Failure::Retriable);
    }
}
