//! `sluice bench`: the stage chain in process, no broker or Redis: N
//! generated orders (fixed seed) through the pipeline's stages at several
//! batch sizes, with lookups served from the generator's tables in memory.
//! Reports records/s and time per record in each stage.

use crate::config;
use crate::engine::Engine;
use crate::generator::{self, Rng, Tables};
use crate::pipeline::{Chain, LookupSource, Record, Row, Unavailable};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The pipeline whose stages to run.
    #[arg(default_value = "pipeline.toml")]
    pub path: std::path::PathBuf,
    /// Orders per batch size.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Batch sizes to measure (repeat the flag for several).
    #[arg(long = "batch", default_values_t = [1usize, 64, 512])]
    pub batches: Vec<usize>,
    /// The generator's seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of invalid records.
    #[arg(long, default_value_t = 0.02)]
    pub invalid_ratio: f64,
}

/// Lookup tables held in memory.
pub struct StaticLookups(pub Tables);

impl LookupSource for StaticLookups {
    fn lookup(&self, table: &str, key: &str) -> Result<Option<Row>, Unavailable> {
        Ok(self
            .0
            .get(table)
            .and_then(|t| t.get(key))
            .map(|row| row.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }
}

/// Runs the benchmark and prints one line per batch size and stage.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let pipeline = config::load_file(&args.path).map_err(|e| anyhow::anyhow!("{}: {e}", args.path.display()))?;
    let mut rng = Rng::new(args.seed);
    let records: Vec<Record> = (0..args.count)
        .map(|n| {
            let g = generator::record(&mut rng, args.seed, n, args.invalid_ratio);
            Record {
                key: g.key.map(String::into_bytes),
                value: Some(g.value.into_bytes()),
                headers: Vec::new(),
                topic: "orders".into(),
                partition: 0,
                offset: n as i64,
                timestamp_ms: None,
            }
        })
        .collect();
    let bytes: usize = records.iter().map(|r| r.value.as_ref().map_or(0, Vec::len)).sum();
    println!("{} orders, {} bytes on average, seed {}", records.len(), bytes / records.len().max(1), args.seed);
    let engine = Engine::new()?;
    let lookups: Arc<dyn LookupSource> = Arc::new(StaticLookups(generator::tables()));
    for &batch in &args.batches {
        anyhow::ensure!(batch > 0, "--batch must be at least 1");
        let mut chain = Chain::build(&engine, &pipeline, lookups.clone())?;
        let names: Vec<String> = chain.stages().iter().map(|s| s.name().to_string()).collect();
        chain.process(&records[..batch.min(records.len())])?; // warm-up: caches, first-call paths
        let mut per_stage = vec![Duration::ZERO; names.len()];
        let (mut out, mut dead, mut filtered) = (0, 0, 0);
        let started = Instant::now();
        for chunk in records.chunks(batch) {
            let result = chain.process(chunk)?;
            out += result.outputs.len();
            dead += result.dead_letters.len();
            filtered += result.filtered;
            for (total, stage) in per_stage.iter_mut().zip(&result.stages) {
                *total += stage.elapsed;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let n = records.len() as f64;
        println!(
            "batch {batch:>4}: {:>9.0} records/s, {:>6.2} us/record ({out} out, {dead} dead letters, {filtered} filtered)",
            n / secs,
            secs * 1e6 / n
        );
        for (name, total) in names.iter().zip(&per_stage) {
            println!("    {name:<12} {:>8.0} ns/record", total.as_nanos() as f64 / n);
        }
    }
    Ok(())
}
