//! The stage chain: records in, outputs, dead letters and Redis effects out.
//!
//! A batch goes through the stages in order, each stage called once per
//! batch. What a stage emits without a route feeds the next stage; after the
//! last stage it goes to the default output. Results are all-or-nothing per
//! input record: a record that any stage rejects yields exactly one dead
//! letter (the record as received) and none of its outputs or effects.
//!
//! Every output and dead letter carries its provenance: `sluice.lineage`
//! lists `stage@version` (the first 12 hex digits of the component's
//! sha256) for the stages it went through, and `sluice.generation` the
//! pipeline generation (1 at start, +1 per applied reload).

mod canary;
mod lift;
mod output;
mod stage;

pub use canary::{CanaryDiff, CanaryStats};
pub use stage::{LookupSource, Row, Stage, StageError, StageSpec, StageState, Unavailable, Writes, linker};

use crate::bindings::{self, ErrorInfo, Message, Outcome};
use crate::config::{self, FailurePolicy};
use crate::engine::{Engine, LoadError};
use crate::record::{Effect, Header, Produce, Record};
use canary::Canary;
use stage::CallError;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use wasmtime::component::Linker;

/// A record that could not be processed.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The index of the input record in its batch.
    pub origin: usize,
    /// The stage that gave up on it.
    pub stage: Arc<str>,
    /// The reason code.
    pub reason: String,
    /// The dead-letter record: the input as received plus error headers.
    pub record: Produce,
}

/// Header naming the `stage@version` of every stage a record went through.
pub const LINEAGE_HEADER: &str = "sluice.lineage";
/// Header giving the generation of the pipeline that produced a record.
pub const GENERATION_HEADER: &str = "sluice.generation";

/// Records handled by one stage in one batch.
#[derive(Debug, Clone, Default)]
pub struct StageStats {
    /// The stage.
    pub name: Arc<str>,
    /// Records passed in.
    pub records_in: u64,
    /// Records emitted (to the next stage or an output).
    pub emitted: u64,
    /// Records filtered.
    pub filtered: u64,
    /// Records rejected (after retries).
    pub rejected: u64,
    /// Time spent in the stage.
    pub elapsed: Duration,
    /// Linear memory of the stage's instance after the batch.
    pub memory_bytes: u64,
}

/// Everything a batch produced.
#[derive(Debug, Default)]
pub struct BatchResult {
    /// Records for the default output and named routes, in input order.
    pub outputs: Vec<Produce>,
    /// `output_origins[i]`: the index of the input record of `outputs[i]`.
    pub output_origins: Vec<usize>,
    /// Dead letters, at most one per input record.
    pub dead_letters: Vec<DeadLetter>,
    /// Redis effects of the records that were not dead-lettered, each with
    /// the index of its input record.
    pub effects: Vec<(usize, Effect)>,
    /// `effect_stages[i]`: the index of the stage that emitted `effects[i]`.
    pub effect_stages: Vec<usize>,
    /// Input records that produced neither output nor dead letter.
    pub filtered: u64,
    /// Input records that produced at least one output. With `filtered` and
    /// the dead letters, accounts for every input record exactly once.
    pub completed: u64,
    /// Per stage, in chain order.
    pub stages: Vec<StageStats>,
}

