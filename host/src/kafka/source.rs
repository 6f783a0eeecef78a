//! The consumer-group source: a reader task that keeps a bounded buffer of
//! records filled while the chain works, batches taken from that buffer as
//! soon as the run loop is free, and offset commits.

use super::{Committing, HANDOVER_WAIT, Handover, LogContext};
use crate::config::PipelineConfig;
use crate::metrics::Metrics;
use crate::record::{Batch, Header, Record, Span};
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerGroupMetadata, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};

/// How an offset commit waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Until the broker has acknowledged it.
    Sync,
    /// Not at all; the next commit covers a lost one.
    Async,
}

/// How long [`Source::next_batch`] waits for a first record before it
/// returns an empty batch, so that the run loop can commit, close a
/// transaction or put a reloaded pipeline live while no records arrive.
pub const IDLE_POLL: Duration = Duration::from_millis(100);

/// How many batches the reader may read ahead of the run loop. Default 2:
/// the next batch is ready when the chain is free, and memory stays bounded
/// by twice `batch_size` records and twice `batch_max_bytes` bytes (on top
/// of librdkafka's own fetch queue).
pub const READ_AHEAD_BATCHES: usize = 2;

/// How long the reader waits after a consumer error before reading again.
const ERROR_PAUSE: Duration = Duration::from_millis(200);

/// How long the reader waits for room in a full buffer before it pauses its
/// partitions and keeps polling the consumer, so that a rebalance is served
/// (and revoked partitions handed over) while the run loop works on a long
/// batch or waits for a peer. Short waits for room, the usual case under
/// load, do not pause: a pause drops what librdkafka has fetched ahead.
const PAUSE_AFTER: Duration = Duration::from_millis(500);

/// Consumes the input topics in the pipeline's consumer group. A reader
/// task reads ahead into a bounded buffer; the run loop takes a batch from
/// it as soon as it is free. Offsets are only ever committed explicitly,
/// after a batch's results are confirmed.
pub struct Source {
    consumer: Arc<StreamConsumer<LogContext>>,
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
    reader: tokio::task::JoinHandle<()>,
    /// Per partition, the offset after the last confirmed record, not
    /// committed yet.
    stored: Mutex<BTreeMap<(String, i32), i64>>,
    metrics: Arc<Metrics>,
}

/// What the reader and the run loop share.
struct Shared {
    buffer: Mutex<Buffer>,
    /// The reader pushed a record.
    arrived: Notify,
    /// The run loop took records.
    room: Notify,
    batch_size: AtomicUsize,
    batch_max_bytes: AtomicUsize,
    /// Told of the partitions revoked, during the rebalance (the stages'
    /// keyed state).
    also_on_revoke: Mutex<Vec<super::RevokeHook>>,
    /// Per partition, the offset last committed by this consumer.
    committed: Mutex<BTreeMap<(String, i32), i64>>,
    /// Revoked partitions wait for the run loop to commit what it took.
    handover: Handover,
}

/// Records read and not yet taken, in the order read (so in offset order
/// per partition).
struct Buffer {
    records: VecDeque<(Record, usize)>,
    bytes: usize,
    /// The topics subscribed to: a record of another topic, read just
    /// before a resubscription, is left out.
    topics: Vec<String>,
    /// Per partition (topic, partition, offset after the last record
    /// read): a few entries, searched without allocating.
    read_to: Vec<(String, i32, i64)>,
    /// How many times a rewind has moved a partition back.
    seeks: u64,
    /// Per partition, where the last rewind moved it and that move's
    /// number (of [`Buffer::seeks`]).
    sought: Vec<(String, i32, i64, u64)>,
    /// Partitions released without a handover, each with the number (of
    /// [`Buffer::seeks`], which counts these too) of its last loss: records
    /// of it taken before are not this consumer's to commit.
    lost: Vec<(String, i32, u64)>,
}

impl Buffer {
    /// Where the last rewind moved a partition, if it did so after the
    /// `seeks`th move.
    fn sought_after(&self, topic: &str, partition: i32, seeks: u64) -> Option<i64> {
        let (.., to, n) = self.sought.iter().find(|(t, p, ..)| t == topic && *p == partition)?;
        (*n > seeks).then_some(*to)
    }

