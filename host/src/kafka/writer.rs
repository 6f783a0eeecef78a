//! A plain producer, outside the pipeline's delivery: HTTP ingest and the
//! load generator write with it.

use super::sink::{future_record, producer_config};
use crate::config::PipelineConfig;
use crate::record::Produce;
use anyhow::Context;
use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::future::Future;
use std::time::Duration;

/// How long a write waits for its acknowledgement.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// An idempotent, non-transactional producer.
#[derive(Clone)]
pub struct Writer(FutureProducer);

impl Writer {
    /// A producer with the pipeline's brokers and extra producer properties
    /// (for HTTP ingest).
    pub fn for_pipeline(config: &PipelineConfig) -> KafkaResult<Self> {
        let mut client = producer_config(config);
        for (key, value) in &config.kafka.producer {
            client.set(key.get_ref(), value);
        }
        client.create().map(Self)
    }

    /// A producer to `brokers` that lingers 10 ms to batch, connected and
    /// knowing `topic`'s partitions before it returns, so that the first
    /// records do not wait for them.
    pub async fn connect(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "10")
            .create()
            .context("cannot create the Kafka producer")?;
        let (client, topic) = (producer.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || client.client().fetch_metadata(Some(&topic), Duration::from_secs(30)))
            .await?
            .context("cannot reach the Kafka brokers")?;
        Ok(Self(producer))
    }

    /// Writes one record; the future ends with its acknowledgement.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&str>,
        value: &[u8],
        header: Option<(&'static str, String)>,
    ) -> impl Future<Output = KafkaResult<()>> + Send + 'static {
        let (producer, topic, key, value) =
            (self.0.clone(), topic.to_string(), key.map(str::to_string), value.to_vec());
        async move {
            let mut record = FutureRecord::to(&topic).payload(&value);
            if let Some(key) = &key {
                record = record.key(key);
            }
            if let Some((name, value)) = &header {
                record = record.headers(OwnedHeaders::new().insert(Header { key: name, value: Some(value.as_str()) }));
            }
            producer.send(record, Timeout::After(WRITE_TIMEOUT)).await.map(|_| ()).map_err(|(e, _)| e)
        }
    }

    /// Writes `record` and waits for its acknowledgement.
    pub async fn write(&self, record: &Produce) -> KafkaResult<()> {
        self.0.send(future_record(record), Timeout::After(WRITE_TIMEOUT)).await.map(|_| ()).map_err(|(e, _)| e)
    }

    /// Writes `values` with no key to `topic` and waits for every
    /// acknowledgement: their (partition, offset) in order, or the first
    /// error with the positions of the values acknowledged before it.
    pub async fn write_all(
        &self,
        topic: &str,
        values: &[&[u8]],
    ) -> Result<Vec<(i32, i64)>, (Vec<(i32, i64)>, KafkaError)> {
        let timeout = Duration::from_secs(10);
        let sends =
            values.iter().map(|value| self.0.send(FutureRecord::<(), [u8]>::to(topic).payload(*value), timeout));
        let mut written = Vec::with_capacity(values.len());
        for result in join_all(sends).await {
            match result {
                Ok(delivery) => written.push((delivery.partition, delivery.offset)),
                Err((e, _)) => return Err((written, e)),
            }
        }
        Ok(written)
    }

    /// Writes `records` together and waits for every acknowledgement; the
    /// first error, if any.
    pub async fn write_records(&self, records: &[Produce]) -> KafkaResult<()> {
        let sends = records.iter().map(|r| self.0.send(future_record(r), Timeout::After(WRITE_TIMEOUT)));
        for result in join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
        Ok(())
    }

    /// Waits until every record sent is acknowledged.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.0.flush(Timeout::After(timeout))
    }
}
