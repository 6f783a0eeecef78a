//! `sluice gen`: a load generator for the default pipeline, and the loader
//! of its lookup tables into Redis.

mod data;

pub use data::{Generated, Rng, Tables, record, tables};

use crate::kafka::Writer;
use crate::redis::Hashes;
use crate::tools::bench::e2e::{SENT_AT, now_ms};
use anyhow::Context;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to generate and where to send it.
#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// How many records to write.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Records per second at most (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// The seed: the same seed always gives the same records.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of records that are invalid and must be dead-lettered (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub invalid_ratio: f64,
    /// The topic to write to.
    #[arg(long, default_value = "orders")]
    pub topic: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// Write the records to stdout as JSON lines instead of Kafka.
    #[arg(long)]
    pub print: bool,
    /// Add a `sluice.sent_at_ms` header (send time, ms since the epoch) to
    /// each record, for `sluice latency`.
    #[arg(long)]
    pub stamp: bool,
    /// Write the lookup tables the records refer to into Redis first.
    #[arg(long)]
    pub load_lookups: bool,
    /// Load these lookup tables (lookups.json layout) instead of the
    /// generator's own; implies --load-lookups.
    #[arg(long)]
    pub lookups_file: Option<PathBuf>,
    /// Print the generator's lookup tables as JSON and exit.
    #[arg(long)]
    pub print_lookups: bool,
    /// Redis for --load-lookups.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of the lookup keys (`{prefix}user:{id}`).
    #[arg(long, env = "SLUICE_LOOKUP_PREFIX", default_value = "")]
    pub lookup_prefix: String,
}

/// Runs the generator.
pub async fn run(args: GenArgs) -> anyhow::Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&args.invalid_ratio), "--invalid-ratio must be between 0 and 1");
    if args.print_lookups {
        println!("{}", serde_json::to_string_pretty(&tables())?);
        return Ok(());
    }
    if args.load_lookups || args.lookups_file.is_some() {
        let tables = match &args.lookups_file {
            Some(path) => read_tables(path)?,
            None => tables(),
        };
        let rows = load_lookups(&args.redis_url, &args.lookup_prefix, &tables).await?;
        let url = crate::config::redact::url(&args.redis_url);
        eprintln!("loaded {rows} lookup rows into {url} (prefix {:?})", args.lookup_prefix);
    }
    if args.count == 0 {
        return Ok(());
    }
    let mut rng = Rng::new(args.seed);
    if args.print {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for n in 0..args.count {
            writeln!(out, "{}", record(&mut rng, args.seed, n, args.invalid_ratio).value)?;
        }
        return Ok(());
    }
    produce(&args, &mut rng).await
}

async fn produce(args: &GenArgs, rng: &mut Rng) -> anyhow::Result<()> {
    // Connected before the clock starts, so that the first records do not
    // wait for it (and `--stamp` latencies stay true).
    let producer = Writer::connect(&args.brokers, &args.topic).await?;
    let started = Instant::now();
    let progress = Progress::new(args.count);
    let mut pending = futures::stream::FuturesUnordered::new();
    let window = 10_000;
    let mut acked = 0u64;
    for n in 0..args.count {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(n as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let generated = record(rng, args.seed, n, args.invalid_ratio);
        let stamp = args.stamp.then(|| (SENT_AT, now_ms().to_string()));
        pending.push(producer.send(&args.topic, generated.key.as_deref(), generated.value.as_bytes(), stamp));
        while pending.len() >= window {
            next_ack(&mut pending).await?;
            acked += 1;
        }
        // Count the acknowledgements that already arrived, without waiting.
        while let Some(Some(result)) = futures::FutureExt::now_or_never(futures::StreamExt::next(&mut pending)) {
            result.context("a record was not acknowledged by the broker")?;
            acked += 1;
        }
        progress.show(acked, started);
    }
    while !pending.is_empty() {
        next_ack(&mut pending).await?;
        acked += 1;
        progress.show(acked, started);
    }
    producer.flush(Duration::from_secs(30))?;
    progress.finish(acked, started);
    Ok(())
}

async fn next_ack<F, T, E>(pending: &mut futures::stream::FuturesUnordered<F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    use futures::StreamExt;
    match pending.next().await {
        Some(Ok(_)) | None => Ok(()),
        Some(Err(e)) => Err(e).context("a record was not acknowledged by the broker"),
    }
}

/// A progress line on stderr: redrawn in place on a terminal, one line per
/// second otherwise.
struct Progress {
    total: u64,
    tty: bool,
    last: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(total: u64) -> Self {
        Self { total, tty: std::io::stderr().is_terminal(), last: std::cell::Cell::new(Instant::now()) }
    }

    fn show(&self, done: u64, started: Instant) {
        if self.last.get().elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last.set(Instant::now());
        self.print(done, started, if self.tty { "\r" } else { "" }, if self.tty { "" } else { "\n" });
    }

    fn finish(&self, done: u64, started: Instant) {
        self.print(done, started, if self.tty { "\r" } else { "" }, "\n");
    }

    fn print(&self, done: u64, started: Instant, start: &str, end: &str) {
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let pct = done as f64 * 100.0 / self.total.max(1) as f64;
        eprint!("{start}gen: {done}/{} records ({pct:.0}%), {:.0} records/s{end}", self.total, done as f64 / secs);
    }
}

/// Reads lookup tables, `{"table": {"key": {"field": value}}}`; values
/// that are not strings are kept as their JSON text, as in Redis.
pub fn read_tables(path: &PathBuf) -> anyhow::Result<Tables> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let mut tables = Tables::new();
    let as_object = |v: &serde_json::Value, what: String| {
        v.as_object().cloned().with_context(|| format!("{what} must be an object"))
    };
    for (table, rows) in as_object(&raw, path.display().to_string())? {
        for (id, fields) in as_object(&rows, format!("table `{table}`"))? {
            for (field, value) in as_object(&fields, format!("row `{table}/{id}`"))? {
                let text = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                tables.entry(table.clone()).or_default().entry(id.clone()).or_default().insert(field, text);
            }
        }
    }
    Ok(tables)
}

/// Writes `tables` as Redis hashes `{prefix}{table}:{id}`; returns the rows.
pub async fn load_lookups(url: &str, prefix: &str, tables: &Tables) -> anyhow::Result<usize> {
    let mut redis = Hashes::connect(url).await?;
    let rows = tables.iter().flat_map(|(table, entries)| {
        entries.iter().map(move |(id, fields)| (format!("{prefix}{table}:{id}"), fields.iter().collect()))
    });
    redis.set_all(rows).await.context("cannot write the lookup tables")
}
