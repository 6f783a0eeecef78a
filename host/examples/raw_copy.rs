//! The raw baseline of the end-to-end benchmark (`scripts/benchmark.sh`): a
//! minimal librdkafka copy, `BaseConsumer` -> `BaseProducer` on one thread,
//! with no batching, no offset commits and no async runtime of Sluice's own.
//! It is the ceiling that `sluice passthrough` and `sluice run` are compared
//! against.
//!
//! Usage: `raw_copy BROKERS SOURCE_TOPIC DESTINATION_TOPIC COUNT GROUP`
//!
//! The consumer reads the source topic from the start in a fresh group,
//! with the host's consumer settings; the producer has the host's default
//! producer settings (`host/src/kafka/sink.rs`: idempotent, `acks=all`,
//! `linger.ms=5`), so that the comparison does not favour the baseline.
//! Key, value and headers are copied. Prints, like `sluice passthrough`, the
//! rate from the first record read to the last delivery acknowledged:
//! `raw copy: N records in S s: R records/s`. Once the group has given it
//! partitions it says so on stderr (`raw copy: assigned`), so that a load
//! can be started after it, as the benchmark's latency floor does.

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts delivery acknowledgements and keeps the first failure.
#[derive(Default)]
struct Acks {
    acked: AtomicU64,
    failed: Mutex<Option<String>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, message)) => {
                self.failed
                    .lock()
                    .expect("failure lock")
                    .get_or_insert_with(|| format!("a record to {} was not delivered: {error}", message.topic()));
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, source, destination, count, group] = args.as_slice() else {
        bail!("usage: raw_copy BROKERS SOURCE_TOPIC DESTINATION_TOPIC COUNT GROUP");
    };
    let count: u64 = count.parse().with_context(|| format!("COUNT is not a number: {count}"))?;

    // host/src/kafka/source.rs, without the statistics the host's lag metric reads.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .context("cannot create the consumer")?;
    consumer.subscribe(&[source]).with_context(|| format!("cannot subscribe to {source}"))?;
    // host/src/kafka/sink.rs's producer_config.
    let producer: BaseProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create_with_context(Acks::default())
        .context("cannot create the producer")?;

    let acks = producer.context();
    let check = || match acks.failed.lock().expect("failure lock").take() {
        Some(failure) => bail!("{failure}"),
        None => Ok(()),
    };
    // Gives up when no record comes for 120 s (joining the group included)
    // or, once records came, for 30 s.
    let (mut read, mut first, mut last) = (0u64, None, Instant::now());
    let mut assigned = false;
    while read < count {
        check()?;
        if !assigned && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            assigned = true;
            eprintln!("raw copy: assigned");
        }
        let Some(message) = consumer.poll(Duration::from_millis(10)) else {
            producer.poll(Duration::ZERO);
            let idle = if first.is_none() { 120 } else { 30 };
            if last.elapsed() > Duration::from_secs(idle) {
                bail!("read {read} of {count} records from {source}, then none for {idle} s");
            }
            continue;
        };
        let message = message.with_context(|| format!("cannot read from {source}"))?;
        last = Instant::now();
        first.get_or_insert(last);
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(destination);
        record.key = message.key();
        record.payload = message.payload();
        record.headers = message.headers().map(|h| h.detach());
        // The queue is full until deliveries are served: serve them and retry.
        while let Err((error, back)) = producer.send(record) {
            if error != KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
                bail!("cannot send a record to {destination}: {error}");
            }
            record = back;
            producer.poll(Duration::from_millis(10));
        }
        producer.poll(Duration::ZERO);
        read += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.acked.load(Ordering::Relaxed) < count {
        check()?;
        if Instant::now() > deadline {
            bail!("{} of {count} records acknowledged after 60 s", acks.acked.load(Ordering::Relaxed));
        }
        producer.poll(Duration::from_millis(1));
    }
    check()?;
    let secs = first.map_or(0.0, |f: Instant| f.elapsed().as_secs_f64());
    let done = acks.acked.load(Ordering::Relaxed);
    println!("raw copy: {done} records in {secs:.2} s: {:.0} records/s", done as f64 / secs);
    producer.flush(Duration::from_secs(10)).context("cannot flush the producer")?;
    Ok(())
}
