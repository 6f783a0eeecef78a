//! The consumer-group source: batches of records, and offset commits.

use super::LogContext;
use crate::bindings::Header;
use crate::config::PipelineConfig;
use crate::metrics::Metrics;
use crate::pipeline::Record;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerGroupMetadata, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How long [`Source::next_batch`] waits for a first record before it
/// returns an empty batch, so that the run loop can put a reloaded pipeline
/// live while no records arrive.
pub const IDLE_POLL: Duration = Duration::from_millis(100);

/// Consumes the input topics in the pipeline's consumer group. Offsets are
/// only ever committed explicitly, after a batch's results are confirmed.
pub struct Source {
    consumer: StreamConsumer<LogContext>,
    batch_size: AtomicUsize,
    batch_timeout_ms: AtomicU64,
    batch_max_bytes: AtomicUsize,
    /// The next offset to read, per partition, of every batch handled.
    positions: Mutex<BTreeMap<(String, i32), i64>>,
    /// Per partition, the offset after the last record read.
    read_to: Mutex<BTreeMap<(String, i32), i64>>,
    metrics: Arc<Metrics>,
}

impl Source {
    /// Creates the consumer and subscribes to the input topics.
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
            .set("fetch.wait.max.ms", "50");
        for (key, value) in &config.kafka.consumer {
            client.set(key.get_ref(), value);
        }
        let consumer: StreamConsumer<LogContext> =
            client.create_with_context(LogContext::new("consumer", Some(metrics.clone())))?;
        let topics: Vec<&str> = config.source.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer,
            batch_size: AtomicUsize::new(config.source.batch_size.get()),
            batch_timeout_ms: AtomicU64::new(config.source.batch_timeout_ms.get()),
            batch_max_bytes: AtomicUsize::new(config.source.batch_max_bytes.get()),
            positions: Mutex::new(BTreeMap::new()),
            read_to: Mutex::new(BTreeMap::new()),
            metrics,
        })
    }

    /// Applies new batching settings from the next batch on.
    pub fn set_batching(&self, size: usize, timeout_ms: u64, max_bytes: usize) {
        self.batch_size.store(size, Ordering::Relaxed);
        self.batch_timeout_ms.store(timeout_ms, Ordering::Relaxed);
        self.batch_max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// Replaces the subscription. Call only between batches, with every
    /// handled batch committed: the group rebalances, and the positions of
    /// topics no longer read are forgotten.
    pub fn resubscribe(&self, topics: &[String]) -> KafkaResult<()> {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&names)?;
        self.positions.lock().expect("positions lock").retain(|(topic, _), _| topics.contains(topic));
        Ok(())
    }

    /// Waits up to [`IDLE_POLL`] for a record (returning an empty batch if
    /// none comes), then gathers more until the batch is full (in records or
    /// in bytes) or the batch timeout has passed since the first one. A
    /// batch holds no record of a partition revoked while it was gathered:
    /// such records are dropped (the partition's next owner reads them from
    /// the committed offset), so no batch commits offsets for partitions
    /// another member now owns. Records of the partitions the consumer
    /// keeps (cooperative rebalancing) stay in the batch: they are read
    /// only once.
    pub async fn next_batch(&self) -> KafkaResult<Vec<Record>> {
        let context = self.consumer.context();
        let Ok(first) = tokio::time::timeout(IDLE_POLL, self.consumer.recv()).await else {
            return Ok(Vec::new());
        };
        let first = first?;
        // Revocations before the first record concern no record of this batch.
        context.take_revoked();
        let batch_size = self.batch_size.load(Ordering::Relaxed);
        let max_bytes = self.batch_max_bytes.load(Ordering::Relaxed);
        let mut batch = Vec::with_capacity(batch_size);
        let mut bytes = size(&first);
        batch.push(record(&first));
        drop(first);
        let timeout = Duration::from_millis(self.batch_timeout_ms.load(Ordering::Relaxed));
        let deadline = tokio::time::Instant::now() + timeout;
        while batch.len() < batch_size && bytes < max_bytes {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => {
                    drop_revoked(&mut batch, &context.take_revoked());
                    bytes += size(&message);
                    batch.push(record(&message));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error while filling a batch");
                    break;
                }
                Err(_) => break,
            }
        }
        drop_revoked(&mut batch, &context.take_revoked());
        let mut read_to = self.read_to.lock().expect("read_to lock");
        for (key, next) in next_offsets(&batch) {
            let slot = read_to.entry(key).or_insert(next);
            *slot = (*slot).max(next);
        }
        Ok(batch)
    }

    /// Commits, per partition, the offset after the last record of `batch`.
    pub fn commit(&self, batch: &[Record], mode: CommitMode) -> KafkaResult<()> {
        let next = next_offsets(batch);
        self.positions.lock().expect("positions lock").extend(next.clone());
        self.commit_offsets(&next, mode)
    }

    /// Commits the position of every partition handled so far (at shutdown).
    pub fn commit_all(&self, mode: CommitMode) -> KafkaResult<()> {
        let positions = self.positions.lock().expect("positions lock").clone();
        if positions.is_empty() {
            return Ok(());
        }
        self.commit_offsets(&positions, mode)
    }

    fn commit_offsets(&self, offsets: &BTreeMap<(String, i32), i64>, mode: CommitMode) -> KafkaResult<()> {
        self.consumer.commit(&tpl(offsets)?, mode)
    }

    /// The offsets after `batch`, per partition, for a transaction.
    pub fn offsets_after<'a>(batch: impl IntoIterator<Item = &'a Record>) -> KafkaResult<TopicPartitionList> {
        tpl(&next_offsets(batch))
    }

    /// The group's metadata, for committing offsets in a transaction.
    pub fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.consumer.group_metadata()
    }

    /// Moves every partition of `batch` back to the group's committed
    /// offset (or to the batch's first record when nothing is committed), so
    /// that an uncommitted batch is read again. Fails, to be retried, when
    /// the committed offsets cannot be read or a partition still assigned
    /// cannot be moved.
    pub fn rewind<'a>(&self, batch: impl IntoIterator<Item = &'a Record>) -> KafkaResult<()> {
        let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for r in batch {
            let slot = first.entry((r.topic.clone(), r.partition)).or_insert(r.offset);
            *slot = (*slot).min(r.offset);
        }
        let committed =
            tokio::task::block_in_place(|| self.consumer.committed_offsets(tpl(&first)?, Duration::from_secs(10)))?;
        for ((topic, partition), first_offset) in first {
            let offset = match committed.find_partition(&topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => first_offset,
            };
            if let Err(e) = self.consumer.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(10)) {
                // A partition revoked meanwhile is its next owner's to read;
                // one still assigned must be rewound, or its records would
                // be skipped.
                let assigned = self.consumer.assignment()?.find_partition(&topic, partition).is_some();
                if assigned {
                    return Err(e);
                }
                tracing::info!(topic, partition, "not rewinding a partition no longer assigned");
            }
        }
        Ok(())
    }

    /// The offset after the last record of a partition, if known since
    /// the partition was assigned: the largest of what the consumer's
    /// statistics reported, what this consumer has read and what the broker
    /// answers now (`None` until the statistics have reported it, every
    /// 2 s). Each is a lower bound of the true end.
    pub fn end_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        let reported = self.metrics.end_offset(topic, partition)?;
        let key = (topic.to_string(), partition);
        let read = self.read_to.lock().expect("read_to lock").get(&key).copied().unwrap_or(0);
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

/// Drops the records of `revoked` partitions from `batch`.
fn drop_revoked(batch: &mut Vec<Record>, revoked: &[(String, i32)]) {
    if revoked.is_empty() || batch.is_empty() {
        return;
    }
    let before = batch.len();
    batch.retain(|r| !revoked.iter().any(|(t, p)| *t == r.topic && *p == r.partition));
    if batch.len() < before {
        tracing::info!(
            dropped = before - batch.len(),
            "partitions revoked while filling a batch: their records are left to the next owner"
        );
    }
}

/// Per partition, the offset after the last record of `batch`.
fn next_offsets<'a>(batch: impl IntoIterator<Item = &'a Record>) -> BTreeMap<(String, i32), i64> {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for r in batch {
        let slot = next.entry((r.topic.clone(), r.partition)).or_insert(r.offset + 1);
        *slot = (*slot).max(r.offset + 1);
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

fn record(message: &BorrowedMessage<'_>) -> Record {
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
