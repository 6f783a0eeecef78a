//! Exactly-once: the outputs, dead letters and consumer offsets of the
//! batches of one `commit_interval_ms` go in one Kafka transaction. A failed
//! transaction is aborted (or its producer replaced, when the failure is
//! fatal) and its batches are read and processed again; their effects,
//! behind the fence, are not applied again.
//!
//! An output the broker refuses for good aborts its transaction like any
//! failure, and its input record becomes a suspect: processed again, its
//! outputs travel alone, so that a refusal of a whole request is told from
//! a refusal of the record. Refused alone as well, the record is
//! dead-lettered (`output_too_large` or `output_refused`) when it is
//! processed the next time. Each such record costs one or two aborted
//! transactions, never a pipeline that stops.

use super::{Backoff, Delivering, Mode, Step, Steps, produced, refusal};
use crate::kafka::Failure;
use crate::kafka::{Sent, Source, Unacknowledged};
use crate::pipeline::{BatchResult, HostRefusal};
use crate::record::{Batch, Record};
use anyhow::Context;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The exactly-once delivery mode.
pub struct ExactlyOnce {
    /// The open transaction, if any.
    open: Option<Transaction>,
    /// How long a transaction takes batches (`commit_interval_ms`).
    commit_every: Duration,
    /// The wait before the next attempt after failed transactions; reset
    /// by a commit.
    rewinds: Backoff,
    /// The producer failed fatally (or could not be replaced yet): replace
    /// it before the next transaction.
    replace_producer: bool,
    /// Records refused for good by the broker, and what they are
    /// dead-lettered as when processed again.
    refused: Refused,
}

/// Where a record comes from: topic, partition, offset.
type Coordinates = (String, i32, i64);

fn coordinates(record: &Record) -> Coordinates {
    (record.topic.clone(), record.partition, record.offset)
}

/// The records whose outputs the broker refused, remembered across the
/// aborted transactions that found them out.
#[derive(Default)]
struct Refused {
    /// An output refused along with others: sent alone next time.
    suspects: HashSet<Coordinates>,
    /// An output refused alone: the record is dead-lettered next time.
    alone: HashMap<Coordinates, (HostRefusal, String)>,
}

impl Refused {
    /// Notes the refusals among a transaction's unacknowledged records.
    fn note(&mut self, batch: &Batch, result: &BatchResult, failed: &Unacknowledged) {
        for (i, error) in &failed.failed {
            let Some(&origin) = result.output_origins.get(*i) else { continue };
            if Failure::of(error) != Failure::Record {
                continue;
            }
            let at = coordinates(&batch.records()[origin]);
            if self.suspects.remove(&at) {
                self.alone.insert(at, refusal(&result.outputs[*i], error));
            } else {
                self.suspects.insert(at);
            }
        }
    }

    /// Dead-letters the records of `batch` refused alone before.
    fn reject(&self, batch: &Batch, result: &mut BatchResult) {
        if self.alone.is_empty() {
            return;
        }
        for (origin, record) in batch.records().iter().enumerate() {
            if let Some((refusal, message)) = self.alone.get(&coordinates(record))
                && result.output_origins.contains(&origin)
            {
                result.refuse_output(batch.records(), origin, *refusal, message.clone());
            }
        }
    }

    /// Whether output `i` of `result` must travel alone.
    fn suspect(&self, batch: &Batch, result: &BatchResult, i: usize) -> bool {
        result.output_origins.get(i).is_some_and(|&o| self.suspects.contains(&coordinates(&batch.records()[o])))
    }

    /// Forgets the records of committed batches.
    fn committed(&mut self, batches: &[(Arc<Batch>, BatchResult)]) {
        if self.suspects.is_empty() && self.alone.is_empty() {
            return;
        }
        for record in batches.iter().flat_map(|(b, _)| b.records()) {
            let at = coordinates(record);
            self.suspects.remove(&at);
            self.alone.remove(&at);
        }
    }
}

/// An open Kafka transaction and the batches written in it, their effects
/// applied.
struct Transaction {
    batches: Vec<Delivering>,
    begun: Instant,
}

impl ExactlyOnce {
    /// One transaction per `commit_every`.
    pub fn new(commit_every: Duration) -> Self {
        Self { open: None, commit_every, rewinds: Backoff::new(), replace_producer: false, refused: Refused::default() }
    }

    /// Begins a transaction, replacing the producer first if it failed
    /// fatally. A fatal error marks the producer for replacement.
    fn begin(&mut self, steps: &mut Steps<'_>) -> anyhow::Result<()> {
        if self.replace_producer {
            steps.sink.recreate().context("cannot recreate the transactional producer")?;
            self.replace_producer = false;
            steps.metrics.producer_replacements.fetch_add(1, Ordering::Relaxed);
            tracing::info!("the transactional producer was replaced");
        }
        if let Err(e) = steps.sink.begin() {
            self.replace_producer = Failure::of(&e) == Failure::Fatal;
            return Err(e).context("begin transaction");
        }
        Ok(())
    }

