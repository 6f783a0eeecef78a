//! One stage: a component instance in its own sandboxed store, with the
//! host imports it may call and the limits it runs under.

use crate::bindings::{self, ErrorInfo, LogLevel, Message, Outcome, Transform, TransformPre};
use crate::config::{FailurePolicy, Limits};
use crate::engine::{Engine, LoadedComponent};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::output::PluginOutput;

/// A row of a lookup table as (field, value) pairs.
pub type Row = Vec<(String, String)>;

/// Where lookups are served from (Redis with a cache, in production).
pub trait LookupSource: Send + Sync {
    /// The row `key` of `table`; `Ok(None)` when it does not exist.
    fn lookup(&self, table: &str, key: &str) -> Result<Option<Row>, Unavailable>;
}

/// A stage cannot run now (a lookup backend is down, or the stage is halted
/// by its circuit breaker); the batch must be retried later.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// What a stage is made of, as loaded from pipeline.toml.
pub struct StageSpec {
    /// The stage name.
    pub name: Arc<str>,
    /// The compiled component.
    pub component: LoadedComponent,
    /// The stage config, as the JSON object passed to `init`.
    pub config_json: String,
    /// The lookup tables the stage declared.
    pub tables: Arc<[String]>,
    /// Sandbox limits.
    pub limits: Limits,
    /// What to do while the stage's circuit breaker is open.
    pub on_failure: FailurePolicy,
    /// When this version of the stage was loaded.
    pub loaded_at: std::time::SystemTime,
}

impl StageSpec {
    /// Whether `other` is the same stage: same name, component bytes,
    /// config, tables and limits (so its live instance can be kept).
    pub fn same_as(&self, other: &StageSpec) -> bool {
        self.name == other.name
            && self.component.sha256 == other.component.sha256
            && self.config_json == other.config_json
            && self.tables == other.tables
            && self.limits == other.limits
            && self.on_failure == other.on_failure
    }
}

/// Per-instance host state: WASI with nothing granted, limits, lookups.
pub struct StageState {
    stage: Arc<str>,
    wasi: WasiCtx,
    /// What the plugin writes to stdout and stderr.
    output: [PluginOutput; 2],
    table: ResourceTable,
    limits: Limiter,
    lookups: Arc<dyn LookupSource>,
    tables: Arc<[String]>,
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl bindings::sluice::plugin::types::Host for StageState {}

impl bindings::sluice::plugin::host::Host for StageState {
    fn lookup(&mut self, table: String, key: String) -> wasmtime::Result<Option<Row>> {
        if !self.tables.contains(&table) {
            tracing::warn!(stage = %self.stage, table, "lookup of a table the stage did not declare");
            return Ok(None);
        }
        self.lookups.lookup(&table, &key).map_err(wasmtime::Error::new)
    }

    fn log(&mut self, level: LogLevel, message: String) {
        let stage = &*self.stage;
        match level {
            LogLevel::Trace => tracing::trace!(stage, "{message}"),
            LogLevel::Debug => tracing::debug!(stage, "{message}"),
            LogLevel::Info => tracing::info!(stage, "{message}"),
            LogLevel::Warn => tracing::warn!(stage, "{message}"),
            LogLevel::Error => tracing::error!(stage, "{message}"),
        }
    }
}

/// The store limits, keeping count of the instance's linear memory.
struct Limiter {
    inner: StoreLimits,
    memory: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory = self.memory + desired - current;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Builds the linker every stage is instantiated with: WASI p2 (with no
/// capability granted by the context) and the Sluice host interface.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<StageState>> {
    let mut linker = Linker::new(engine.wasmtime());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Transform::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
    Ok(linker)
}

/// Why a stage could not be set up.
#[derive(Debug)]
pub enum StageError {
    /// The component does not fit the transform world: stage, plugin path, why.
    World(String, String, String),
    /// Instantiation failed (for example a start function trapped): stage, why.
    Instantiate(String, String),
    /// The plugin's `init` returned an error: stage, the error.
    Init(String, String),
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::World(stage, path, error) => {
                write!(
                    f,
                    "stage `{stage}`: plugin {path} does not implement the sluice:plugin@0.1.0 `transform` world: {error}"
                )?;
                if error.contains("wasi:http/") {
                    // componentize-js imports wasi:http unless told otherwise.
                    f.write_str(" (plugins get no network: build without wasi:http, e.g. componentize-js --disable http fetch-event)")?;
                }
                Ok(())
            }
            Self::Instantiate(stage, error) => {
                write!(f, "stage `{stage}`: cannot instantiate the plugin: {error}")
            }
            Self::Init(stage, error) => write!(f, "stage `{stage}`: the plugin's init refused its config: {error}"),
        }
    }
}

impl std::error::Error for StageError {}

