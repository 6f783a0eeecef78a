//! A stage of pipeline.toml: its plugin, config, lookups, writes, limits,
//! failure policy and canary.

use serde::Deserialize;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;
use toml::Spanned;

/// One stage: a WebAssembly component and its config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// The stage name, unique in the pipeline; shown in logs, metrics and the
    /// `sluice.error.stage` header of dead letters.
    pub name: Spanned<String>,
    /// Path to the component (`.wasm`), relative to pipeline.toml.
    pub plugin: PathBuf,
    /// The table given to the plugin's `init`, as a JSON object.
    #[serde(default)]
    pub config: toml::Table,
    /// The lookup tables this stage may read.
    #[serde(default)]
    pub lookups: Vec<Spanned<String>>,
    /// The Redis key prefixes this stage's effects may write (say the
    /// `totals` stage's counter prefix). Default none: a stage that declares
    /// nothing writes nothing. The offset fence and the lookup tables are
    /// never writable, whatever the prefix; an effect on any other key
    /// dead-letters its record as `effect_denied`.
    #[serde(default)]
    pub writes: Vec<Spanned<String>>,
    /// Sandbox limits.
    #[serde(default)]
    pub limits: Limits,
    /// While the stage's circuit breaker is open (it failed 5 calls in a
    /// row): `dead-letter` its records with reason `circuit_open` (default),
    /// or `halt` the pipeline, retrying until a trial call succeeds.
    #[serde(default)]
    pub on_failure: FailurePolicy,
    /// A candidate version of the plugin, run in shadow on a sample of the
    /// stage's records and compared with the live one; it never affects
    /// what is delivered. `POST /api/promote/{stage}` makes it live.
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
}

/// A stage's canary.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Path to the candidate component, relative to pipeline.toml.
    pub plugin: PathBuf,
    /// Share of the stage's records also given to the candidate, in (0, 1].
    /// The same records are sampled on every run (by partition and offset).
    pub sample: f64,
}

/// What a stage whose circuit breaker is open does with records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Dead-letter them with reason `circuit_open`.
    #[default]
    DeadLetter,
    /// Stop processing (nothing is committed) until a trial call succeeds.
    Halt,
}

/// Per-stage sandbox limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most linear memory an instance may grow to, in MiB. Default 64: ample
    /// for batches of hundreds of orders, small enough that a runaway plugin
    /// cannot take the host down.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: NonZeroU32,
    /// Deadline for one call into the plugin (one batch), in milliseconds.
    /// Default 5000: a batch of 500 orders takes about a millisecond, so only
    /// a plugin stuck in a loop gets near it.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: NonZeroU64,
    /// How often a record the plugin asks to retry is tried again before it
    /// is dead-lettered. Default 3.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Most wasm stack one call may use, in KiB. Default 512 (wasmtime's
    /// default); deeper recursion traps and dead-letters the record.
    #[serde(default = "default_stack_kib")]
    pub stack_kib: NonZeroU32,
    /// Most bytes the host copies out of one call's results (outputs,
    /// effects, reasons), in MiB. Default 64: the default memory cap, which
    /// is all a plugin can return without pointing many results at the same
    /// bytes. A call over it fails as `plugin_output_limit`.
    #[serde(default = "default_results_mib")]
    pub results_mib: NonZeroU32,
    /// Most records one input record may emit. Default 1000: a split of an
    /// order into its items, not a runaway loop. More dead-letters the
    /// record as `plugin_output_limit`.
    #[serde(default = "default_max_per_record")]
    pub max_outputs: NonZeroU32,
    /// Most Redis effects one input record may cause. Default 1000. More
    /// dead-letters the record as `plugin_output_limit`.
    #[serde(default = "default_max_per_record")]
    pub max_effects: NonZeroU32,
    /// Most keys of the stage's state in one input partition. Default one
    /// million. A `set` of one more key fails, and the plugin is told why.
    #[serde(default = "default_state_keys")]
    pub state_keys: NonZeroU64,
    /// Most bytes of the stage's state (keys and values) in one input
    /// partition, in MiB. Default 256. A `set` that would grow it past the
    /// limit fails, and the plugin is told why.
    #[serde(default = "default_state_mib")]
    pub state_mib: NonZeroU32,
    /// Largest value of the stage's state, in KiB. Default 64: state holds
    /// what a stage remembers per key, not records. A `set` of a larger
    /// value fails, and the plugin is told why.
    #[serde(default = "default_state_value_kib")]
    pub state_value_kib: NonZeroU32,
}

fn default_state_keys() -> NonZeroU64 {
    NonZeroU64::new(1_000_000).expect("non-zero")
}

fn default_state_mib() -> NonZeroU32 {
    NonZeroU32::new(256).expect("non-zero")
}

fn default_state_value_kib() -> NonZeroU32 {
    NonZeroU32::new(64).expect("non-zero")
}

fn default_results_mib() -> NonZeroU32 {
    NonZeroU32::new(64).expect("non-zero")
}

fn default_max_per_record() -> NonZeroU32 {
    NonZeroU32::new(1000).expect("non-zero")
}

fn default_stack_kib() -> NonZeroU32 {
    NonZeroU32::new(512).expect("non-zero")
}

fn default_memory_mib() -> NonZeroU32 {
    NonZeroU32::new(64).expect("non-zero")
}

fn default_timeout_ms() -> NonZeroU64 {
    NonZeroU64::new(5_000).expect("non-zero")
}

fn default_max_retries() -> u32 {
    3
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: default_memory_mib(),
            timeout_ms: default_timeout_ms(),
            max_retries: default_max_retries(),
            stack_kib: default_stack_kib(),
            results_mib: default_results_mib(),
            max_outputs: default_max_per_record(),
            max_effects: default_max_per_record(),
            state_keys: default_state_keys(),
            state_mib: default_state_mib(),
            state_value_kib: default_state_value_kib(),
        }
    }
}
