//! A read of a topic as it is now: the committed records from the start of
//! each partition (or an offset of one) to its end when the scan began.
//! `sluice replay` reads the dead-letter topic with it, `sluice capture`
//! the records it writes to a file.

use super::source::record;
use crate::config::PipelineConfig;
use crate::record::Record;
use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Every committed record of `topic`, by partition then offset, up to the
/// end each partition had when the scan began, read with the pipeline's
/// brokers and extra consumer properties (security settings, say). Gives up
/// waiting for more after `wait` without a record.
pub fn scan(config: &PipelineConfig, topic: &str, wait: Duration) -> anyhow::Result<Vec<Record>> {
    scan_from(config, topic, Start::Beginning, usize::MAX, wait)
}

/// Where a scan starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the start of every partition.
    Beginning,
    /// At `offset` of `partition`, reading no other partition.
    At {
        /// The partition.
        partition: i32,
        /// The first offset read (or the partition's start, if later).
        offset: i64,
    },
}

/// Like [`scan`], from `start`, stopping once `limit` records are read:
/// then the records of each partition are the first ones from its start.
pub fn scan_from(
    config: &PipelineConfig,
    topic: &str,
    start: Start,
    limit: usize,
    wait: Duration,
) -> anyhow::Result<Vec<Record>> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.brokers);
    for (key, value) in &config.kafka.consumer {
        client.set(key.get_ref(), value);
    }
    // Positions are assigned, never committed: the group is only a name.
    let consumer: BaseConsumer = client
        .set("group.id", "sluice-scan")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("cannot create the consumer")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).context("cannot reach the Kafka brokers")?;
    let mut partitions: Vec<i32> =
        metadata.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
    anyhow::ensure!(!partitions.is_empty(), "topic `{topic}` does not exist");
    let first = match start {
        Start::Beginning => None,
        Start::At { partition, offset } => {
            anyhow::ensure!(
                partitions.contains(&partition),
                "topic `{topic}` has no partition {partition} (it has {})",
                partitions.len()
            );
            partitions = vec![partition];
            Some(offset)
        }
    };
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut list = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let from = first.map_or(low, |offset| offset.max(low));
        if high > from {
            ends.insert(p, high);
            let at = if first.is_some() { Offset::Offset(from) } else { Offset::Beginning };
            list.add_partition_offset(topic, p, at)?;
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer.assign(&list)?;
    let mut last = Instant::now();
    while !ends.is_empty() && records.len() < limit && last.elapsed() < wait {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            // A partition may end with a transaction marker, which is never
            // delivered; its position moves past it.
            let positions = consumer.position()?;
            ends.retain(|&p, end| match positions.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(at)) => at < *end,
                _ => true,
            });
            continue;
        };
        let message = message?;
        last = Instant::now();
        let (partition, offset) = (message.partition(), message.offset());
        let Some(&end) = ends.get(&partition) else { continue };
        if offset < end {
            records.push(record(&message));
        }
        if offset + 1 >= end {
            ends.remove(&partition);
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}
