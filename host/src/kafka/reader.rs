//! A reader of a topic from its start, outside any pipeline: `sluice
//! latency` reads the pipeline's outputs with it.

use super::source::record;
use crate::record::Record;
use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use std::time::Duration;

/// Reads committed records of one topic from the earliest offset, in a
/// group of its own that commits nothing.
pub struct Reader(StreamConsumer);

impl Reader {
    /// A reader of `topic` on `brokers`, in consumer group `group`.
    pub fn from_start(brokers: &str, topic: &str, group: &str) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "10")
            .set("fetch.queue.backoff.ms", "10")
            .create()
            .context("cannot create the consumer")?;
        consumer.subscribe(&[topic])?;
        Ok(Self(consumer))
    }

    /// The next record, or `None` when none came within `wait`.
    pub async fn next(&self, wait: Duration) -> Option<KafkaResult<Record>> {
        let message = tokio::time::timeout(wait, self.0.recv()).await.ok()?;
        Some(message.map(|m| record(&m)))
    }
}