/// Why a chain could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// A plugin file could not be loaded.
    Load(LoadError),
    /// A stage could not be set up.
    Stage(StageError),
    /// The linker could not be built.
    Linker(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Load(e) => e.fmt(f),
            Self::Stage(e) => e.fmt(f),
            Self::Linker(e) => write!(f, "cannot link the host interface: {e}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// The live chain of stages and where its results go.
pub struct Chain {
    stages: Vec<Stage>,
    canaries: Vec<Option<Canary>>,
    output: Arc<str>,
    dead_letter: Arc<str>,
    routes: HashMap<String, Arc<str>>,
    generation: u64,
    /// `lineage[i]`: the lineage header of a record that went through
    /// stages `0..=i`.
    lineage: Vec<Vec<u8>>,
    /// Whether a route missing from `routes` goes to the topic of its name
    /// (`sluice test` of a single plugin) instead of being rejected.
    open_routes: bool,
    /// The largest record the producer writes (`message.max.bytes`).
    max_record_bytes: usize,
    /// The largest input record the chain takes (`source.max_record_bytes`).
    max_input_bytes: usize,
}

/// The `sluice.error.stage` of a record the host rejects before any stage
/// sees it (`record_too_large`).
pub const SOURCE_STAGE: &str = "source";

/// Bytes a record takes beyond its key, value and headers, counted towards
/// `message.max.bytes` (the record's and its batch's framing), with room to
/// spare.
const RECORD_OVERHEAD: usize = 256;

/// The size of a record as the producer counts it, framing included.
fn record_size(produce: &Produce) -> usize {
    let headers: usize = produce.headers.iter().map(|h| h.name.len() + h.value.len() + 8).sum();
    produce.key.as_ref().map_or(0, Vec::len) + produce.value.len() + headers + RECORD_OVERHEAD
}

impl Chain {
    /// Loads, type-checks, instantiates and initialises every stage (and
    /// every canary). The chain is generation 1.
    pub fn build(
        engine: &Engine,
        pipeline: &config::Pipeline,
        lookups: Arc<dyn LookupSource>,
    ) -> Result<Self, BuildError> {
        let config = &pipeline.config;
        let mut engines: HashMap<usize, (Engine, Linker<StageState>)> = HashMap::new();
        let mut stages = Vec::with_capacity(config.stages.len());
        let mut canaries = Vec::with_capacity(config.stages.len());
        let protected = config.protected_prefixes();
        for stage in &config.stages {
            let stack = stage.limits.stack_kib.get() as usize * 1024;
            if let Entry::Vacant(e) = engines.entry(stack) {
                let engine = engine.with_stack(stack).map_err(|e| BuildError::Linker(format!("{e:#}")))?;
                let linker = linker(&engine).map_err(|e| BuildError::Linker(format!("{e:#}")))?;
                e.insert((engine, linker));
            }
            let (engine, linker) = &engines[&stack];
            let spec = |name: &str, plugin: &std::path::Path| -> Result<StageSpec, BuildError> {
                Ok(StageSpec {
                    name: Arc::from(name),
                    component: engine.load(&pipeline.base_dir.join(plugin)).map_err(BuildError::Load)?,
                    config_json: serde_json::to_string(&stage.config).expect("a TOML table is valid JSON"),
                    tables: stage.lookups.iter().map(|t| t.get_ref().clone()).collect(),
                    limits: stage.limits.clone(),
                    writes: Writes {
                        allowed: stage.writes.iter().map(|w| w.get_ref().clone()).collect(),
                        protected: protected.clone(),
                    },
                    on_failure: stage.on_failure,
                    loaded_at: SystemTime::now(),
                })
            };
            let live = spec(stage.name.get_ref(), &stage.plugin)?;
            stages.push(Stage::new(engine, linker, Arc::new(live), lookups.clone()).map_err(BuildError::Stage)?);
            canaries.push(match &stage.canary {
                None => None,
                Some(c) => {
                    let candidate = spec(&format!("{}.canary", stage.name.get_ref()), &c.plugin)?;
                    let candidate =
                        Stage::new(engine, linker, Arc::new(candidate), lookups.clone()).map_err(BuildError::Stage)?;
                    Some(Canary::new(candidate, c.sample))
                }
            });
        }
        let mut lineage: Vec<Vec<u8>> = Vec::with_capacity(stages.len());
        for stage in &stages {
            let mut line = lineage.last().cloned().map(|mut l| {
                l.push(b',');
                l
            });
            let entry = format!("{}@{}", stage.name(), stage.spec().component.version());
            line.get_or_insert_with(Vec::new).extend_from_slice(entry.as_bytes());
            lineage.push(line.expect("set above"));
        }
        Ok(Self {
            stages,
            canaries,
            output: Arc::from(config.output.topic.as_str()),
            dead_letter: Arc::from(config.dead_letter.topic.as_str()),
            routes: config.routes.iter().map(|(name, r)| (name.clone(), Arc::from(r.topic.as_str()))).collect(),
            generation: 1,
            lineage,
            open_routes: false,
            max_record_bytes: config.kafka.message_max_bytes(),
            max_input_bytes: config.source.max_record_bytes.get(),
        })
    }

    /// Sends records with a route missing from `[routes]` to the topic of
    /// the route's name instead of rejecting them (for testing a plugin on
    /// its own).
    pub fn open_routes(&mut self) {
        self.open_routes = true;
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// The stages, in order, to drive them directly (benchmarks).
    pub fn stages_mut(&mut self) -> &mut [Stage] {
        &mut self.stages
    }

    /// The canary statistics of the stage at `index`, if it has a canary.
    pub fn canary_stats(&self, index: usize) -> Option<Arc<std::sync::Mutex<CanaryStats>>> {
        self.canaries.get(index)?.as_ref().map(Canary::stats)
    }

    /// The canary stage of the stage at `index`, if any.
    pub fn canary(&self, index: usize) -> Option<&Stage> {
        self.canaries.get(index)?.as_ref().map(Canary::stage)
    }

    /// The pipeline generation written in the `sluice.generation` header.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Sets the pipeline generation.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Takes over from `old` the instances of the stages (and canaries) that
    /// did not change, so that a reload keeps their state, their warm
    /// instance and their canary statistics; `old` gets the fresh ones.
    pub fn adopt_unchanged(&mut self, old: &mut Chain) {
        let mut taken = vec![false; old.stages.len()];
        for (i, stage) in self.stages.iter_mut().enumerate() {
            let found = (0..old.stages.len()).find(|&j| !taken[j] && old.stages[j].spec().same_as(stage.spec()));
            let Some(j) = found else { continue };
            taken[j] = true;
            std::mem::swap(stage, &mut old.stages[j]);
            let same_canary = match (&self.canaries[i], &old.canaries[j]) {
                (Some(new), Some(old)) => new.same_as(old),
                _ => false,
            };
            if same_canary {
                std::mem::swap(&mut self.canaries[i], &mut old.canaries[j]);
            }
        }
    }

    /// Runs `records` through a chain that is not live yet, and fails if a
    /// stage traps, times out or runs out of memory on any of them, or if a
    /// lookup cannot be served. Canaries are not run; every instance is
    /// recreated afterwards, so the probe leaves no state behind.
    pub fn probe(&mut self, records: &[Record]) -> Result<(), String> {
        let result = self.run(records, false).map_err(|e| format!("the probe run could not finish: {e}"));
        for stage in &mut self.stages {
            stage.reset().map_err(|e| e.to_string())?;
        }
        for dead in &result?.dead_letters {
            if dead.reason.starts_with("plugin_") {
                let header = |name: &str| {
                    let h = dead.record.headers.iter().rev().find(|h| h.name == name);
                    h.map(|h| String::from_utf8_lossy(&h.value).into_owned()).unwrap_or_default()
                };
                return Err(format!(
                    "stage `{}` failed the probe run ({}) on the record at partition {} offset {}: {}",
                    dead.stage,
                    dead.reason,
                    header("sluice.source.partition"),
                    header("sluice.source.offset"),
                    header("sluice.error.message")
                ));
            }
        }
        Ok(())
    }

    /// Runs a batch through the chain. Fails only when a lookup could not
    /// be served; the batch can then be processed again from the start.
    pub fn process(&mut self, records: &[Record]) -> Result<BatchResult, Unavailable> {
        self.run(records, true)
    }

    fn run(&mut self, records: &[Record], with_canaries: bool) -> Result<BatchResult, Unavailable> {
        // `rejected[i]`: the stage that rejected record `i` (`None`: the
        // host, before any stage) and why.
        let mut rejected: Vec<Option<(Option<usize>, ErrorInfo)>> = vec![None; records.len()];
        let mut origins: Vec<usize> = Vec::with_capacity(records.len());
        let mut batch: Vec<Message> = Vec::with_capacity(records.len());
        for (origin, record) in records.iter().enumerate() {
            let size = record.size();
            if size > self.max_input_bytes {
                let message =
                    format!("the record is {size} bytes, more than source.max_record_bytes ({})", self.max_input_bytes);
                rejected[origin] = Some((None, ErrorInfo { reason: "record_too_large".into(), message }));
                continue;
            }
            origins.push(origin);
            batch.push(first_message(record));
        }
        let mut outputs: Vec<(usize, usize, Produce)> = Vec::new();
        let mut effects: Vec<(usize, usize, bindings::Effect)> = Vec::new();
        let mut stats = Vec::with_capacity(self.stages.len());
        let last = self.stages.len() - 1;
        for (index, stage) in self.stages.iter_mut().enumerate() {
            let started = Instant::now();
            let outcomes = run_stage(stage, &batch)?;
            if with_canaries && let Some(canary) = &mut self.canaries[index] {
                canary.shadow(&batch, &outcomes);
            }
            let mut st =
                StageStats { name: stage.name().clone(), records_in: batch.len() as u64, ..StageStats::default() };
            let mut next_origins = Vec::with_capacity(batch.len());
            let mut next = Vec::with_capacity(batch.len());
            for ((origin, input), outcome) in origins.iter().zip(&batch).zip(outcomes) {
                let origin = *origin;
                let outcome = within_limits(stage.spec(), outcome);
                match outcome {
                    Outcome::Emit((emitted, stage_effects)) => {
                        st.emitted += emitted.len() as u64;
                        effects.extend(stage_effects.into_iter().map(|e| (origin, index, e)));
                        for out in emitted {
                            let topic = match &out.route {
                                None if index < last => {
                                    next_origins.push(origin);
                                    next.push(Message {
                                        key: out.key,
                                        value: out.value,
                                        headers: out.headers,
                                        ..source_of(input)
                                    });
                                    continue;
                                }
                                None => self.output.clone(),
                                Some(route) => match self.routes.get(route) {
                                    Some(topic) => topic.clone(),
                                    None if self.open_routes => Arc::from(route.as_str()),
                                    None => {
                                        let info = ErrorInfo {
                                            reason: "unknown_route".into(),
                                            message: format!("route `{route}` is not declared in [routes]"),
                                        };
                                        rejected[origin].get_or_insert((Some(index), info));
                                        continue;
                                    }
                                },
                            };
                            let headers = out.headers.into_iter().map(from_guest_header).collect();
                            let produce = Produce { topic, key: out.key, value: out.value, headers };
                            let size = record_size(&produce);
                            if size > self.max_record_bytes {
                                let info = ErrorInfo {
                                    reason: "output_too_large".into(),
                                    message: format!(
                                        "an output to `{}` of {size} bytes is larger than the producer's \
                                         message.max.bytes ({})",
                                        produce.topic, self.max_record_bytes
                                    ),
                                };
                                rejected[origin].get_or_insert((Some(index), info));
                                continue;
                            }
                            outputs.push((origin, index, produce));
                        }
                    }
                    Outcome::Filtered => st.filtered += 1,
                    Outcome::Reject(info) | Outcome::Retry(info) => {
                        st.rejected += 1;
                        rejected[origin].get_or_insert((Some(index), info));
                    }
                }
            }
            st.elapsed = started.elapsed();
            st.memory_bytes = stage.memory_bytes() as u64;
            stats.push(st);
            origins = next_origins;
            batch = next;
        }

        let mut result = BatchResult { stages: stats, ..BatchResult::default() };
        let mut has_output = vec![false; records.len()];
        let generation = self.generation.to_string().into_bytes();
        let provenance = |headers: &mut Vec<Header>, index: usize| {
            headers.push(Header { name: LINEAGE_HEADER.into(), value: self.lineage[index].clone() });
            headers.push(Header { name: GENERATION_HEADER.into(), value: generation.clone() });
        };
        for (origin, index, mut produce) in outputs {
            if rejected[origin].is_none() {
                has_output[origin] = true;
                provenance(&mut produce.headers, index);
                result.outputs.push(produce);
                result.output_origins.push(origin);
            }
        }
        for (origin, stage, effect) in effects {
            if rejected[origin].is_none() {
                result.effects.push((origin, from_guest_effect(effect)));
                result.effect_stages.push(stage);
            }
        }
        for (origin, record) in records.iter().enumerate() {
            match &rejected[origin] {
                Some((index, info)) => result.dead_letters.push(self.dead_letter(record, origin, *index, info)),
                None if !has_output[origin] => result.filtered += 1,
                None => result.completed += 1,
            }
        }
        Ok(result)
    }

    /// The dead letter of `record` (at `origin` in its batch), rejected by
    /// the stage at `index` (`None`: by the host, before any stage).
    fn dead_letter(&self, record: &Record, origin: usize, index: Option<usize>, info: &ErrorInfo) -> DeadLetter {
        let stage = match index {
            Some(i) => self.stages[i].name().clone(),
            None => Arc::from(SOURCE_STAGE),
        };
        let mut dead = dead_letter_record(&self.dead_letter, record, &stage, info);
        if let Some(i) = index {
            dead.headers.push(Header { name: LINEAGE_HEADER.into(), value: self.lineage[i].clone() });
        }
        let generation = self.generation.to_string().into_bytes();
        dead.headers.push(Header { name: GENERATION_HEADER.into(), value: generation });
        truncate_to_fit(&mut dead, self.max_record_bytes);
        DeadLetter { origin, stage, reason: info.reason.clone(), record: dead }
    }

    /// Rejects, after the fact, the record at `origin` of a processed batch
    /// (its effects were refused): drops its outputs and effects and adds
    /// its dead letter, given by the stage at `stage`.
    pub fn reject(&self, result: &mut BatchResult, records: &[Record], origin: usize, stage: usize, info: &ErrorInfo) {
        if result.dead_letters.iter().any(|d| d.origin == origin) {
            return;
        }
        let before = result.outputs.len();
        let mut keep = result.output_origins.iter().map(|&o| o != origin);
        result.outputs.retain(|_| keep.next().expect("one origin per output"));
        result.output_origins.retain(|&o| o != origin);
        if result.outputs.len() < before {
            result.completed -= 1;
        } else {
            result.filtered -= 1;
        }
        let mut keep = result.effects.iter().map(|(o, _)| *o != origin).collect::<Vec<_>>().into_iter();
        result.effect_stages.retain(|_| keep.next().expect("one stage per effect"));
        result.effects.retain(|(o, _)| *o != origin);
        let dead = self.dead_letter(&records[origin], origin, Some(stage.min(self.stages.len() - 1)), info);
        let at = result.dead_letters.partition_point(|d| d.origin < origin);
        result.dead_letters.insert(at, dead);
    }
}

/// The stage boundary, inward: a header a stage emitted.
fn from_guest_header(header: bindings::Header) -> Header {
    Header { name: header.name, value: header.value }
}

/// The stage boundary, inward: an effect a stage emitted.
fn from_guest_effect(effect: bindings::Effect) -> Effect {
    match effect {
        bindings::Effect::HashIncr((key, field, delta)) => Effect::HashIncr { key, field, delta },
        bindings::Effect::HashSet((key, field, value)) => Effect::HashSet { key, field, value },
    }
}

/// The outcome, or a rejection if it emits more records or effects than the
/// stage's limits allow (`plugin_output_limit`) or writes a key the stage
/// may not write (`effect_denied`).
fn within_limits(spec: &StageSpec, outcome: Outcome) -> Outcome {
    let Outcome::Emit((outputs, effects)) = &outcome else { return outcome };
    let limits = &spec.limits;
    let reject = |reason: &str, message: String| Outcome::Reject(ErrorInfo { reason: reason.into(), message });
    if outputs.len() > limits.max_outputs.get() as usize {
        let message =
            format!("{} outputs for one record, more than limits.max_outputs = {}", outputs.len(), limits.max_outputs);
        return reject("plugin_output_limit", message);
    }
    if effects.len() > limits.max_effects.get() as usize {
        let message =
            format!("{} effects for one record, more than limits.max_effects = {}", effects.len(), limits.max_effects);
        return reject("plugin_output_limit", message);
    }
    for effect in effects {
        let (bindings::Effect::HashIncr((key, ..)) | bindings::Effect::HashSet((key, ..))) = effect;
        if let Err(why) = spec.writes.check(key) {
            return reject("effect_denied", why);
        }
    }
    outcome
}

/// The stage boundary, outward: the message the first stage receives for
/// `record`.
pub fn first_message(record: &Record) -> Message {
    Message {
        key: record.key.clone(),
        value: record.value.clone().unwrap_or_default(),
        headers: record
            .headers
            .iter()
            .map(|h| bindings::Header { name: h.name.clone(), value: h.value.clone() })
            .collect(),
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
    }
}

/// The source coordinates of a message, for the message a stage derives from it.
fn source_of(input: &Message) -> Message {
    Message {
        key: None,
        value: Vec::new(),
        headers: Vec::new(),
        topic: input.topic.clone(),
        partition: input.partition,
        offset: input.offset,
        timestamp_ms: input.timestamp_ms,
    }
}

/// The dead-letter record of `record`: key, value and headers as received,
/// plus the `sluice.error.*` and `sluice.source.*` headers.
pub fn dead_letter_record(topic: &Arc<str>, record: &Record, stage: &str, info: &ErrorInfo) -> Produce {
    let mut headers = record.headers.clone();
    let mut add = |name: &str, value: String| headers.push(Header { name: name.into(), value: value.into_bytes() });
    add("sluice.error.stage", stage.to_string());
    add("sluice.error.reason", info.reason.clone());
    add("sluice.error.message", info.message.clone());
    add("sluice.source.topic", record.topic.clone());
    add("sluice.source.partition", record.partition.to_string());
    add("sluice.source.offset", record.offset.to_string());
    Produce { topic: topic.clone(), key: record.key.clone(), value: record.value.clone().unwrap_or_default(), headers }
}

/// Header of a dead letter whose value was cut to fit `message.max.bytes`:
/// the original value's length in bytes.
pub const TRUNCATED_HEADER: &str = "sluice.error.truncated";

/// Cuts the value of a dead letter that would be too large to write (an
/// input near the limit, plus the error headers), so that the record is
/// dead-lettered rather than wedging the pipeline, and says so in a header.
fn truncate_to_fit(dead: &mut Produce, max: usize) {
    let size = record_size(dead);
    if size <= max {
        return;
    }
    let original = dead.value.len();
    let header = Header { name: TRUNCATED_HEADER.into(), value: original.to_string().into_bytes() };
    let room = original.saturating_sub(size - max + header.name.len() + header.value.len() + 8);
    dead.value.truncate(room);
    dead.headers.push(header);
}

/// Calls a stage, then retries the records it asked to retry, with backoff,
/// up to the stage's `max_retries`.
fn run_stage(stage: &mut Stage, batch: &[Message]) -> Result<Vec<Outcome>, Unavailable> {
    let mut outcomes = call_isolating(stage, batch)?;
    for attempt in 0..stage.spec().limits.max_retries {
        let retry: Vec<usize> = (0..outcomes.len()).filter(|&i| matches!(outcomes[i], Outcome::Retry(_))).collect();
        if retry.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50) * 2u32.pow(attempt.min(6)));
        let again: Vec<Message> = retry.iter().map(|&i| batch[i].clone()).collect();
        for (i, outcome) in retry.into_iter().zip(call_isolating(stage, &again)?) {
            outcomes[i] = outcome;
        }
    }
    Ok(outcomes)
}

/// Calls a stage; when the call fails for the plugin's sake (trap, deadline,
/// memory), calls it again record by record so that only the records that
/// make it fail are rejected.
fn call_isolating(stage: &mut Stage, batch: &[Message]) -> Result<Vec<Outcome>, Unavailable> {
    if let Some(until) = stage.breaker_open_until() {
        let wait = until.saturating_duration_since(std::time::Instant::now()).as_millis();
        let message = format!("stage `{}` keeps failing; its circuit breaker is open for {wait} ms more", stage.name());
        return match stage.spec().on_failure {
            FailurePolicy::DeadLetter => Ok(batch
                .iter()
                .map(|_| Outcome::Reject(ErrorInfo { reason: "circuit_open".into(), message: message.clone() }))
                .collect()),
            FailurePolicy::Halt => Err(Unavailable(message)),
        };
    }
    match stage.call(batch) {
        Ok(outcomes) => Ok(outcomes),
        Err(CallError::Unavailable(e)) => Err(e),
        Err(CallError::Plugin { reason, message }) if batch.len() == 1 => {
            tracing::warn!(stage = %stage.name(), reason, offset = batch[0].offset, error = %message, "plugin failed on a record");
            Ok(vec![Outcome::Reject(ErrorInfo { reason: reason.into(), message })])
        }
        Err(CallError::Plugin { reason, message }) => {
            tracing::warn!(stage = %stage.name(), reason, records = batch.len(), error = %message, "plugin failed on a batch; retrying record by record");
            let mut outcomes = Vec::with_capacity(batch.len());
            for one in batch.chunks(1) {
                outcomes.extend(call_isolating(stage, one)?);
            }
            Ok(outcomes)
        }
    }
}