/// Why one call into a stage failed.
#[derive(Debug)]
pub enum CallError {
    /// A lookup could not be served: retry the batch later.
    Unavailable(Unavailable),
    /// The plugin trapped, ran out of time or memory: the records of the
    /// call are at fault (or the plugin is).
    Plugin { reason: &'static str, message: String },
}

/// Consecutive failed calls (traps, deadlines, memory) that open a stage's
/// circuit breaker. Default 5: one poison record fails one call, a broken
/// plugin fails every call.
pub const BREAKER_THRESHOLD: u32 = 5;
/// First time the breaker stays open; it doubles on every failed trial.
pub const BREAKER_MIN_OPEN: Duration = Duration::from_secs(1);
/// Longest time the breaker stays open before the next trial call.
pub const BREAKER_MAX_OPEN: Duration = Duration::from_secs(30);

/// A circuit breaker: open after [`BREAKER_THRESHOLD`] consecutive failed
/// calls, for 1 s doubling to 30 s; the first call after that is a trial.
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    open_for: Duration,
}

/// A live stage: the instance and the means to recreate it.
pub struct Stage {
    spec: Arc<StageSpec>,
    pre: TransformPre<StageState>,
    lookups: Arc<dyn LookupSource>,
    engine: Engine,
    store: Store<StageState>,
    instance: Transform,
    breaker: Breaker,
}

impl Stage {
    /// Type-checks the component against the world, instantiates it and
    /// runs its `init` with the stage config.
    pub fn new(
        engine: &Engine,
        linker: &Linker<StageState>,
        spec: Arc<StageSpec>,
        lookups: Arc<dyn LookupSource>,
    ) -> Result<Self, StageError> {
        let pre = linker.instantiate_pre(&spec.component.component).and_then(TransformPre::new).map_err(|e| {
            StageError::World(spec.name.to_string(), spec.component.path.display().to_string(), format!("{e:#}"))
        })?;
        let (store, instance) = instantiate(engine, &pre, &spec, &lookups)?;
        let breaker = Breaker { failures: 0, open_until: None, open_for: BREAKER_MIN_OPEN };
        Ok(Self { spec, pre, lookups, engine: engine.clone(), store, instance, breaker })
    }

    /// When the circuit breaker is open, until when.
    pub fn breaker_open_until(&self) -> Option<Instant> {
        self.breaker.open_until.filter(|until| Instant::now() < *until)
    }

    fn note_call(&mut self, failed: bool) {
        let b = &mut self.breaker;
        if !failed {
            *b = Breaker { failures: 0, open_until: None, open_for: BREAKER_MIN_OPEN };
            return;
        }
        b.failures += 1;
        if b.failures >= BREAKER_THRESHOLD {
            b.open_until = Some(Instant::now() + b.open_for);
            tracing::error!(
                stage = %self.spec.name, failures = b.failures, open_ms = b.open_for.as_millis() as u64,
                policy = ?self.spec.on_failure, "stage keeps failing: circuit breaker open"
            );
            b.open_for = (b.open_for * 2).min(BREAKER_MAX_OPEN);
        }
    }

    /// The stage name.
    pub fn name(&self) -> &Arc<str> {
        &self.spec.name
    }

    /// Bytes of linear memory the instance holds.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limits.memory
    }

    /// The stage's definition.
    pub fn spec(&self) -> &StageSpec {
        &self.spec
    }

    /// Calls `process` once. After a failure the instance is replaced by a
    /// fresh one, since a trapped instance cannot be trusted again.
    pub fn call(&mut self, batch: &[Message]) -> Result<Vec<Outcome>, CallError> {
        let timeout = Duration::from_millis(self.spec.limits.timeout_ms.get());
        self.store.set_epoch_deadline(Engine::deadline_ticks(timeout));
        forget_output(self.store.data());
        let result = self.instance.call_process(&mut self.store, batch);
        let mut error = match result {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                self.note_call(false);
                return Ok(outcomes.into_iter().map(checked_reason).collect());
            }
            Ok(outcomes) => CallError::Plugin {
                reason: "plugin_contract",
                message: format!("process returned {} outcomes for {} records", outcomes.len(), batch.len()),
            },
            Err(e) => classify(&e, timeout),
        };
        if let CallError::Plugin { message, .. } = &mut error {
            with_output(message, self.store.data());
        }
        if matches!(error, CallError::Plugin { .. }) {
            self.note_call(true);
        }
        if let Err(e) = self.recreate() {
            tracing::error!(stage = %self.spec.name, error = %e, "cannot recreate the plugin instance");
        }
        Err(error)
    }

    /// Replaces the instance by a fresh, initialised one and closes the
    /// circuit breaker.
    pub fn reset(&mut self) -> Result<(), StageError> {
        self.recreate()?;
        self.breaker = Breaker { failures: 0, open_until: None, open_for: BREAKER_MIN_OPEN };
        Ok(())
    }

    fn recreate(&mut self) -> Result<(), StageError> {
        let (store, instance) = instantiate(&self.engine, &self.pre, &self.spec, &self.lookups)?;
        self.store = store;
        self.instance = instance;
        Ok(())
    }
}