    /// Notes `partitions` released without a handover.
    fn note_lost(&mut self, partitions: &[(String, i32)]) {
        self.seeks += 1;
        let n = self.seeks;
        for (topic, partition) in partitions {
            match self.lost.iter_mut().find(|(t, p, _)| t == topic && p == partition) {
                Some((.., at)) => *at = n,
                None => self.lost.push((topic.clone(), *partition, n)),
            }
        }
    }

    /// The first partition of `batch` lost after its records were taken.
    fn lost_from(&self, batch: &Batch) -> Option<&(String, i32, u64)> {
        let lost_after = |span: &Span| {
            self.lost.iter().find(|(t, p, n)| *t == span.topic && *p == span.partition && *n > batch.seeks())
        };
        batch.spans().iter().find_map(lost_after)
    }

    fn note_seek(&mut self, topic: &str, partition: i32, offset: i64) {
        self.seeks += 1;
        let n = self.seeks;
        match self.sought.iter_mut().find(|(t, p, ..)| t == topic && *p == partition) {
            Some((.., to, at)) => (*to, *at) = (offset, n),
            None => self.sought.push((topic.to_string(), partition, offset, n)),
        }
    }
}

/// A request to the reader, which alone moves the consumer's positions, so
/// that no record read before a seek is buffered after it.
enum Control {
    /// Drop the buffered records of these partitions and move each back to
    /// its committed offset, or to the given offset when nothing is
    /// committed.
    /// Per partition: the first offset and the batches' earliest
    /// [`Batch::seeks`].
    Rewind { first: BTreeMap<(String, i32), (i64, u64)>, reply: oneshot::Sender<KafkaResult<()>> },
}

