//! `sluice capture`: records of a topic written to a file, in the format
//! `sluice test --records` reads ([`crate::tools::records`]), so that live
//! traffic becomes a plugin's golden test:
//!
//! ```text
//! sluice capture orders -n 200 --out fixtures/orders.jsonl
//! sluice test plugin.wasm --records --input fixtures/orders.jsonl --expect fixtures/expected.jsonl --bless
//! sluice test plugin.wasm --records --input fixtures/orders.jsonl --expect fixtures/expected.jsonl
//! ```

use crate::config;
use crate::kafka::{Start, scan_from};
use crate::tools::records::RecordLine;
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// What to capture, and where to.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// The topic to read.
    pub topic: String,
    /// How many records at most.
    #[arg(short = 'n', long = "count")]
    pub count: usize,
    /// Read only this partition (from `--offset`, or its start).
    #[arg(long)]
    pub partition: Option<i32>,
    /// The first offset to read, in `--partition`.
    #[arg(long, requires = "partition")]
    pub offset: Option<i64>,
    /// The file to write, one record per line (`-` for standard output).
    #[arg(long)]
    pub out: PathBuf,
    /// The pipeline whose brokers and consumer settings to read with.
    #[arg(long, default_value = "pipeline.toml")]
    pub pipeline: PathBuf,
    /// How long to wait for more records, in seconds.
    #[arg(long, default_value_t = 5)]
    pub wait: u64,
}

/// Runs `sluice capture`: reads up to `count` committed records, from the
/// start of every partition (or `--offset` of `--partition`) to the end
/// each had when the capture began, and writes them by partition then
/// offset.
pub fn run(args: CaptureArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.count > 0, "-n must be at least 1");
    let pipeline =
        config::load_file(&args.pipeline).map_err(|e| anyhow::anyhow!("{}: {e}", args.pipeline.display()))?;
    let start = match args.partition {
        Some(partition) => Start::At { partition, offset: args.offset.unwrap_or(0) },
        None => Start::Beginning,
    };
    let records = scan_from(&pipeline.config, &args.topic, start, args.count, Duration::from_secs(args.wait))?;
    let mut text = String::new();
    for record in records.iter().take(args.count) {
        text.push_str(&serde_json::to_string(&RecordLine::of(record))?);
        text.push('\n');
    }
    let written = records.len().min(args.count);
    if args.out.as_os_str() == "-" {
        std::io::stdout().write_all(text.as_bytes())?;
    } else {
        std::fs::write(&args.out, text).with_context(|| format!("cannot write {}", args.out.display()))?;
        println!("{}: {written} records of `{}`", args.out.display(), args.topic);
    }
    if written == 0 {
        eprintln!("no records in `{}` within {} s", args.topic, args.wait);
    }
    Ok(())
}
