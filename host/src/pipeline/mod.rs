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
mod dead_letter;
mod lift;
mod output;
mod packed;
mod reason;
mod route;
mod sandbox;
mod stage;
mod tables;
pub mod values;

pub use canary::{CanaryDiff, CanaryStats};
pub use dead_letter::{DeadLetter, GENERATION_HEADER, LINEAGE_HEADER, Letters, SOURCE_STAGE, TRUNCATED_HEADER};
pub use reason::{HostRefusal, PluginFailure, Reason};
pub use route::{Destination, Routes, Target};
pub use sandbox::{LimitExceeded, MAX_TABLE_ELEMENTS, StageState, linker};
pub use stage::{Stage, StageError, StageSpec, StateScope, Writes};

use crate::bindings::{self, ErrorInfo, Message, Outcome};
use crate::config::{self, FailurePolicy};
use crate::engine::{Engine, LoadError};
use crate::lookup::{LookupSource, Unavailable};
use crate::record::{Effect, Header, Produce, Record, Row};
use crate::state::{StateStore, StateWrite};
use canary::Canary;
use dead_letter::record_size;
use stage::CallError;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use wasmtime::component::Linker;

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
    /// Rows for PostgreSQL tables, of the records that were not
    /// dead-lettered: (input record index, stage index, row).
    pub rows: Vec<(usize, usize, Row)>,
    /// Redis effects of the records that were not dead-lettered, each with
    /// the index of its input record.
    pub effects: Vec<(usize, Effect)>,
    /// `effect_stages[i]`: the index of the stage that emitted `effects[i]`.
    pub effect_stages: Vec<usize>,
    /// The writes to stages' keyed state, in order, made durable with the
    /// batch.
    pub state_writes: Vec<StateWrite>,
    /// The dead letters of the chain that processed the batch (for
    /// [`BatchResult::reject`]).
    pub letters: Option<Arc<Letters>>,
    /// Input records that produced neither output nor dead letter.
    pub filtered: u64,
    /// Input records that produced at least one output. With `filtered` and
    /// the dead letters, accounts for every input record exactly once.
    pub completed: u64,
    /// Per stage, in chain order.
    pub stages: Vec<StageStats>,
}

impl BatchResult {
    /// Rejects, after the fact, the record at `origin` of `records` (its
    /// effects or rows were refused): drops its outputs, rows and effects and adds its
    /// dead letter, given by the stage at `stage` of the chain that
    /// processed the batch.
    pub fn reject(&mut self, records: &[Record], origin: usize, stage: usize, info: &ErrorInfo) {
        if self.dead_letters.iter().any(|d| d.origin == origin) {
            return;
        }
        let letters = self.letters.clone().expect("a processed batch knows its chain's dead letters");
        let before = self.outputs.len() + self.rows.len();
        let mut keep = self.output_origins.iter().map(|&o| o != origin);
        self.outputs.retain(|_| keep.next().expect("one origin per output"));
        self.output_origins.retain(|&o| o != origin);
        self.rows.retain(|(o, _, _)| *o != origin);
        if self.outputs.len() + self.rows.len() < before {
            self.completed -= 1;
        } else {
            self.filtered -= 1;
        }
        let mut keep = self.effects.iter().map(|(o, _)| *o != origin).collect::<Vec<_>>().into_iter();
        self.effect_stages.retain(|_| keep.next().expect("one stage per effect"));
        self.effects.retain(|(o, _)| *o != origin);
        let dead = letters.letter(&records[origin], origin, Some(stage.min(letters.stages.len() - 1)), info);
        let at = self.dead_letters.partition_point(|d| d.origin < origin);
        self.dead_letters.insert(at, dead);
    }

    /// Rejects, after the fact, the record at `origin` of `records`, one of
    /// whose outputs the broker refused for good: as [`BatchResult::reject`],
    /// in the name of the chain's last stage. Returns its dead letter.
    pub fn refuse_output(
        &mut self,
        records: &[Record],
        origin: usize,
        refusal: HostRefusal,
        message: String,
    ) -> &Produce {
        let last = self.letters.as_ref().map_or(0, |l| l.stages.len().saturating_sub(1));
        self.reject(records, origin, last, &ErrorInfo { reason: refusal.as_str().into(), message });
        let at = self.dead_letters.partition_point(|d| d.origin < origin);
        &self.dead_letters[at].record
    }
}

