//! One stage: a component instance in its own sandboxed store (see
//! `sandbox`), called with a deadline, replaced by a fresh instance after a
//! failure, and behind a circuit breaker that opens when it keeps failing.

use crate::bindings::{ErrorInfo, Message, Outcome, Transform, TransformPre, v0_3, v0_5, v0_6};
use crate::config::{FailurePolicy, Limits};
use crate::engine::{Engine, LoadedComponent, PROCESS_PACKED_EXPORT, PROCESS_TABLES_EXPORT};
use crate::lookup::{LookupSource, Unavailable};
use crate::state::{StateCalls, StateLimits, StateStore};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Func, Linker, ResourceTable, TypedFunc};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;

use super::lift::{self, OverBudget};
use super::output::PluginOutput;
use super::packed::{self, Malformed};
use super::reason::{PluginFailure, Reason};
use super::sandbox::{CallClock, LimitExceeded, Limiter, StageState};
use super::tables;
use super::values::{Declared, Encoding, Encodings, ValueType};

/// What a stage is made of, as loaded from pipeline.toml.
pub struct StageSpec {
    /// The stage name.
    pub name: Arc<str>,
    /// The compiled component.
    pub component: LoadedComponent,
    /// The stage config, as the JSON object passed to `init`.
    pub config_json: String,
    /// How its values are encoded (`sluice:plugin@0.3.0`; JSON for
    /// components of earlier versions).
    pub encodings: Encodings,
    /// The lookup tables the stage declared.
    pub tables: Arc<[String]>,
    /// Sandbox limits.
    pub limits: Limits,
    /// The Redis keys the stage's effects may write.
    pub writes: Writes,
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
            && self.encodings == other.encodings
            && self.tables == other.tables
            && self.limits == other.limits
            && self.writes == other.writes
            && self.on_failure == other.on_failure
    }
}

/// The Redis keys a stage may write: under one of the prefixes it declares,
/// and never under a protected one (the offset fence, the lookup tables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// Prefixes the stage declared in `writes`.
    pub allowed: Vec<String>,
    /// Prefixes no stage may write.
    pub protected: Vec<String>,
}

impl Writes {
    /// Any key at all (`sluice test` of a single plugin, which writes nothing).
    pub fn anywhere() -> Self {
        Self { allowed: vec![String::new()], protected: Vec::new() }
    }

    /// Why the stage may not write `key`, if it may not.
    pub fn check(&self, key: &str) -> Result<(), String> {
        if let Some(protected) = self.protected.iter().find(|p| key.starts_with(p.as_str())) {
            return Err(format!(
                "an effect on Redis key `{}` is under `{protected}`, which no stage may write (the offset fence \
                 or a lookup table)",
                shown(key)
            ));
        }
        if self.allowed.iter().any(|p| key.starts_with(p.as_str())) {
            return Ok(());
        }
        let allowed = if self.allowed.is_empty() {
            "the stage declares no `writes`".to_string()
        } else {
            format!("the stage's `writes` are {:?}", self.allowed)
        };
        Err(format!("an effect on Redis key `{}` is outside what the stage may write: {allowed}", shown(key)))
    }
}

/// A key as shown in a message: at most 200 characters.
fn shown(key: &str) -> String {
    let mut shown: String = key.chars().take(200).collect();
    if shown.len() < key.len() {
        shown.push('…');
    }
    shown
}

/// Why a stage could not be set up.
///
/// Its message names the stage; wasmtime's reason, where there is one, is
/// its [`source`](std::error::Error::source) (print it with `{:#}` through
/// anyhow to see both).
#[derive(Debug)]
pub enum StageError {
    /// The component does not fit the transform world.
    World {
        /// The stage.
        stage: String,
        /// The plugin file.
        plugin: std::path::PathBuf,
        /// Why the component does not fit.
        source: wasmtime::Error,
    },
    /// Instantiation failed (for example a start function trapped).
    Instantiate {
        /// The stage.
        stage: String,
        /// Why.
        source: wasmtime::Error,
    },
    /// The plugin's `init` refused its config, trapped or ran out of time.
    Init {
        /// The stage.
        stage: String,
        /// The plugin's error, or what happened.
        error: String,
    },
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::World { stage, plugin, source } => {
                let plugin = plugin.display();
                write!(
                    f,
                    "stage `{stage}`: plugin {plugin} does not implement the `transform` world of sluice:plugin@0.1.0, \
                     0.2.0, 0.3.0, 0.4.0, 0.5.0 or 0.6.0"
                )?;
                if format!("{source:#}").contains("wasi:http/") {
                    // componentize-js imports wasi:http unless told otherwise.
                    f.write_str(" (plugins get no network: build without wasi:http, e.g. componentize-js --disable http fetch-event)")?;
                }
                Ok(())
            }
            Self::Instantiate { stage, .. } => write!(f, "stage `{stage}`: cannot instantiate the plugin"),
            Self::Init { stage, error } => write!(f, "stage `{stage}`: the plugin's init refused its config: {error}"),
        }
    }
}

