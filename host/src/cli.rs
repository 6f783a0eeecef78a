//! The `sluice` command line.

use crate::config;
use crate::engine::Engine;
use crate::lookup::Offline;
use crate::pipeline::Chain;
use crate::tools::generator::{self, GenArgs};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A stream processor whose transforms are WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// Log filter, e.g. `info` or `sluice=debug,rdkafka=warn`.
    #[arg(long, global = true, env = "SLUICE_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline until SIGINT or SIGTERM.
    Run {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        path: PathBuf,
    },
    /// Check a pipeline file and load and type-check every plugin, without
    /// connecting to Kafka or Redis.
    Validate {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        path: PathBuf,
    },
    /// Generate orders for the default pipeline.
    Gen(GenArgs),
    /// Measure the stage chain in process (no broker, no Redis).
    Bench(crate::tools::bench::BenchArgs),
    /// Print the first records of a topic, with their headers.
    Peek(crate::kafka::peek::PeekArgs),
    /// Print the sales report from the Redis counters.
    Report(crate::tools::report::ReportArgs),
    /// Produce dead letters again to their source topic (or another), once
    /// each, with the headers they came with.
    Replay(crate::tools::replay::ReplayArgs),
    /// Copy records from the source topics to another topic with no stages
    /// (the ceiling the end-to-end benchmark compares the pipeline with).
    Passthrough(crate::tools::bench::e2e::PassthroughArgs),
    /// End-to-end latency of records stamped by `sluice gen --stamp`.
    Latency(crate::tools::bench::e2e::LatencyArgs),
    /// Run a plugin (or a pipeline's chain) on records from a file, in the
    /// host engine with lookups from memory, and check the results.
    Test(crate::tools::test::TestArgs),
    /// Write records of a topic to a file, for `sluice test --records`.
    Capture(crate::tools::capture::CaptureArgs),
    /// Create a plugin project in Rust, Python or JavaScript.
    New(crate::tools::scaffold::NewArgs),
}

/// Parses the command line and runs the command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Run { path } => {
            let pipeline = load(&path)?;
            runtime.block_on(crate::run::run(&path, pipeline, matches!(cli.log_format, LogFormat::Text)))
        }
        Command::Validate { path } => validate(&path),
        Command::Gen(args) => runtime.block_on(generator::run(args)),
        Command::Bench(args) => crate::tools::bench::run(args),
        Command::Peek(args) => crate::kafka::peek::run(args),
        Command::Report(args) => runtime.block_on(crate::tools::report::run(args)),
        Command::Replay(args) => runtime.block_on(crate::tools::replay::run(args)),
        Command::Passthrough(args) => runtime.block_on(crate::tools::bench::e2e::passthrough(args)),
        Command::Latency(args) => runtime.block_on(crate::tools::bench::e2e::latency(args)),
        Command::Test(args) => match crate::tools::test::run(args)? {
            true => Ok(()),
            false => std::process::exit(1),
        },
        Command::Capture(args) => crate::tools::capture::run(args),
        Command::New(args) => crate::tools::scaffold::run(args),
    }
}

fn load(path: &Path) -> anyhow::Result<config::Pipeline> {
    config::load_file(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn validate(path: &Path) -> anyhow::Result<()> {
    let pipeline = load(path)?;
    let started = std::time::Instant::now();
    let engine = Engine::new()?;
    let chain = Chain::build(&engine, &pipeline, Arc::new(Offline), crate::state::StateStore::in_memory())
        .with_context(|| format!("{}", path.display()))?;
    for (i, stage) in chain.stages().iter().enumerate() {
        for s in std::iter::once(stage).chain(chain.canary(i)) {
            let c = &s.spec().component;
            let (origin, ms) = (format!("{:?}", c.origin), c.load_time.as_secs_f64() * 1e3);
            println!("stage {:<12} {} ({}, {origin} in {ms:.0} ms)", s.name(), c.path.display(), c.version());
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    println!("{}: ok, {} stages, loaded in {ms:.0} ms", path.display(), chain.stages().len());
    Ok(())
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).with_context(|| format!("bad --log filter `{filter}`"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
