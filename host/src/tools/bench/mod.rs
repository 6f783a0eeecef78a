//! `sluice bench`: the stage chain in process, no broker or Redis: N
//! generated orders (fixed seed) through the pipeline's stages at several
//! batch sizes, with lookups served from the generator's tables in memory.
//! Reports records/s and time per record in each stage.
//!
//! Given native versions of the stages ([`run_with`]; the default
//! pipeline's are in the `native-bench` crate, whose `sluice-native-bench`
//! binary passes them), it also runs the stages behind the bare stage
//! interface as WebAssembly components and compiled natively, and reports
//! the ratio of the two. Both must produce the same records, or the
//! benchmark fails.

pub mod e2e;

use crate::bindings::{Message, Outcome};
use crate::config;
use crate::config::PipelineConfig;
use crate::engine::Engine;
use crate::lookup::{InMemory, LookupSource};
use crate::pipeline::Chain;
use crate::pipeline::Stage;
use crate::pipeline::values::Encodings;
use crate::record::Record;
use crate::tools::generator::{self, Rng};
use std::hash::{Hash, Hasher};
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

/// A stage as the benchmark drives it.
pub trait Transform {
    /// The stage name.
    fn name(&self) -> &str;
    /// One outcome per message.
    fn process(&mut self, batch: &[Message]) -> Vec<Outcome>;
}

impl Transform for Stage {
    fn name(&self) -> &str {
        Stage::name(self)
    }

    fn process(&mut self, batch: &[Message]) -> Vec<Outcome> {
        match self.call(batch) {
            Ok(outcomes) => outcomes,
            Err(e) => panic!("stage `{}` failed in the benchmark: {e:?}", Stage::name(self)),
        }
    }
}

/// Native versions of a pipeline's stages, in its order, with the
/// encodings the host chose for the components (so that both exchange the
/// same values); fails for a stage it has none of.
pub type NativeStages =
    fn(&PipelineConfig, &[Encodings], Arc<dyn LookupSource>) -> anyhow::Result<Vec<Box<dyn Transform>>>;

/// Runs the benchmark and prints one line per batch size and stage.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    run_with(args, None)
}

/// [`run`], and the stages compared with their `natives`.
pub fn run_with(args: BenchArgs, natives: Option<NativeStages>) -> anyhow::Result<()> {
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
    let lookups: Arc<dyn LookupSource> = Arc::new(InMemory(generator::tables()));
    for &batch in &args.batches {
        anyhow::ensure!(batch > 0, "--batch must be at least 1");
        let mut chain = Chain::build(&engine, &pipeline, lookups.clone(), crate::state::StateStore::in_memory())?;
        let names: Vec<String> = chain.stages().iter().map(|s| s.name().to_string()).collect();
        if batch == args.batches[0] {
            println!("values between the stages: {}", boundaries(&chain));
        }
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

        // The stages alone, as components and natively, in the same run
        // (for the default pipeline's stages, which have a native version).
        let Some(native_stages) = natives else { continue };
        let encodings: Vec<Encodings> = chain.stages().iter().map(|s| s.spec().encodings).collect();
        let mut natives = match native_stages(&pipeline.config, &encodings, lookups.clone()) {
            Ok(natives) => natives,
            Err(e) => {
                println!("  stages only: not measured ({e})");
                continue;
            }
        };
        let mut wasm: Vec<&mut dyn Transform> =
            chain.stages_mut().iter_mut().map(|s| s as &mut dyn Transform).collect();
        let components = drive(&mut wasm, &records, batch);
        let mut natives: Vec<&mut dyn Transform> = natives.iter_mut().map(|s| &mut **s as &mut dyn Transform).collect();
        let compiled = drive(&mut natives, &records, batch);
        anyhow::ensure!(
            components.digest == compiled.digest,
            "the WebAssembly and native stages produced different records ({components:?} vs {compiled:?})"
        );
        let (wasm_rate, native_rate) = (n / components.secs, n / compiled.secs);
        println!(
            "  stages only: wasm {wasm_rate:>9.0} records/s, native {native_rate:>9.0} records/s, wasm/native {:.2} (same {} out, {} dead letters, {} filtered)",
            wasm_rate / native_rate,
            compiled.out,
            compiled.dead,
            compiled.filtered
        );
        for ((name, w), c) in names.iter().zip(&components.per_stage).zip(&compiled.per_stage) {
            let (w, c) = (w.as_nanos() as f64 / n, c.as_nanos() as f64 / n);
            println!(
                "    {name:<12} wasm {w:>8.0} ns/record, native {c:>8.0} ns/record, boundary and sandbox {:>8.0} ns",
                w - c
            );
        }
    }
    Ok(())
}

/// What [`drive`] measured.
#[derive(Debug)]
struct Driven {
    secs: f64,
    per_stage: Vec<Duration>,
    out: usize,
    dead: usize,
    filtered: usize,
    /// A hash of every record out of the last stage, to compare two runs.
    digest: u64,
}

/// Runs `records` through `stages` in batches of `batch`, passing what each
/// stage emits to the next, as the chain does.
/// The stages with the encoding of the values between each two, as
/// `normalize -binary-> enrich -json-> vip`.
fn boundaries(chain: &Chain) -> String {
    let mut line = String::new();
    for stage in chain.stages() {
        if !line.is_empty() {
            line.push_str(&format!(" -{}-> ", stage.spec().encodings.input.as_str()));
        }
        line.push_str(stage.name());
    }
    line
}

fn drive(stages: &mut [&mut dyn Transform], records: &[Record], batch: usize) -> Driven {
    let mut d =
        Driven { secs: 0.0, per_stage: vec![Duration::ZERO; stages.len()], out: 0, dead: 0, filtered: 0, digest: 0 };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let started = Instant::now();
    for chunk in records.chunks(batch) {
        let mut messages: Vec<Message> = chunk.iter().map(crate::pipeline::first_message).collect();
        for (stage, elapsed) in stages.iter_mut().zip(&mut d.per_stage) {
            let t = Instant::now();
            let outcomes = stage.process(&messages);
            *elapsed += t.elapsed();
            let mut next = Vec::with_capacity(messages.len());
            for (m, outcome) in messages.iter().zip(outcomes) {
                match outcome {
                    Outcome::Emit((outputs, effects)) => {
                        effects.len().hash(&mut hasher);
                        for o in outputs {
                            next.push(Message { key: o.key, value: o.value, headers: o.headers, ..m.clone() });
                        }
                    }
                    Outcome::Filtered => d.filtered += 1,
                    Outcome::Reject(_) | Outcome::Retry(_) => d.dead += 1,
                }
            }
            messages = next;
        }
        for m in &messages {
            m.value.hash(&mut hasher);
        }
        d.out += messages.len();
    }
    d.secs = started.elapsed().as_secs_f64();
    d.digest = hasher.finish();
    d
}
