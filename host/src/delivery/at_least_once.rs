//! At-least-once: outputs are written by the idempotent producer
//! (`acks=all`) while later batches are processed, and a batch's offsets
//! are committed, on an interval, once its outputs and dead letters are all
//! acknowledged. A crash replays the uncommitted batches, whose outputs may
//! then appear twice; their effects, behind the fence, do not count twice.

use super::{Delivering, Mode, Steps, produced};
use crate::kafka::{Commit, Source};
use crate::pipeline::BatchResult;
use crate::record::Batch;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How many batches may be on their way to the broker, handed to the
/// producer and not yet acknowledged. Default 4: the broker's round trip
/// (and the producer's `linger.ms`) is paid once per four batches, not once
/// per batch, and at most four batches' outputs are held in memory.
pub const IN_FLIGHT: usize = 4;

/// The at-least-once delivery mode.
pub struct AtLeastOnce {
    /// Batches written and not acknowledged yet, oldest first.
    delivering: VecDeque<Delivering>,
    /// How often confirmed offsets are committed (`commit_interval_ms`).
    commit_every: Duration,
    /// When offsets were last committed.
    committed: Instant,
}

impl AtLeastOnce {
    /// Commits every `commit_every`.
    pub fn new(commit_every: Duration) -> Self {
        Self { delivering: VecDeque::new(), commit_every, committed: Instant::now() }
    }

    /// Waits for the oldest batch's acknowledgements (sending again what
    /// failed), then stores its offsets for the next commit, commits if
    /// one is due, and counts the batch.
    async fn finish(&mut self, steps: &mut Steps<'_>, source: &Source, done: Delivering) -> anyhow::Result<()> {
        let Delivering { batch, mut result, sent } = done;
        if let Err(failed) = sent.acknowledged().await {
            steps.redeliver(&batch, &mut result, failed).await?;
        }
        source.store(&batch);
        if self.committed.elapsed() >= self.commit_every {
            self.commit(steps, source, Commit::Async);
        }
        steps.metrics.record_batch(batch.records(), &result);
        steps.metrics.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Finishes every batch in flight and commits their offsets.
    async fn drain(&mut self, steps: &mut Steps<'_>, source: &Source, mode: Commit) -> anyhow::Result<()> {
        while let Some(done) = self.delivering.pop_front() {
            self.finish(steps, source, done).await?;
        }
        self.commit(steps, source, mode);
        Ok(())
    }

    /// Commits the offsets of the batches finished since the last commit.
    /// A failed commit is not retried: the next one covers it.
    fn commit(&mut self, steps: &Steps<'_>, source: &Source, mode: Commit) {
        self.committed = Instant::now();
        match source.commit_stored(mode) {
            Ok(false) => {}
            Ok(true) => {
                steps.metrics.offset_commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "offset commit failed; the next commit covers it"),
        }
    }
}

impl Mode for AtLeastOnce {
    async fn deliver(
        &mut self,
        steps: &mut Steps<'_>,
        source: &Source,
        batch: Arc<Batch>,
        result: BatchResult,
    ) -> anyhow::Result<()> {
        // Up to `IN_FLIGHT` batches travel to the broker while the next is
        // processed; the oldest is acknowledged (and its offsets stored)
        // before another goes out. The idempotent producer keeps each
        // partition's outputs in the order they were handed to it.
        let sent = steps.sink.enqueue(&produced(&result)).await;
        self.delivering.push_back(Delivering { batch, result, sent });
        while self.delivering.len() > IN_FLIGHT {
            let done = self.delivering.pop_front().expect("more than IN_FLIGHT");
            self.finish(steps, source, done).await?;
        }
        Ok(())
    }

    async fn settle(&mut self, steps: &mut Steps<'_>, source: &Source) -> anyhow::Result<()> {
        self.drain(steps, source, Commit::Async).await
    }

    async fn hand_over(&mut self, steps: &mut Steps<'_>, source: &Source) -> anyhow::Result<()> {
        self.drain(steps, source, Commit::Sync).await
    }

    fn set_commit_interval(&mut self, every: Duration) {
        self.commit_every = every;
    }

    fn shutdown(&mut self, source: &Source) {
        if let Err(e) = source.commit_stored(Commit::Sync) {
            tracing::warn!(error = %e, "final offset commit failed; the last batches may be processed again");
        }
    }
}