/// Why a chain could not be built: the plugin's or the stage's error as it
/// is (its message and its source), or the host interface's.
#[derive(Debug)]
pub enum BuildError {
    /// A plugin file could not be loaded.
    Load(LoadError),
    /// A stage could not be set up.
    Stage(StageError),
    /// The linker could not be built.
    Linker(anyhow::Error),
    /// Neighbouring stages declare different value types.
    Values(values::Mismatch),
    /// A canary reads or writes other values than its stage.
    Canary {
        /// The stage.
        stage: String,
        /// What differs.
        why: String,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Load(e) => e.fmt(f),
            Self::Stage(e) => e.fmt(f),
            Self::Linker(_) => f.write_str("cannot link the host interface"),
            Self::Values(e) => e.fmt(f),
            Self::Canary { stage, why } => {
                write!(f, "the canary of stage `{stage}` cannot stand in for it: {why}")
            }
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Load(e) => e.source(),
            Self::Stage(e) => e.source(),
            Self::Linker(e) => Some(e.as_ref()),
            Self::Values(_) | Self::Canary { .. } => None,
        }
    }
}

/// The live chain of stages and where its results go.
pub struct Chain {
    stages: Vec<Stage>,
    canaries: Vec<Option<Canary>>,
    /// Where its outputs go.
    routes: Routes,
    /// Where its dead letters go, with its lineage and generation.
    letters: Arc<Letters>,
    /// The largest input record the chain takes (`source.max_record_bytes`).
    max_input_bytes: usize,
    /// The stages' keyed state.
    state: Arc<StateStore>,
    /// Whether any stage imports keyed state.
    uses_state: bool,
}