fn instantiate(
    engine: &Engine,
    pre: &TransformPre<StageState>,
    spec: &StageSpec,
    lookups: &Arc<dyn LookupSource>,
) -> Result<(Store<StageState>, Transform), StageError> {
    let memory_bytes = spec.limits.memory_mib.get() as usize * 1024 * 1024;
    let output = [PluginOutput::new(spec.name.clone(), "stdout"), PluginOutput::new(spec.name.clone(), "stderr")];
    let state = StageState {
        stage: spec.name.clone(),
        wasi: WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(output[0].clone())
            .stderr(output[1].clone())
            .build(),
        output,
        table: ResourceTable::new(),
        limits: Limiter {
            inner: StoreLimitsBuilder::new().memory_size(memory_bytes).trap_on_grow_failure(true).build(),
            memory: 0,
        },
        lookups: lookups.clone(),
        tables: spec.tables.clone(),
    };
    let mut store = Store::new(engine.wasmtime(), state);
    store.limiter(|state| &mut state.limits);
    let timeout = Duration::from_millis(spec.limits.timeout_ms.get());
    store.set_epoch_deadline(Engine::deadline_ticks(timeout));
    let stage = spec.name.to_string();
    let instance = pre.instantiate(&mut store).map_err(|e| StageError::Instantiate(stage.clone(), format!("{e:#}")))?;
    match instance.call_init(&mut store, &spec.config_json) {
        Ok(Ok(())) => Ok((store, instance)),
        Ok(Err(error)) => Err(StageError::Init(stage, error)),
        Err(e) => {
            let mut message = format!("init trapped: {e:#}");
            with_output(&mut message, store.data());
            Err(StageError::Init(stage, message))
        }
    }
}

/// Longest error message kept for a dead letter's header, in characters.
const MAX_MESSAGE: usize = 1000;

/// Drops what the plugin wrote before a call (it has been logged).
fn forget_output(state: &StageState) {
    for output in &state.output {
        output.take_recent();
    }
}

/// Appends the last lines the plugin wrote (stderr first) to the message of
/// its failure: a Python traceback or a panic message says what went wrong.
fn with_output(message: &mut String, state: &StageState) {
    let [stdout, stderr] = &state.output;
    let mut lines = stderr.take_recent();
    lines.extend(stdout.take_recent());
    if lines.is_empty() {
        return;
    }
    let budget = MAX_MESSAGE.saturating_sub(message.chars().count() + 20);
    let mut tail: Vec<&str> = Vec::new();
    let mut used = 0;
    for line in lines.iter().rev() {
        used += line.chars().count() + 3;
        if used > budget {
            break;
        }
        tail.push(line);
    }
    if !tail.is_empty() {
        tail.reverse();
        message.push_str("; the plugin wrote: ");
        message.push_str(&tail.join(" | "));
    }
}

fn classify(error: &wasmtime::Error, timeout: Duration) -> CallError {
    if let Some(unavailable) = error.downcast_ref::<Unavailable>() {
        return CallError::Unavailable(unavailable.clone());
    }
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return CallError::Plugin {
            reason: "plugin_timeout",
            message: format!("the call did not finish within its deadline of {} ms", timeout.as_millis()),
        };
    }
    let text = format!("{error:#}");
    let reason = if text.contains("growing memory") || text.contains("memory growth failure") {
        "plugin_oom"
    } else {
        "plugin_trap"
    };
    // The trap itself, not the wasm backtrace that follows it in the chain.
    let message = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    CallError::Plugin { reason, message: message.chars().take(MAX_MESSAGE).collect() }
}

/// The longest reason code a plugin may give. Default 48: a code names a
/// kind of failure (`missing_field`), not an instance of it.
pub const MAX_REASON: usize = 48;

/// A plugin's reason code, if it is one: snake_case of at most
/// [`MAX_REASON`] characters, outside the host's own `plugin_` codes (it
/// becomes a header value and a metric label). Anything else breaks the
/// plugin contract: `plugin_contract`, with the code given in the message.
fn checked_reason(outcome: Outcome) -> Outcome {
    let (Outcome::Reject(info) | Outcome::Retry(info)) = &outcome else { return outcome };
    let code = &info.reason;
    let valid = code.len() <= MAX_REASON
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !code.starts_with("plugin_")
        && code != "circuit_open";
    if valid {
        return outcome;
    }
    let shown: String = code.chars().take(MAX_REASON).collect();
    Outcome::Reject(ErrorInfo {
        reason: "plugin_contract".into(),
        message: format!(
            "reason code {shown:?} is not snake_case of at most {MAX_REASON} characters outside the host's own \
             codes; the plugin's message: {}",
            info.message
        ),
    })
}