impl std::error::Error for StageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::World { source, .. } | Self::Instantiate { source, .. } => Some(source.as_ref()),
            Self::Init { .. } => None,
        }
    }
}

/// Why one call into a stage failed.
#[derive(Debug)]
pub enum CallError {
    /// A lookup could not be served: retry the batch later.
    Unavailable(Unavailable),
    /// The plugin trapped, ran out of time or memory: the records of the
    /// call are at fault (or the plugin is).
    Plugin {
        /// How it failed.
        reason: PluginFailure,
        /// What happened, with the last lines the plugin wrote.
        message: String,
    },
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

/// A component made ready to instantiate, by the version of the contract
/// it implements.
#[derive(Clone)]
enum Pre {
    /// `sluice:plugin@0.1.0` or `0.2.0`: `init(config)`.
    V1(TransformPre<StageState>),
    /// `sluice:plugin@0.3.0` or `0.4.0` (the same exports; 0.4.0 imports
    /// `lookups` as well): `describe(config)`, `init(config, encodings)`.
    V3(v0_3::TransformPre<StageState>),
    /// `sluice:plugin@0.5.0`: 0.4.0's calls, and `process-packed` instead
    /// of `process`.
    V5(v0_5::TransformPre<StageState>),
    /// `sluice:plugin@0.6.0`: 0.4.0's calls, and `process-tables` instead
    /// of `process`.
    V6(v0_6::TransformPre<StageState>),
}

impl Pre {
    /// Type-checks the component against the world of its version.
    fn new(linker: &Linker<StageState>, spec: &StageSpec) -> Result<Self, StageError> {
        let component = &spec.component.component;
        let typed = linker.instantiate_pre(component).and_then(|pre| {
            if spec.component.passes_tables() {
                v0_6::TransformPre::new(pre).map(Pre::V6)
            } else if spec.component.packs_batches() {
                v0_5::TransformPre::new(pre).map(Pre::V5)
            } else if spec.component.declares_values() {
                v0_3::TransformPre::new(pre).map(Pre::V3)
            } else {
                TransformPre::new(pre).map(Pre::V1)
            }
        });
        typed.map_err(|source| StageError::World {
            stage: spec.name.to_string(),
            plugin: spec.component.path.clone(),
            source,
        })
    }

