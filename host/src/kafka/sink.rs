//! The producer sink: idempotent, acks from all in-sync replicas.

use super::LogContext;
use crate::config::PipelineConfig;
use crate::record::Produce;
use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::util::Timeout;
use std::time::Duration;

/// How long a record may wait for room in the producer queue. Default 30 s:
/// when the broker is gone for longer, the batch fails and is sent again.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a transaction call (init, offsets, commit, abort) may block.
/// Default 30 s: longer than a broker fail-over, shorter than the
/// transaction timeout, so a stuck call fails before the broker aborts.
pub const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// The producer's record for `produce`: topic, key, value and headers.
pub(super) fn future_record(produce: &Produce) -> FutureRecord<'_, Vec<u8>, Vec<u8>> {
    let mut headers = OwnedHeaders::new_with_capacity(produce.headers.len());
    for h in &produce.headers {
        headers = headers.insert(Header { key: &h.name, value: Some(&h.value) });
    }
    let record = FutureRecord::to(&produce.topic).payload(&produce.value).headers(headers);
    match &produce.key {
        Some(key) => record.key(key),
        None => record,
    }
}

pub(super) fn producer_config(config: &PipelineConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000");
    client
}

/// Writes outputs and dead letters.
pub struct Sink {
    producer: FutureProducer<LogContext>,
    client: ClientConfig,
    transactional: bool,
}

impl Sink {
    /// An idempotent producer (`acks=all`), with the pipeline's extra
    /// producer properties applied last. With a transactional id, the
    /// producer is transactional and its transactions are initialised
    /// (fencing any earlier producer with the same id).
    pub fn new(config: &PipelineConfig, transactional_id: Option<&str>) -> KafkaResult<Self> {
        let mut client = producer_config(config);
        if let Some(id) = transactional_id {
            client.set("transactional.id", id).set("transaction.timeout.ms", "60000");
        }
        for (key, value) in &config.kafka.producer {
            client.set(key.get_ref(), value);
        }
        let sink = Self {
            producer: client.create_with_context(LogContext::new("producer", None))?,
            client,
            transactional: transactional_id.is_some(),
        };
        if sink.transactional {
            blocking(|| sink.producer.init_transactions(TXN_TIMEOUT))?;
        }
        Ok(sink)
    }

    /// Replaces the producer by a new one (after a fatal transaction error).
    pub fn recreate(&mut self) -> KafkaResult<()> {
        self.producer = self.client.create_with_context(LogContext::new("producer", None))?;
        if self.transactional {
            blocking(|| self.producer.init_transactions(TXN_TIMEOUT))?;
        }
        Ok(())
    }

    /// Starts a transaction.
    pub fn begin(&self) -> KafkaResult<()> {
        self.producer.begin_transaction()
    }

    /// Adds the consumer's offsets to the open transaction.
    pub fn send_offsets(&self, offsets: &TopicPartitionList, group: &ConsumerGroupMetadata) -> KafkaResult<()> {
        blocking(|| self.producer.send_offsets_to_transaction(offsets, group, TXN_TIMEOUT))
    }

    /// Commits the open transaction.
    pub fn commit(&self) -> KafkaResult<()> {
        blocking(|| self.producer.commit_transaction(TXN_TIMEOUT))
    }

    /// Aborts the open transaction.
    pub fn abort(&self) -> KafkaResult<()> {
        blocking(|| self.producer.abort_transaction(TXN_TIMEOUT))
    }

    /// Sends every record and waits for all acknowledgements.
    pub async fn send_all(&self, records: &[&Produce]) -> Result<(), Unacknowledged> {
        let sent = self.enqueue(records).await;
        sent.acknowledged().await
    }

    /// Hands every record to the producer, in order, and returns without
    /// waiting for the broker: the caller does other work meanwhile and
    /// waits for the acknowledgements with [`Sent::acknowledged`]. Waits
    /// only while the producer's queue is full.
    pub async fn enqueue(&self, records: &[&Produce]) -> Sent {
        let mut deliveries = Vec::with_capacity(records.len());
        for r in records {
            deliveries.push(self.enqueue_one(r).await);
        }
        Sent { deliveries }
    }

    /// As [`Sink::enqueue`], except that each record for which `alone`
    /// holds travels in a produce request of its own: the producer is
    /// flushed before and after it. For records the broker refused as part
    /// of a request, to learn which of them it refuses for themselves.
    pub async fn enqueue_isolating(&self, records: &[&Produce], alone: impl Fn(usize) -> bool) -> Sent {
        let mut deliveries = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let alone = alone(i);
            if alone {
                self.drain();
            }
            deliveries.push(self.enqueue_one(r).await);
            if alone {
                self.drain();
            }
        }
        Sent { deliveries }
    }

    /// Waits until everything handed to the producer has its answer; the
    /// answers themselves come with each delivery.
    fn drain(&self) {
        if let Err(e) = blocking(|| self.producer.flush(Timeout::After(QUEUE_TIMEOUT))) {
            tracing::debug!(error = %e, "flush before a record sent alone");
        }
    }

    /// Hands one record to the producer, waiting while its queue is full.
    async fn enqueue_one(&self, produce: &Produce) -> Result<DeliveryFuture, KafkaError> {
        let mut record = future_record(produce);
        let waited = std::time::Instant::now();
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if waited.elapsed() < QUEUE_TIMEOUT =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits for everything queued to be delivered, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(Timeout::After(timeout))
    }
}

/// How long [`Sink::enqueue`] waits before trying again when the producer's
/// queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

/// Records handed to the producer, in the order given, awaiting the
/// broker's acknowledgements.
pub struct Sent {
    deliveries: Vec<Result<DeliveryFuture, KafkaError>>,
}

impl Sent {
    /// Waits for every acknowledgement.
    pub async fn acknowledged(self) -> Result<(), Unacknowledged> {
        let sent = self.deliveries.len();
        let results = join_all(self.deliveries.into_iter().map(|d| async move {
            match d {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_canceled) => Err(KafkaError::Canceled),
                },
                Err(e) => Err(e),
            }
        }))
        .await;
        let failed: Vec<(usize, KafkaError)> =
            results.into_iter().enumerate().filter_map(|(i, r)| r.err().map(|e| (i, e))).collect();
        if failed.is_empty() { Ok(()) } else { Err(Unacknowledged { failed, sent }) }
    }
}

/// The records of a send that the broker did not acknowledge: their
/// indexes in what was sent, in order, each with its error.
#[derive(Debug)]
pub struct Unacknowledged {
    /// (index, error), at least one.
    pub failed: Vec<(usize, KafkaError)>,
    sent: usize,
}

impl Unacknowledged {
    /// The first record's error.
    pub fn first(&self) -> &KafkaError {
        &self.failed[0].1
    }
}

impl std::fmt::Display for Unacknowledged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} records not acknowledged: {}", self.failed.len(), self.sent, self.first())
    }
}

impl std::error::Error for Unacknowledged {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.first())
    }
}

/// Runs a blocking librdkafka call without stalling the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