impl Source {
    /// Creates the consumer, subscribes to the input topics and starts the
    /// reader. Must be called within the Tokio runtime.
    pub fn new(config: &PipelineConfig, metrics: Arc<Metrics>) -> KafkaResult<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.kafka.brokers)
            .set("group.id", &config.kafka.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Partition end offsets for the lag metric, every 2 s.
            .set("statistics.interval.ms", "2000")
            // How long the broker may hold a fetch when no record is there
            // (librdkafka's default is 500 ms): brokers that do not answer a
            // fetch as soon as a record arrives otherwise add up to that much
            // latency to every record.
            .set("fetch.wait.max.ms", "50")
            // How long librdkafka postpones the next fetch once its queue
            // holds more than `queued.min.messages` or
            // `queued.max.messages.kbytes` (its default is 1000 ms). A broker
            // that answers one fetch with tens of thousands of records
            // (tansu does) fills that queue at once, and with the default
            // the consumer then sits idle for up to a second each time the
            // pipeline has worked through it: the pass-through ran at half
            // its rate. The thresholds still bound librdkafka's memory.
            .set("fetch.queue.backoff.ms", "10");
        for (key, value) in &config.kafka.consumer {
            client.set(key.get_ref(), value);
        }
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                records: VecDeque::new(),
                bytes: 0,
                topics: config.source.topics.clone(),
                read_to: Vec::new(),
                seeks: 0,
                sought: Vec::new(),
                lost: Vec::new(),
            }),
            arrived: Notify::new(),
            room: Notify::new(),
            batch_size: AtomicUsize::new(config.source.batch_size.get()),
            batch_max_bytes: AtomicUsize::new(config.source.batch_max_bytes.get()),
            also_on_revoke: Mutex::new(Vec::new()),
            committed: Mutex::new(BTreeMap::new()),
            handover: Handover::default(),
        });
        // Records of revoked partitions leave the buffer during the
        // rebalance itself: their next owner reads them from the committed
        // offset, and no batch taken afterwards holds them.
        let on_revoke = shared.clone();
        let context = LogContext::new("consumer", Some(metrics.clone())).on_revoke(Box::new(move |revoked| {
            let dropped = on_revoke.drop_partitions(revoked);
            for hook in on_revoke.also_on_revoke.lock().expect("revoke hooks lock").iter() {
                hook(revoked);
            }
            if dropped > 0 {
                tracing::info!(dropped, "records read ahead of the revoked partitions are left to their next owner");
            }
        }));
        // Before they are released, revoked partitions are handed over:
        // what the run loop took of them is committed first (see
        // [`Handover`]). Their records still buffered are dropped before it
        // is asked, so that it takes none after it answers.
        let (handing_over, missed) = (shared.clone(), metrics.clone());
        let context = context.before_revoke(Box::new(move |revoked, lost| {
            handing_over.drop_partitions(revoked);
            let lose = || handing_over.buffer.lock().expect("buffer lock").note_lost(revoked);
            // Partitions already lost (this member was deemed gone: its
            // session timed out, or it did not poll for
            // `max.poll.interval.ms`) may have been read by their next
            // owner: nothing read of them here may be committed.
            let started = std::time::Instant::now();
            let handed_over = if lost {
                handing_over.handover.lose(lose);
                false
            } else {
                tokio::task::block_in_place(|| handing_over.handover.ask(HANDOVER_WAIT, lose))
            };
            if handed_over {
                let waited_ms = started.elapsed().as_millis() as u64;
                tracing::info!(partitions = revoked.len(), waited_ms, "revoked partitions handed over");
            } else {
                missed.handovers_missed.fetch_add(1, Ordering::Relaxed);
                let names: Vec<String> = revoked.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                let why = if lost {
                    "the group took them away (this member missed its session timeout or max.poll.interval.ms)"
                } else {
                    "the pipeline did not commit what it read of them within the handover's wait"
                };
                tracing::warn!(
                    partitions = %names.join(","), wait_ms = HANDOVER_WAIT.as_millis() as u64,
                    "revoked partitions released before what was read of them was committed ({why}): \
                     it is left to their next owner"
                );
            }
        }));
        let consumer: StreamConsumer<LogContext> = client.create_with_context(context)?;
        let topics: Vec<&str> = config.source.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let consumer = Arc::new(consumer);
        let (control, requests) = mpsc::channel(1);
        let reader = tokio::spawn(read(consumer.clone(), shared.clone(), requests, metrics.clone()));
        Ok(Self { consumer, shared, control, reader, stored: Mutex::new(BTreeMap::new()), metrics })
    }

    /// Calls `hook` with the partitions revoked, during each rebalance.
    pub fn also_on_revoke(&self, hook: super::RevokeHook) {
        self.shared.also_on_revoke.lock().expect("revoke hooks lock").push(hook);
    }

    /// The handover of revoked partitions, answered by the run loop.
    pub fn handover(&self) -> &Handover {
        &self.shared.handover
    }

    /// Starts committing `batches` (in a transaction), unless one of their
    /// partitions was released without a handover since its records were
    /// taken: then the error names it, and the batches must be dropped, not
    /// committed, since the partition's next owner reads them again. No
    /// handover gives up while the returned guard lives.
    pub fn committing<'a>(&self, batches: impl IntoIterator<Item = &'a Batch>) -> Result<Committing<'_>, String> {
        self.shared.handover.committing(|| {
            let buffer = self.shared.buffer.lock().expect("buffer lock");
            let (topic, partition, _) = batches.into_iter().find_map(|b| buffer.lost_from(b))?;
            Some(format!(
                "{topic}/{partition} was revoked and released before its records read here were committed \
                 (not handed over within {} s, or taken away by the group): they are left to its next owner",
                HANDOVER_WAIT.as_secs()
            ))
        })
    }

    /// The offset this consumer last committed for a partition, if any.
    pub fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        let committed = self.shared.committed.lock().expect("committed lock");
        committed.get(&(topic.to_string(), partition)).copied()
    }

    /// Notes offsets committed (in a transaction) for [`Source::committed`].
    pub fn note_committed<'a>(&self, batches: impl IntoIterator<Item = &'a Batch>) {
        self.shared.note_committed(next_offsets(batches));
    }

    /// Applies new batching settings from the next batch on.
    pub fn set_batching(&self, size: usize, max_bytes: usize) {
        self.shared.batch_size.store(size, Ordering::Relaxed);
        self.shared.batch_max_bytes.store(max_bytes, Ordering::Relaxed);
        self.shared.room.notify_one();
    }

    /// Replaces the subscription. Call only between batches, with every
    /// confirmed batch committed: the group rebalances, and records read
    /// ahead from topics no longer read are dropped.
    pub fn resubscribe(&self, topics: &[String]) -> KafkaResult<()> {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let mut buffer = self.shared.buffer.lock().expect("buffer lock");
        buffer.topics = topics.to_vec();
        buffer.retain(|r| topics.contains(&r.topic));
        self.consumer.subscribe(&names)
    }

    /// The records waiting, as one batch of at most `batch_size` records
    /// (and about `batch_max_bytes`: the batch stops growing once it holds
    /// that many bytes). Waits up to [`IDLE_POLL`] for a first record and
    /// returns an empty batch if none comes. It does not wait for a batch
    /// to fill: while the chain works on one batch the next one gathers,
    /// so batches are as large as the load makes them.
    pub async fn next_batch(&self) -> Batch {
        let deadline = tokio::time::Instant::now() + IDLE_POLL;
        loop {
            let batch = self.shared.take();
            if !batch.is_empty() {
                return batch;
            }
            if tokio::time::timeout_at(deadline, self.shared.arrived.notified()).await.is_err() {
                return self.shared.take();
            }
        }
    }

    /// The records waiting now, as one batch like [`Source::next_batch`]'s,
    /// without waiting for any: empty if none is waiting.
    pub fn take_waiting(&self) -> Batch {
        self.shared.take()
    }

    /// Notes, per partition, the offset after the last record of `batch`
    /// for the next [`Source::commit_stored`]: its records' outputs are
    /// acknowledged and their effects applied.
    pub fn store(&self, batch: &Batch) {
        let mut stored = self.stored.lock().expect("stored lock");
        for (key, next) in next_offsets([batch]) {
            let slot = stored.entry(key).or_insert(next);
            *slot = (*slot).max(next);
        }
    }

    /// Commits the offsets stored since the last commit. A failed commit
    /// (a rebalance took the partitions, the broker is away) is not
    /// retried: the next commit covers the partitions still assigned, and
    /// the others are read again from their last committed offset.
    /// Returns whether there was anything to commit.
    pub fn commit_stored(&self, mode: Commit) -> KafkaResult<bool> {
        let offsets = std::mem::take(&mut *self.stored.lock().expect("stored lock"));
        if offsets.is_empty() {
            return Ok(false);
        }
        let mode = match mode {
            Commit::Sync => CommitMode::Sync,
            Commit::Async => CommitMode::Async,
        };
        self.consumer.commit(&tpl(&offsets)?, mode)?;
        self.shared.note_committed(offsets);
        Ok(true)
    }

    /// The records read ahead and not taken yet, and their bytes.
    pub fn buffered(&self) -> (usize, usize) {
        let buffer = self.shared.buffer.lock().expect("buffer lock");
        (buffer.records.len(), buffer.bytes)
    }

    /// The offsets after `batches`, per partition, for a transaction.
    pub fn offsets_after<'a>(batches: impl IntoIterator<Item = &'a Batch>) -> KafkaResult<TopicPartitionList> {
        tpl(&next_offsets(batches))
    }

    /// The group's metadata, for committing offsets in a transaction.
    pub fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.consumer.group_metadata()
    }

    /// Moves every partition of `batches` back to the group's committed
    /// offset (or to the batches' first record when that is earlier or
    /// nothing is committed),
    /// dropping what was read ahead of it, so that uncommitted batches are
    /// read again. Fails, to be retried, when the committed offsets cannot
    /// be read or a partition still assigned cannot be moved.
    pub async fn rewind<'a>(&self, batches: impl IntoIterator<Item = &'a Batch>) -> KafkaResult<()> {
        let mut first: BTreeMap<(String, i32), (i64, u64)> = BTreeMap::new();
        for batch in batches {
            for span in batch.spans() {
                let slot = first.entry((span.topic.clone(), span.partition)).or_insert((span.first, batch.seeks()));
                *slot = (slot.0.min(span.first), slot.1.min(batch.seeks()));
            }
        }
        let (reply, answer) = oneshot::channel();
        self.control.send(Control::Rewind { first, reply }).await.map_err(|_| KafkaError::Canceled)?;
        answer.await.map_err(|_| KafkaError::Canceled)?
    }

    /// The offset after the last record of a partition, if known since
    /// the partition was assigned: the largest of what the consumer's
    /// statistics reported, what this consumer has read and what the broker
    /// answers now (`None` until the statistics have reported it, every
    /// 2 s). Each is a lower bound of the true end.
    pub fn end_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        let reported = self.metrics.end_offset(topic, partition)?;
        let buffer = self.shared.buffer.lock().expect("buffer lock");
        let read = buffer.read_to.iter().find(|(t, p, _)| t == topic && *p == partition).map_or(0, |(.., o)| *o);
        drop(buffer);
        let reported = reported.max(read);
        let asked =
            tokio::task::block_in_place(|| self.consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)));
        Some(asked.map_or(reported, |(_, high)| high.max(reported)))
    }

    /// Leaves the consumer group.
    pub fn unsubscribe(&self) {
        self.consumer.unsubscribe();
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Shared {
    fn has_room(&self) -> bool {
        let buffer = self.buffer.lock().expect("buffer lock");
        buffer.records.len() < READ_AHEAD_BATCHES * self.batch_size.load(Ordering::Relaxed)
            && buffer.bytes < READ_AHEAD_BATCHES * self.batch_max_bytes.load(Ordering::Relaxed)
    }

    fn push(&self, message: &BorrowedMessage<'_>) {
        let record = record(message);
        let bytes = size(message);
        let mut buffer = self.buffer.lock().expect("buffer lock");
        if !buffer.topics.contains(&record.topic) {
            return;
        }
        let next = record.offset + 1;
        match buffer.read_to.iter_mut().find(|(t, p, _)| *t == record.topic && *p == record.partition) {
            Some((.., read)) => *read = (*read).max(next),
            None => buffer.read_to.push((record.topic.clone(), record.partition, next)),
        }
        let was_empty = buffer.records.is_empty();
        buffer.bytes += bytes;
        buffer.records.push_back((record, bytes));
        drop(buffer);
        // The run loop waits only on an empty buffer.
        if was_empty {
            self.arrived.notify_one();
        }
    }

    /// Takes up to a batch of records.
    fn take(&self) -> Batch {
        let size = self.batch_size.load(Ordering::Relaxed);
        let max_bytes = self.batch_max_bytes.load(Ordering::Relaxed);
        let mut buffer = self.buffer.lock().expect("buffer lock");
        let mut batch = Vec::with_capacity(size.min(buffer.records.len()));
        let mut bytes = 0;
        while batch.len() < size && bytes < max_bytes {
            let Some((record, n)) = buffer.records.pop_front() else { break };
            buffer.bytes -= n;
            bytes += n;
            batch.push(record);
        }
        let seeks = buffer.seeks;
        drop(buffer);
        if !batch.is_empty() {
            self.room.notify_one();
        }
        Batch::new(batch).with_seeks(seeks)
    }

    fn note_committed(&self, offsets: BTreeMap<(String, i32), i64>) {
        let mut committed = self.committed.lock().expect("committed lock");
        for (key, next) in offsets {
            let slot = committed.entry(key).or_insert(next);
            *slot = (*slot).max(next);
        }
    }

    /// Drops the buffered records of `partitions`; returns how many.
    fn drop_partitions(&self, partitions: &[(String, i32)]) -> usize {
        let mut buffer = self.buffer.lock().expect("buffer lock");
        let dropped = buffer.retain(|r| !partitions.iter().any(|(t, p)| *t == r.topic && *p == r.partition));
        drop(buffer);
        if dropped > 0 {
            self.room.notify_one();
        }
        dropped
    }
}

impl Buffer {
    /// Keeps the records `keep` accepts; returns how many were dropped.
    fn retain(&mut self, keep: impl Fn(&Record) -> bool) -> usize {
        let before = self.records.len();
        let mut bytes = 0;
        self.records.retain(|(r, n)| {
            let kept = keep(r);
            if kept {
                bytes += n;
            }
            kept
        });
        self.bytes = bytes;
        before - self.records.len()
    }
}

/// The reader task: reads records into the buffer while it has room, and
/// serves rewinds between two records.
///
/// When the buffer stays full for [`PAUSE_AFTER`], the reader pauses the
/// assigned partitions and goes on polling, for rebalances; it resumes them
/// once there is room. A paused partition is fetched again from the record
/// after the last one read.
async fn read(
    consumer: Arc<StreamConsumer<LogContext>>,
    shared: Arc<Shared>,
    mut control: mpsc::Receiver<Control>,
    metrics: Arc<Metrics>,
) {
    let mut paused = false;
    loop {
        let room = shared.has_room();
        if room && paused {
            paused = false;
            if let Err(e) = consumer.assignment().and_then(|a| consumer.resume(&a)) {
                tracing::warn!(error = %e, "cannot resume the partitions paused while the buffer was full");
            }
        }
        tokio::select! {
            biased;
            request = control.recv() => match request {
                None => return,
                Some(Control::Rewind { first, reply }) => {
                    let _ = reply.send(rewind(&consumer, &shared, first));
                }
            },
            () = shared.room.notified(), if !room => {}
            () = tokio::time::sleep(PAUSE_AFTER), if !room && !paused => {
                match consumer.assignment().and_then(|a| consumer.pause(&a)) {
                    Ok(()) => paused = true,
                    Err(e) => tracing::warn!(error = %e, "cannot pause the partitions while the buffer is full"),
                }
            }
            message = consumer.recv(), if room || paused => match message {
                Ok(message) => {
                    shared.push(&message);
                    if paused {
                        // A partition assigned since the pause: paused too,
                        // now that it is being fetched.
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(message.topic(), message.partition());
                        let _ = consumer.pause(&tpl);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read from Kafka; retrying");
                    metrics.record_error("kafka");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            },
        }
    }
}

/// Drops the buffered records of the partitions in `first` and moves each
/// back to its committed offset, or to `first`'s offset when that is
/// earlier or nothing is committed. The committed offset is the one to
/// return to when a batch taken ahead is dropped behind an aborted one; the
/// batch's own first offset wins when the broker kept offsets of the
/// aborted transaction itself (tansu 0.6 keeps some of those a fenced
/// producer sent), which would otherwise skip the batch's records.
fn rewind(
    consumer: &StreamConsumer<LogContext>,
    shared: &Shared,
    first: BTreeMap<(String, i32), (i64, u64)>,
) -> KafkaResult<()> {
    // A partition that a rewind after the batches were taken has already
    // moved back to their first record or before is left alone: the
    // records from there on are read again anyway, and moving it forward
    // would skip (and dropping what was read since would lose) the records
    // before the batches. A batch taken ahead and dropped behind an aborted
    // one is rewound after it.
    let first: BTreeMap<(String, i32), i64> = {
        let buffer = shared.buffer.lock().expect("buffer lock");
        first
            .into_iter()
            .filter(|((t, p), (first, seeks))| buffer.sought_after(t, *p, *seeks).is_none_or(|to| to > *first))
            .map(|(key, (first, _))| (key, first))
            .collect()
    };
    if first.is_empty() {
        return Ok(());
    }
    let partitions: Vec<(String, i32)> = first.keys().cloned().collect();
    shared.drop_partitions(&partitions);
    let committed = tokio::task::block_in_place(|| consumer.committed_offsets(tpl(&first)?, Duration::from_secs(10)))?;
    for ((topic, partition), first_offset) in first {
        let offset = match committed.find_partition(&topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o > first_offset => {
                tracing::warn!(
                    topic,
                    partition,
                    committed = o,
                    first = first_offset,
                    "the broker kept offsets of an aborted transaction: rewinding to the batch's first record"
                );
                first_offset
            }
            Some(Offset::Offset(o)) => o,
            _ => first_offset,
        };
        shared.buffer.lock().expect("buffer lock").note_seek(&topic, partition, offset);
        if let Err(e) = consumer.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(10)) {
            // A partition revoked meanwhile is its next owner's to read;
            // one still assigned must be rewound, or its records would be
            // skipped.
            let assigned = consumer.assignment()?.find_partition(&topic, partition).is_some();
            if assigned {
                return Err(e);
            }
            tracing::info!(topic, partition, "not rewinding a partition no longer assigned");
        }
    }
    Ok(())
}

/// Per partition, the offset after the last record of `batches`.
fn next_offsets<'a>(batches: impl IntoIterator<Item = &'a Batch>) -> BTreeMap<(String, i32), i64> {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for Span { topic, partition, last, .. } in batches.into_iter().flat_map(Batch::spans) {
        let slot = next.entry((topic.clone(), *partition)).or_insert(last + 1);
        *slot = (*slot).max(last + 1);
    }
    next
}

fn tpl(offsets: &BTreeMap<(String, i32), i64>) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

/// The bytes of a message's key, value and headers.
fn size(message: &BorrowedMessage<'_>) -> usize {
    let headers =
        message.headers().map_or(0, |hs| hs.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len)).sum());
    message.key_len() + message.payload_len() + headers
}

pub(super) fn record(message: &BorrowedMessage<'_>) -> Record {
    let headers = message
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header { name: h.key.to_string(), value: h.value.map(<[u8]>::to_vec).unwrap_or_default() })
                .collect()
        })
        .unwrap_or_default();
    Record {
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
    }
}