    fn instance_pre(&self) -> &wasmtime::component::InstancePre<StageState> {
        match self {
            Pre::V1(pre) => pre.instance_pre(),
            Pre::V3(pre) => pre.instance_pre(),
            Pre::V5(pre) => pre.instance_pre(),
            Pre::V6(pre) => pre.instance_pre(),
        }
    }
}

/// How a stage's batches cross the boundary.
enum Crossing {
    /// As lists of records (`sluice:plugin@0.1.0` to `0.4.0`).
    Lists,
    /// Packed into lists of bytes, records and headers (`0.5.0`).
    Packed(Box<v0_5::Batch>),
    /// As tables of bytes (`0.6.0`).
    Tables(Box<v0_6::Batch>),
}

/// What the component of `spec` declares it reads and writes, from an
/// instance of its own (`None` for a component before
/// `sluice:plugin@0.3.0`, which reads and writes JSON).
pub fn describe(
    engine: &Engine,
    linker: &Linker<StageState>,
    spec: &StageSpec,
    lookups: &Arc<dyn LookupSource>,
    state: &StateScope,
) -> Result<Option<Declared>, StageError> {
    let pre = Pre::new(linker, spec)?;
    if let Pre::V1(_) = pre {
        return Ok(None);
    }
    let stage = spec.name.to_string();
    let (mut store, instance) = fresh(engine, pre.instance_pre(), spec, lookups, state)?;
    let failed = |source| StageError::Instantiate { stage: stage.clone(), source };
    let declared = match pre {
        Pre::V1(_) => unreachable!("returned above"),
        Pre::V3(_) => {
            v0_3::Transform::new(&mut store, &instance).map_err(failed)?.call_describe(&mut store, &spec.config_json)
        }
        Pre::V5(_) => {
            v0_5::Transform::new(&mut store, &instance).map_err(failed)?.call_describe(&mut store, &spec.config_json)
        }
        Pre::V6(_) => {
            v0_6::Transform::new(&mut store, &instance).map_err(failed)?.call_describe(&mut store, &spec.config_json)
        }
    };
    let timeout = Duration::from_millis(spec.limits.timeout_ms.get());
    if store.data().clock.cut {
        let error = format!("describe did not finish within its deadline of {} ms", timeout.as_millis());
        return Err(StageError::Init { stage, error });
    }
    let declared = declared.map_err(|e| StageError::Init { stage, error: format!("describe trapped: {e:#}") })?;
    let side = |t: Option<v0_3::ValueType>| t.map(|t| ValueType { name: t.name, binary: t.binary });
    Ok(Some(Declared { input: side(declared.input), output: side(declared.output) }))
}

/// A live stage: the instance and the means to recreate it.
pub struct Stage {
    spec: Arc<StageSpec>,
    pre: Pre,
    lookups: Arc<dyn LookupSource>,
    state: StateScope,
    /// Whether the component imports keyed state: only then does a call
    /// note where its records came from.
    stateful: bool,
    engine: Engine,
    store: Store<StageState>,
    /// `process` (or `process-packed`, `process-tables`), typed with
    /// results that are lifted within the budget.
    process: Func,
    /// How batches cross, with the lists they are written into kept from
    /// call to call.
    crossing: Crossing,
    breaker: Breaker,
}

/// Whose keyed state a stage's calls read and write.
#[derive(Clone)]
pub struct StateScope {
    /// The state of every stage.
    pub store: Arc<StateStore>,
    /// The stage whose state it is (a canary's is its stage's).
    pub stage: Arc<str>,
    /// Whether the writes are kept (not a canary's).
    pub keep: bool,
}

impl StateScope {
    fn calls(&self, limits: &Limits) -> StateCalls {
        let limits = StateLimits {
            max_keys: limits.state_keys.get(),
            max_bytes: u64::from(limits.state_mib.get()) << 20,
            max_value_bytes: limits.state_value_kib.get() as usize * 1024,
        };
        StateCalls::new(self.store.clone(), self.stage.clone(), self.keep, limits)
    }
}

impl Stage {
    /// Type-checks the component against the world, instantiates it and
    /// runs its `init` with the stage config.
    pub fn new(
        engine: &Engine,
        linker: &Linker<StageState>,
        spec: Arc<StageSpec>,
        lookups: Arc<dyn LookupSource>,
        state: StateScope,
    ) -> Result<Self, StageError> {
        let pre = Pre::new(linker, &spec)?;
        let (store, process) = instantiate(engine, &pre, &spec, &lookups, &state)?;
        let breaker = Breaker { failures: 0, open_until: None, open_for: BREAKER_MIN_OPEN };
        let stateful = spec.component.uses_state(engine);
        let crossing = match pre {
            Pre::V1(_) | Pre::V3(_) => Crossing::Lists,
            Pre::V5(_) => Crossing::Packed(Box::new(packed::lists())),
            Pre::V6(_) => Crossing::Tables(Box::new(tables::lists())),
        };
        Ok(Self { spec, pre, lookups, state, stateful, engine: engine.clone(), store, process, crossing, breaker })
    }

    /// Whether the component imports keyed state.
    pub fn uses_state(&self) -> bool {
        self.stateful
    }

