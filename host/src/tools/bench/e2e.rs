//! The end-to-end benchmark's tools (`scripts/benchmark.sh`):
//! `sluice passthrough`, the native ceiling (consume -> produce with the
//! host's own consumer, producer, batching and commits, no stages), and
//! `sluice latency`, end-to-end latency percentiles from the
//! `sluice.sent_at_ms` header that `sluice gen --stamp` sets and the stages
//! carry to their outputs.

use crate::config;
use crate::delivery::IN_FLIGHT;
use crate::kafka::{Commit, Reader, Sent, Sink, Source};
use crate::metrics::Metrics;
use crate::record::{Batch, Produce};
use anyhow::Context;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The header `sluice gen --stamp` sets: when the record was sent, in
/// milliseconds since the epoch.
pub const SENT_AT: &str = "sluice.sent_at_ms";

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `sluice passthrough`.
#[derive(Debug, clap::Args)]
pub struct PassthroughArgs {
    /// The pipeline file: its Kafka settings, source topics and batching.
    #[arg(default_value = "pipeline.toml")]
    pub path: PathBuf,
    /// Where to copy the records.
    #[arg(long)]
    pub to: String,
    /// Stop after this many records.
    #[arg(long)]
    pub count: u64,
}

/// Copies `count` records from the source topics to `to`, batch by batch,
/// committing acknowledged batches every `commit_interval_ms`, and prints
/// the rate from the first record read to the last one committed.
pub async fn passthrough(args: PassthroughArgs) -> anyhow::Result<()> {
    let pipeline = config::load_file(&args.path).map_err(|e| anyhow::anyhow!("{}: {e}", args.path.display()))?;
    let config = pipeline.config;
    let source = Source::new(&config, Arc::new(Metrics::default())).context("cannot create the consumer")?;
    let sink = Sink::new(&config, None).context("cannot create the producer")?;
    let topic: Arc<str> = Arc::from(args.to.as_str());
    let (mut done, mut first) = (0u64, None);
    // Like `sluice run` at-least-once: the source reads ahead on its own
    // task; up to `IN_FLIGHT` batches' copies travel to the broker while the
    // next batch is taken; the oldest is acknowledged before another goes
    // out, and acknowledged batches are committed on an interval.
    let mut in_flight: VecDeque<(Batch, Sent)> = VecDeque::new();
    let (commit_every, mut committed) = (Duration::from_millis(config.commit_interval_ms.get()), Instant::now());
    let mut taken = 0u64;
    while done < args.count {
        let mut idle = true;
        if taken < args.count {
            let batch = source.next_batch().await;
            if !batch.is_empty() {
                idle = false;
                first.get_or_insert_with(Instant::now);
                taken += batch.len() as u64;
                let copies: Vec<Produce> = batch
                    .records()
                    .iter()
                    .map(|r| Produce {
                        topic: topic.clone(),
                        key: r.key.clone(),
                        value: r.value.clone().unwrap_or_default(),
                        headers: r.headers.clone(),
                    })
                    .collect();
                let sent = sink.enqueue(&copies.iter().collect::<Vec<_>>()).await;
                in_flight.push_back((batch, sent));
            }
        }
        while in_flight.len() > IN_FLIGHT || (idle && !in_flight.is_empty()) {
            let (sent_batch, sent) = in_flight.pop_front().expect("not empty");
            sent.acknowledged().await?;
            source.store(&sent_batch);
            if committed.elapsed() >= commit_every {
                committed = Instant::now();
                source.commit_stored(Commit::Async)?;
            }
            done += sent_batch.len() as u64;
        }
    }
    source.commit_stored(Commit::Sync)?;
    let secs = first.map_or(0.0, |f: Instant| f.elapsed().as_secs_f64());
    println!("passthrough: {done} records in {secs:.2} s: {:.0} records/s", done as f64 / secs);
    Ok(())
}

/// `sluice latency`.
#[derive(Debug, clap::Args)]
pub struct LatencyArgs {
    /// The topic to read (the pipeline's output).
    pub topic: String,
    /// Stop after this many stamped records.
    #[arg(long)]
    pub count: u64,
    /// Or once no record came for this many seconds after the first.
    #[arg(long, default_value_t = 5)]
    pub idle_s: u64,
    /// Also print, per second of sending, the records sent and their
    /// largest latency (to see when a tail happened).
    #[arg(long)]
    pub timeline: bool,
    /// Leave out the records sent in the first this many seconds: the
    /// sender's own start (connection, producer id) is not the pipeline's
    /// latency.
    #[arg(long, default_value_t = 1)]
    pub warmup_s: u64,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
}

/// Reads `topic` from the start and prints the percentiles of (the output
/// record's timestamp, set when the host produced it - `sluice.sent_at_ms`,
/// set when the generator sent the input) over the records that carry the
/// header: from the generator's send to the host's output, broker included;
/// this reader's own delay is not counted.
pub async fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    let reader = Reader::from_start(&args.brokers, &args.topic, &format!("sluice-latency-{}", std::process::id()))?;
    let mut latencies: Vec<i64> = Vec::with_capacity(args.count as usize);
    let mut sent_at: Vec<i64> = Vec::with_capacity(args.count as usize);
    let idle = Duration::from_secs(args.idle_s);
    let deadline = Instant::now() + Duration::from_secs(600);
    while (latencies.len() as u64) < args.count && Instant::now() < deadline {
        let wait = if latencies.is_empty() { Duration::from_secs(60) } else { idle };
        let Some(record) = reader.next(wait).await else { break };
        let record = record?;
        let Some(produced) = record.timestamp_ms else { continue };
        let sent = record.headers.iter().find(|h| h.name == SENT_AT);
        let sent = sent.and_then(|h| std::str::from_utf8(&h.value).ok()?.parse::<i64>().ok());
        if let Some(sent) = sent {
            latencies.push(produced - sent);
            sent_at.push(sent);
        }
    }
    if args.timeline && !sent_at.is_empty() {
        let start = sent_at.iter().copied().min().unwrap_or(0);
        let mut seconds: std::collections::BTreeMap<i64, (u64, i64)> = std::collections::BTreeMap::new();
        for (sent, latency) in sent_at.iter().zip(&latencies) {
            let slot = seconds.entry((sent - start) / 1000).or_default();
            slot.0 += 1;
            slot.1 = slot.1.max(*latency);
        }
        for (second, (n, max)) in seconds {
            println!("second {second}: {n} records, max {max} ms");
        }
    }
    let start = sent_at.iter().copied().min().unwrap_or(0);
    let warm = start + args.warmup_s as i64 * 1000;
    let mut latencies: Vec<i64> =
        latencies.into_iter().zip(&sent_at).filter(|(_, s)| **s >= warm).map(|(l, _)| l).collect();
    anyhow::ensure!(
        !latencies.is_empty(),
        "no record with a {SENT_AT} header arrived on {} after the warm-up",
        args.topic
    );
    latencies.sort_unstable();
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "latency: {} records: p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        latencies.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        latencies[latencies.len() - 1]
    );
    Ok(())
}