    /// Commits the open transaction: waits for its records'
    /// acknowledgements, adds the consumer offsets after its batches and
    /// commits, then counts its batches. On failure aborts it (or marks the
    /// producer for replacement), waits, and rewinds its partitions so that
    /// its batches are read and processed again.
    ///
    /// `handing_over`: the close answers a handover (see
    /// [`crate::kafka::Handover`]), which a failed transaction answers
    /// before its rewind, since the rewind waits for the rebalance.
    async fn close(
        &mut self,
        steps: &mut Steps<'_>,
        source: &Source,
        open: Transaction,
        handing_over: bool,
    ) -> anyhow::Result<()> {
        let mut batches = Vec::with_capacity(open.batches.len());
        let mut sent = Vec::with_capacity(open.batches.len());
        for Delivering { batch, result, sent: s } in open.batches {
            batches.push((batch, result));
            sent.push(s);
        }
        match commit(steps, source, &batches, sent, &mut self.refused).await {
            Ok(()) => {
                self.refused.committed(&batches);
                self.rewinds = Backoff::new();
                steps.metrics.transactions.fetch_add(1, Ordering::Relaxed);
                for (batch, result) in &batches {
                    steps.metrics.record_batch(batch.records(), result);
                }
                steps.metrics.ready.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                steps.metrics.transactions_aborted.fetch_add(1, Ordering::Relaxed);
                if Failure::in_chain(&error) == Failure::Fatal {
                    tracing::warn!(error = %error, "fatal transaction error: the producer is replaced");
                    self.replace_producer = true;
                } else if let Err(e) = steps.sink.abort() {
                    tracing::warn!(error = %e, "abort failed: the producer is replaced");
                    self.replace_producer = true;
                }
                if handing_over {
                    // Nothing taken is held now: the aborted batches are
                    // read again, by this consumer or the next owner.
                    source.handover().answer();
                }
                steps.wait(Step::Commit, &format!("{error:#}"), &mut self.rewinds).await?;
                steps.rewind(source, batches.iter().map(|(b, _)| &**b)).await
            }
        }
    }
}

/// Waits for the acknowledgements of a transaction's records, adds the
/// consumer offsets after its batches, and commits it. Records the broker
/// refused for good are noted in `refused`.
async fn commit(
    steps: &mut Steps<'_>,
    source: &Source,
    batches: &[(Arc<Batch>, BatchResult)],
    sent: Vec<Sent>,
    refused: &mut Refused,
) -> anyhow::Result<()> {
    let mut first_failure = None;
    for ((batch, result), sent) in batches.iter().zip(sent) {
        if let Err(failed) = sent.acknowledged().await {
            refused.note(batch, result, &failed);
            first_failure.get_or_insert(failed);
        }
    }
    if let Some(failed) = first_failure {
        return Err(failed.into());
    }
    // No revoked partition is released while the offsets are sent and
    // committed; one released without a handover since its records were
    // read fails the transaction instead (its next owner reads them again).
    let _committing = source.committing(batches.iter().map(|(b, _)| &**b)).map_err(anyhow::Error::msg)?;
    let group = source.group_metadata().context("the consumer has no group metadata")?;
    let offsets = Source::offsets_after(batches.iter().map(|(b, _)| &**b))?;
    steps.sink.send_offsets(&offsets, &group).context("send offsets to the transaction")?;
    let mut commit = steps.sink.commit();
    for _ in 0..3 {
        match &commit {
            Err(e) if Failure::of(e) == Failure::Retriable => commit = steps.sink.commit(),
            _ => break,
        }
    }
    commit.context("commit transaction")?;
    source.note_committed(batches.iter().map(|(b, _)| &**b));
    Ok(())
}

impl Mode for ExactlyOnce {
    async fn deliver(
        &mut self,
        steps: &mut Steps<'_>,
        source: &Source,
        batch: Arc<Batch>,
        result: BatchResult,
    ) -> anyhow::Result<()> {
        // The batch joins the open transaction (one is begun if none is
        // open), which commits once it has been open for `commit_every`.
        if self.open.is_none() {
            if let Err(e) = self.begin(steps) {
                steps.wait(Step::Begin, &format!("{e:#}"), &mut self.rewinds).await?;
                return steps.rewind(source, [&*batch]).await;
            }
            self.open = Some(Transaction { batches: Vec::new(), begun: Instant::now() });
        }
        let mut result = result;
        self.refused.reject(&batch, &mut result);
        let open = self.open.as_mut().expect("begun above");
        let records = produced(&result);
        let sent = if self.refused.suspects.is_empty() {
            steps.sink.enqueue(&records).await
        } else {
            steps.sink.enqueue_isolating(&records, |i| self.refused.suspect(&batch, &result, i)).await
        };
        open.batches.push(Delivering { batch, result, sent });
        if open.begun.elapsed() >= self.commit_every {
            let open = self.open.take().expect("open");
            self.close(steps, source, open, false).await?;
        }
        Ok(())
    }

    async fn settle(&mut self, steps: &mut Steps<'_>, source: &Source) -> anyhow::Result<()> {
        match self.open.take() {
            Some(open) => self.close(steps, source, open, false).await,
            None => Ok(()),
        }
    }

    async fn hand_over(&mut self, steps: &mut Steps<'_>, source: &Source) -> anyhow::Result<()> {
        match self.open.take() {
            Some(open) => self.close(steps, source, open, true).await,
            None => Ok(()),
        }
    }

    fn set_commit_interval(&mut self, every: Duration) {
        self.commit_every = every;
    }

    fn shutdown(&mut self, _source: &Source) {}
}