impl Chain {
    /// Loads, type-checks, instantiates and initialises every stage (and
    /// every canary). The chain is generation 1.
    pub fn build(
        engine: &Engine,
        pipeline: &config::Pipeline,
        lookups: Arc<dyn LookupSource>,
        state: Arc<StateStore>,
    ) -> Result<Self, BuildError> {
        let config = &pipeline.config;
        let mut engines: HashMap<usize, (Engine, Linker<StageState>)> = HashMap::new();
        // Every stage's (and canary's) spec, and what it declares it reads
        // and writes, before any instance is initialised: the encodings
        // `init` is given depend on the neighbours.
        let mut planned = Vec::with_capacity(config.stages.len());
        let protected = config.protected_prefixes();
        for stage in &config.stages {
            let stack = stage.limits.stack_kib.get() as usize * 1024;
            if let Entry::Vacant(e) = engines.entry(stack) {
                let engine = engine.with_stack(stack).map_err(BuildError::Linker)?;
                let linker = linker(&engine).map_err(|e| BuildError::Linker(e.into()))?;
                e.insert((engine, linker));
            }
            let (engine, linker) = &engines[&stack];
            let spec = |name: &str, plugin: &std::path::Path| -> Result<StageSpec, BuildError> {
                Ok(StageSpec {
                    name: Arc::from(name),
                    component: engine.load(&pipeline.base_dir.join(plugin)).map_err(BuildError::Load)?,
                    config_json: serde_json::to_string(&stage.config).expect("a TOML table is valid JSON"),
                    encodings: values::Encodings::default(),
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
            let scope = StateScope { store: state.clone(), stage: live.name.clone(), keep: true };
            let shadow = StateScope { keep: false, ..scope.clone() };
            let declared = stage::describe(engine, linker, &live, &lookups, &scope).map_err(BuildError::Stage)?;
            let candidate = match &stage.canary {
                None => None,
                Some(c) => {
                    let candidate = spec(&format!("{}.canary", stage.name.get_ref()), &c.plugin)?;
                    let declared =
                        stage::describe(engine, linker, &candidate, &lookups, &shadow).map_err(BuildError::Stage)?;
                    Some((candidate, declared, c.sample))
                }
            };
            planned.push((live, declared, scope, candidate, shadow, stack));
        }
        // A stage with a canary writes JSON for the next stage, so that the
        // diffs between the two versions can be read.
        let readable: Vec<Option<values::Declared>> = planned
            .iter()
            .map(|(_, declared, _, candidate, ..)| match (declared, candidate) {
                (Some(d), Some(_)) => {
                    Some(values::Declared { output: d.output.clone().map(values::ValueType::text), ..d.clone() })
                }
                (declared, _) => declared.clone(),
            })
            .collect();
        let declared: Vec<_> = planned.iter().zip(&readable).map(|(p, d)| (&*p.0.name, d.as_ref())).collect();
        let encodings = values::negotiate(&declared).map_err(BuildError::Values)?;
        let mut stages = Vec::with_capacity(planned.len());
        let mut canaries = Vec::with_capacity(planned.len());
        for ((mut live, declared, scope, candidate, shadow, stack), encodings) in planned.into_iter().zip(encodings) {
            let (engine, linker) = &engines[&stack];
            if let Some((_, theirs, _)) = &candidate {
                values::fits(theirs.as_ref(), declared.as_ref(), encodings)
                    .map_err(|why| BuildError::Canary { stage: live.name.to_string(), why })?;
            }
            live.encodings = encodings;
            stages.push(Stage::new(engine, linker, Arc::new(live), lookups.clone(), scope).map_err(BuildError::Stage)?);
            canaries.push(match candidate {
                None => None,
                Some((mut candidate, _, sample)) => {
                    candidate.encodings = encodings;
                    let candidate = Stage::new(engine, linker, Arc::new(candidate), lookups.clone(), shadow)
                        .map_err(BuildError::Stage)?;
                    Some(Canary::new(candidate, sample))
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
        let names = stages.iter().map(|s| s.name().clone()).collect();
        let uses_state = stages.iter().chain(canaries.iter().flatten().map(Canary::stage)).any(Stage::uses_state);
        Ok(Self {
            stages,
            canaries,
            routes: Routes {
                output: Target::of(&config.output),
                named: config.routes.iter().map(|(name, r)| (name.clone(), Target::of(r))).collect(),
                open: false,
            },
            letters: Arc::new(Letters {
                topic: Arc::from(config.dead_letter.topic.as_str()),
                stages: names,
                lineage,
                generation: 1,
                max_record_bytes: config.kafka.message_max_bytes(),
            }),
            max_input_bytes: config.source.max_record_bytes.get(),
            state,
            uses_state,
        })
    }

    /// Sends records with a route missing from `[routes]` to the topic of
    /// the route's name instead of rejecting them (for testing a plugin on
    /// its own).
    pub fn open_routes(&mut self) {
        self.routes.open = true;
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
        self.letters.generation
    }

    /// Sets the pipeline generation.
    pub fn set_generation(&mut self, generation: u64) {
        Arc::make_mut(&mut self.letters).generation = generation;
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
        for stage in &mut self.stages {
            stage.set_probing(true);
        }
        let result = self.run(records, false).map_err(|e| format!("the probe run could not finish: {e}"));
        for stage in &mut self.stages {
            stage.set_probing(false);
            stage.reset().map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
        }
        if let Some(dead) = result?.dead_letters.iter().find(|d| d.reason.is_plugin_failure()) {
            let record = &records[dead.origin];
            return Err(format!(
                "stage `{}` failed the probe run ({}) on the record at partition {} offset {}: {}",
                dead.stage, dead.reason, record.partition, record.offset, dead.message
            ));
        }
        Ok(())
    }

    /// Runs a batch through the chain. Fails only when a lookup could not
    /// be served; the batch can then be processed again from the start.
    pub fn process(&mut self, records: &[Record]) -> Result<BatchResult, Unavailable> {
        self.run(records, true)
    }

    fn run(&mut self, records: &[Record], live: bool) -> Result<BatchResult, Unavailable> {
        if live && self.uses_state {
            self.state.begin(records)?;
        } else if live {
            // What a chain without state reads is not followed: a later
            // chain with state claims every partition anew.
            self.state.forget();
        }
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
                rejected[origin] =
                    Some((None, ErrorInfo { reason: HostRefusal::RecordTooLarge.as_str().into(), message }));
                continue;
            }
            origins.push(origin);
            batch.push(first_message(record));
        }
        let mut outputs: Vec<(usize, usize, Produce)> = Vec::new();
        let mut effects: Vec<(usize, usize, bindings::Effect)> = Vec::new();
        let mut rows: Vec<(usize, usize, Row)> = Vec::new();
        let mut stats = Vec::with_capacity(self.stages.len());
        let last = self.stages.len() - 1;
        for (index, stage) in self.stages.iter_mut().enumerate() {
            let started = Instant::now();
            let shadow = match &mut self.canaries[index] {
                Some(canary) if live => canary.run(&batch),
                _ => None,
            };
            let outcomes = run_stage(stage, &batch)?;
            if let (Some(shadow), Some(canary)) = (shadow, &mut self.canaries[index]) {
                canary.compare(&batch, &outcomes, shadow);
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
                            let target = match self.routes.destination(out.route.as_deref(), index == last) {
                                Ok(Destination::Next) => {
                                    next_origins.push(origin);
                                    next.push(Message {
                                        key: out.key,
                                        value: out.value,
                                        headers: out.headers,
                                        ..source_of(input)
                                    });
                                    continue;
                                }
                                Ok(Destination::Out(target)) => target,
                                Err(message) => {
                                    let reason = HostRefusal::UnknownRoute.as_str().into();
                                    rejected[origin].get_or_insert((Some(index), ErrorInfo { reason, message }));
                                    continue;
                                }
                            };
                            if !target.tables.is_empty() {
                                let row = Row {
                                    tables: target.tables.clone(),
                                    key: out.key.clone(),
                                    value: out.value.clone(),
                                };
                                rows.push((origin, index, row));
                            }
                            let Some(topic) = target.topic else { continue };
                            let headers = out.headers.into_iter().map(from_guest_header).collect();
                            let produce = Produce { topic, key: out.key, value: out.value, headers };
                            let size = record_size(&produce);
                            if size > self.letters.max_record_bytes {
                                let info = ErrorInfo {
                                    reason: HostRefusal::OutputTooLarge.as_str().into(),
                                    message: format!(
                                        "an output to `{}` of {size} bytes is larger than the producer's \
                                         message.max.bytes ({})",
                                        produce.topic, self.letters.max_record_bytes
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

        let mut result = BatchResult { stages: stats, letters: Some(self.letters.clone()), ..BatchResult::default() };
        if live && self.uses_state {
            result.state_writes = self.state.take_pending();
        }
        let mut has_output = vec![false; records.len()];
        let generation = self.letters.generation.to_string().into_bytes();
        let provenance = |headers: &mut Vec<Header>, index: usize| {
            headers.push(Header { name: LINEAGE_HEADER.into(), value: self.letters.lineage[index].clone() });
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
        result.rows = rows.into_iter().filter(|(origin, _, _)| rejected[*origin].is_none()).collect();
        for (origin, _, _) in &result.rows {
            has_output[*origin] = true;
        }
        for (origin, stage, effect) in effects {
            if rejected[origin].is_none() {
                result.effects.push((origin, from_guest_effect(effect)));
                result.effect_stages.push(stage);
            }
        }
        for (origin, record) in records.iter().enumerate() {
            match &rejected[origin] {
                Some((index, info)) => result.dead_letters.push(self.letters.letter(record, origin, *index, info)),
                None if !has_output[origin] => result.filtered += 1,
                None => result.completed += 1,
            }
        }
        Ok(result)
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
    let reject =
        |reason: Reason, message: String| Outcome::Reject(ErrorInfo { reason: reason.as_str().into(), message });
    if outputs.len() > limits.max_outputs.get() as usize {
        let message =
            format!("{} outputs for one record, more than limits.max_outputs = {}", outputs.len(), limits.max_outputs);
        return reject(PluginFailure::OutputLimit.into(), message);
    }
    if effects.len() > limits.max_effects.get() as usize {
        let message =
            format!("{} effects for one record, more than limits.max_effects = {}", effects.len(), limits.max_effects);
        return reject(PluginFailure::OutputLimit.into(), message);
    }
    for effect in effects {
        let (bindings::Effect::HashIncr((key, ..)) | bindings::Effect::HashSet((key, ..))) = effect;
        if let Err(why) = spec.writes.check(key) {
            return reject(HostRefusal::EffectDenied.into(), why);
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
                .map(|_| {
                    Outcome::Reject(ErrorInfo {
                        reason: HostRefusal::CircuitOpen.as_str().into(),
                        message: message.clone(),
                    })
                })
                .collect()),
            FailurePolicy::Halt => Err(Unavailable(message)),
        };
    }
    match stage.call(batch) {
        Ok(outcomes) => Ok(outcomes),
        Err(CallError::Unavailable(e)) => Err(e),
        Err(CallError::Plugin { reason, message }) if batch.len() == 1 => {
            tracing::warn!(stage = %stage.name(), %reason, offset = batch[0].offset, error = %message, "plugin failed on a record");
            Ok(vec![Outcome::Reject(ErrorInfo { reason: reason.as_str().into(), message })])
        }
        Err(CallError::Plugin { reason, message }) => {
            tracing::warn!(stage = %stage.name(), %reason, records = batch.len(), error = %message, "plugin failed on a batch; retrying record by record");
            let mut outcomes = Vec::with_capacity(batch.len());
            for one in batch.chunks(1) {
                outcomes.extend(call_isolating(stage, one)?);
            }
            Ok(outcomes)
        }
    }
}
