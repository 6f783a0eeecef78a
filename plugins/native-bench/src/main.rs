//! `sluice-native-bench`: `sluice bench` with the default pipeline's four
//! stages also compiled natively, so that each stage is measured as a
//! WebAssembly component and as native code in the same run, and the two
//! must produce the same records.

use clap::Parser;

/// Measure the stage chain in process, and the stages as WebAssembly
/// components against the same logic compiled natively.
#[derive(Debug, Parser)]
#[command(name = "sluice-native-bench", version, about)]
struct Cli {
    #[command(flatten)]
    args: sluice::tools::bench::BenchArgs,
}

fn main() -> std::process::ExitCode {
    match sluice::tools::bench::run_with(Cli::parse().args, Some(native_bench::stages)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