    /// Whether the calls are a probe, whose state writes are dropped.
    pub fn set_probing(&mut self, probing: bool) {
        self.store.data_mut().state.set_probing(probing);
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
        arm(&mut self.store, timeout);
        forget_output(self.store.data());
        if self.stateful {
            self.store.data_mut().state.start(batch);
        }
        let budget = (self.spec.limits.results_mib.get() as usize) << 20;
        let (func, store) = (self.process, &mut self.store);
        let result = lift::within(budget, || match &mut self.crossing {
            Crossing::Lists => {
                // SAFETY: `instantiate` checked this signature against the component.
                let process = unsafe { TypedFunc::<(&[Message],), lift::Results>::new_unchecked(func) };
                process
                    .call(&mut *store, (batch,))
                    .map(|(outcomes,)| outcomes.0.into_iter().map(Outcome::from).collect())
            }
            Crossing::Packed(packing) => {
                packed::pack(batch, packing)?;
                // SAFETY: `instantiate` checked this signature against the component.
                let process = unsafe { TypedFunc::<(&v0_5::Batch,), (packed::Results,)>::new_unchecked(func) };
                let (results,) = process.call(&mut *store, (&**packing,))?;
                packed::unpack(batch, results)
            }
            Crossing::Tables(written) => {
                tables::pack(batch, written)?;
                // SAFETY: `instantiate` checked this signature against the component.
                let process = unsafe { TypedFunc::<(&v0_6::Batch,), (tables::Results,)>::new_unchecked(func) };
                let (results,) = process.call(&mut *store, (&**written,))?;
                tables::unpack(batch, results)
            }
        });
        let cut = self.store.data().clock.cut;
        let mut error = match result {
            Ok(_) if cut => timed_out(timeout),
            Ok(outcomes) if outcomes.len() == batch.len() => {
                self.note_call(false);
                self.store.data_mut().state.finish();
                return Ok(outcomes.into_iter().map(checked_reason).collect());
            }
            Ok(outcomes) => CallError::Plugin {
                reason: PluginFailure::Contract,
                message: format!("process returned {} outcomes for {} records", outcomes.len(), batch.len()),
            },
            Err(e) => classify(&e, timeout),
        };
        self.store.data_mut().state.abandon();
        if let CallError::Plugin { message, .. } = &mut error {
            with_output(message, self.store.data());
        }
        if matches!(error, CallError::Plugin { .. }) {
            self.note_call(true);
        }
        if let Err(e) = self.recreate() {
            tracing::error!(stage = %self.spec.name, error = %anyhow::Error::new(e), "cannot recreate the plugin instance");
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
        let probing = self.store.data().state.probing();
        let (store, process) = instantiate(&self.engine, &self.pre, &self.spec, &self.lookups, &self.state)?;
        self.store = store;
        self.store.data_mut().state.set_probing(probing);
        self.process = process;
        Ok(())
    }
}

/// Starts the clock of a call whose deadline is `timeout` from now.
fn arm(store: &mut Store<StageState>, timeout: Duration) {
    store.data_mut().clock = CallClock::new(timeout);
    store.set_epoch_deadline(Engine::deadline_ticks(timeout));
}

/// An instance of the component in a sandboxed store of its own, not yet
/// initialised.
fn fresh(
    engine: &Engine,
    pre: &wasmtime::component::InstancePre<StageState>,
    spec: &StageSpec,
    lookups: &Arc<dyn LookupSource>,
    state: &StateScope,
) -> Result<(Store<StageState>, wasmtime::component::Instance), StageError> {
    let memory_bytes = spec.limits.memory_mib.get() as usize * 1024 * 1024;
    let stream = |name| PluginOutput::new(spec.name.clone(), name);
    let output = [stream("stdout"), stream("stderr"), stream("log")];
    let timeout = Duration::from_millis(spec.limits.timeout_ms.get());
    let state = StageState {
        wasi: WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(output[0].clone())
            .stderr(output[1].clone())
            .build(),
        output,
        table: ResourceTable::new(),
        limits: Limiter { memory: 0, memory_cap: memory_bytes, table_elements: 0 },
        clock: CallClock::new(timeout),
        lookups: lookups.clone(),
        tables: spec.tables.clone(),
        state: state.calls(&spec.limits),
    };
    let mut store = Store::new(engine.wasmtime(), state);
    store.limiter(|state| &mut state.limits);
    // At the deadline in ticks, the deadline in the plugin's own time:
    // extended by the time the host spent on its lookups.
    store.epoch_deadline_callback(|store| {
        let left = store.data().clock.left();
        Ok(if left.is_zero() {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Continue(Engine::deadline_ticks(left))
        })
    });
    arm(&mut store, timeout);
    let failed = |source: wasmtime::Error| StageError::Instantiate { stage: spec.name.to_string(), source };
    let instance = pre.instantiate(&mut store).map_err(failed)?;
    Ok((store, instance))
}

/// A fresh instance, initialised with the stage's config and encodings,
/// and its `process`.
fn instantiate(
    engine: &Engine,
    pre: &Pre,
    spec: &StageSpec,
    lookups: &Arc<dyn LookupSource>,
    state: &StateScope,
) -> Result<(Store<StageState>, Func), StageError> {
    let (mut store, instance) = fresh(engine, pre.instance_pre(), spec, lookups, state)?;
    let timeout = Duration::from_millis(spec.limits.timeout_ms.get());
    let stage = spec.name.to_string();
    let failed = |source: wasmtime::Error| StageError::Instantiate { stage: stage.clone(), source };
    let process = match pre {
        Pre::V5(_) => *instance
            .get_typed_func::<(&v0_5::Batch,), (packed::Results,)>(&mut store, PROCESS_PACKED_EXPORT)
            .map_err(failed)?
            .func(),
        Pre::V6(_) => *instance
            .get_typed_func::<(&v0_6::Batch,), (tables::Results,)>(&mut store, PROCESS_TABLES_EXPORT)
            .map_err(failed)?
            .func(),
        _ => *instance.get_typed_func::<(&[Message],), lift::Results>(&mut store, "process").map_err(failed)?.func(),
    };
    let encodings =
        v0_3::Encodings { input: wit_encoding(spec.encodings.input), output: wit_encoding(spec.encodings.output) };
    let init = match pre {
        Pre::V1(_) => Transform::new(&mut store, &instance).map_err(failed)?.call_init(&mut store, &spec.config_json),
        Pre::V3(_) => {
            let transform = v0_3::Transform::new(&mut store, &instance).map_err(failed)?;
            transform.call_init(&mut store, &spec.config_json, encodings)
        }
        Pre::V5(_) => {
            let transform = v0_5::Transform::new(&mut store, &instance).map_err(failed)?;
            transform.call_init(&mut store, &spec.config_json, encodings)
        }
        Pre::V6(_) => {
            let transform = v0_6::Transform::new(&mut store, &instance).map_err(failed)?;
            transform.call_init(&mut store, &spec.config_json, encodings)
        }
    };
    if store.data().clock.cut {
        let message = format!("init did not finish within its deadline of {} ms", timeout.as_millis());
        return Err(StageError::Init { stage, error: message });
    }
    match init {
        Ok(Ok(())) => Ok((store, process)),
        Ok(Err(error)) => Err(StageError::Init { stage, error }),
        Err(e) => {
            let mut message = match classify(&e, timeout) {
                CallError::Plugin { reason: PluginFailure::Timeout, .. } => {
                    format!("init did not finish within its deadline of {} ms", timeout.as_millis())
                }
                _ => format!("init trapped: {e:#}"),
            };
            with_output(&mut message, store.data());
            Err(StageError::Init { stage, error: message })
        }
    }
}

/// The contract's name of an encoding.
fn wit_encoding(encoding: Encoding) -> v0_3::Encoding {
    match encoding {
        Encoding::Json => v0_3::Encoding::Json,
        Encoding::Binary => v0_3::Encoding::Binary,
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
    let [stdout, stderr, log] = &state.output;
    let mut lines = stderr.take_recent();
    lines.extend(stdout.take_recent());
    lines.extend(log.take_recent());
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

fn timed_out(timeout: Duration) -> CallError {
    CallError::Plugin {
        reason: PluginFailure::Timeout,
        message: format!("the call did not finish within its deadline of {} ms", timeout.as_millis()),
    }
}

fn classify(error: &wasmtime::Error, timeout: Duration) -> CallError {
    if let Some(unavailable) = error.downcast_ref::<Unavailable>() {
        return CallError::Unavailable(unavailable.clone());
    }
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return timed_out(timeout);
    }
    if let Some(limit) = error.downcast_ref::<LimitExceeded>() {
        return CallError::Plugin { reason: PluginFailure::OutOfMemory, message: limit.to_string() };
    }
    if let Some(over) = error.downcast_ref::<OverBudget>() {
        return CallError::Plugin { reason: PluginFailure::OutputLimit, message: over.to_string() };
    }
    if let Some(malformed) = error.downcast_ref::<Malformed>() {
        let message = malformed.to_string().chars().take(MAX_MESSAGE).collect();
        return CallError::Plugin { reason: PluginFailure::Contract, message };
    }
    let reason = PluginFailure::Trap;
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

/// A plugin's reason code, if it is one (see
/// [`Reason::is_valid_own_code`]; it becomes a header value and a metric
/// label). Anything else breaks the plugin contract: `plugin_contract`, with
/// the code given in the message.
fn checked_reason(outcome: Outcome) -> Outcome {
    let (Outcome::Reject(info) | Outcome::Retry(info)) = &outcome else { return outcome };
    let code = &info.reason;
    if Reason::is_valid_own_code(code, MAX_REASON) {
        return outcome;
    }
    let shown: String = code.chars().take(MAX_REASON).collect();
    Outcome::Reject(ErrorInfo {
        reason: PluginFailure::Contract.as_str().into(),
        message: format!(
            "reason code {shown:?} is not snake_case of at most {MAX_REASON} characters outside the host's own \
             codes; the plugin's message: {}",
            info.message
        ),
    })
}
