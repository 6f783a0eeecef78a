//! `sluice peek`: prints the first records of a topic (read_committed),
//! with their headers, to see what a pipeline wrote.

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// What to print.
#[derive(Debug, clap::Args)]
pub struct PeekArgs {
    /// The topic.
    pub topic: String,
    /// How many records at most.
    #[arg(long, default_value_t = 5)]
    pub count: usize,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// How long to wait for records, in seconds.
    #[arg(long, default_value_t = 5)]
    pub wait: u64,
}

/// Reads up to `count` records from the start of every partition and prints
/// each as `partition/offset key=... value` plus its headers.
pub fn run(args: PeekArgs) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", "sluice-peek")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let topic = metadata.topics().first().filter(|t| !t.partitions().is_empty());
    let Some(topic) = topic else { anyhow::bail!("topic `{}` does not exist", args.topic) };
    let mut tpl = TopicPartitionList::new();
    for p in topic.partitions() {
        tpl.add_partition_offset(&args.topic, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    let mut printed = 0;
    while printed < args.count && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message?;
        let key = message.key().map(String::from_utf8_lossy).unwrap_or_default();
        let value = message.payload().map(String::from_utf8_lossy).unwrap_or_default();
        println!("{}/{} key={key} {value}", message.partition(), message.offset());
        if let Some(headers) = message.headers() {
            for h in headers.iter() {
                println!("    {}: {}", h.key, String::from_utf8_lossy(h.value.unwrap_or_default()));
            }
        }
        printed += 1;
    }
    if printed == 0 {
        eprintln!("no records in `{}` within {} s", args.topic, args.wait);
    }
    Ok(())
}
