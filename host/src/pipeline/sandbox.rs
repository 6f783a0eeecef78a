//! What a stage's instance runs in: its store state (WASI with nothing
//! granted, the plugin's output, its lookups), the clock that sets each
//! call's deadline, the limits on its memories and tables, and the linker
//! of the host interface.

use crate::bindings::v0_2::{self, StateKey};
use crate::bindings::v0_4::{self, RowKey};
use crate::bindings::{self, LogLevel, Transform};
use crate::engine::Engine;
use crate::lookup::{LookupSource, Row};
use crate::state::{StateCallError, StateCalls};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::ResourceLimiter;
use wasmtime::component::{HasData, HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::clocks::WasiClocksCtxView;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::output::PluginOutput;

/// Per-instance host state: WASI with nothing granted, limits, lookups.
pub struct StageState {
    pub(super) wasi: WasiCtx,
    /// What the plugin writes to stdout and stderr, and to the `log` import.
    pub(super) output: [PluginOutput; 3],
    pub(super) table: ResourceTable,
    pub(super) limits: Limiter,
    pub(super) clock: CallClock,
    pub(super) lookups: Arc<dyn LookupSource>,
    /// The lookup tables the stage declared.
    pub(super) tables: Arc<[String]>,
    /// The stage's keyed state (`sluice:plugin/state@0.2.0`).
    pub(super) state: StateCalls,
}

/// The time of the call in progress that is the plugin's own: wall time
/// since it started minus the time the host spent serving its lookups (a
/// slow Redis is not the plugin's fault). Its deadline is `timeout`.
#[derive(Debug, Clone, Copy)]
pub(super) struct CallClock {
    started: Instant,
    timeout: Duration,
    host: Duration,
    /// Whether a wait was cut short at the deadline: the plugin did not
    /// finish in time, even if it returns before the epoch notices.
    pub(super) cut: bool,
}

impl CallClock {
    pub(super) fn new(timeout: Duration) -> Self {
        Self { started: Instant::now(), timeout, host: Duration::ZERO, cut: false }
    }

    /// The plugin's time left before its deadline.
    pub(super) fn left(&self) -> Duration {
        let spent = self.started.elapsed().saturating_sub(self.host);
        self.timeout.saturating_sub(spent)
    }
}

impl StageState {
    /// `wasi:clocks/monotonic-clock` for this instance: waits end at the
    /// call's deadline.
    fn deadline_clock(&mut self) -> DeadlineClock<'_> {
        let left = self.clock.left();
        let clocks = WasiClocksCtxView { ctx: self.wasi.clocks(), table: &mut self.table };
        DeadlineClock { clocks, left, cut: &mut self.clock.cut }
    }
}

/// WASI's monotonic clock, except that a wait (`sleep` in Rust or Python, a
/// timer in JavaScript) never outlasts the call's deadline. Epoch
/// interruption stops a plugin only while it runs WebAssembly; a plugin
/// blocked in the host would keep the processing thread past its deadline.
/// Cut short, the wait returns at the deadline and the call fails as
/// `plugin_timeout` (interrupted if it runs on, failed when it returns).
struct DeadlineClock<'a> {
    clocks: WasiClocksCtxView<'a>,
    left: Duration,
    cut: &'a mut bool,
}

struct DeadlineClocks;

impl HasData for DeadlineClocks {
    type Data<'a> = DeadlineClock<'a>;
}

impl monotonic_clock::Host for DeadlineClock<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        self.clocks.now()
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        self.clocks.resolution()
    }

    fn subscribe_duration(&mut self, nanos: monotonic_clock::Duration) -> wasmtime::Result<Resource<DynPollable>> {
        let left = u64::try_from(self.left.as_nanos()).unwrap_or(u64::MAX);
        if nanos > left {
            *self.cut = true;
        }
        self.clocks.subscribe_duration(nanos.min(left))
    }

    fn subscribe_instant(&mut self, when: monotonic_clock::Instant) -> wasmtime::Result<Resource<DynPollable>> {
        let now = self.clocks.now()?;
        self.subscribe_duration(when.saturating_sub(now))
    }
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
            let [.., log] = &self.output;
            log.log(LogLevel::Warn, &format!("lookup of table `{table}`, which the stage did not declare"));
            return Ok(None);
        }
        let started = Instant::now();
        let row = self.lookups.lookup(&table, &key);
        self.clock.host += started.elapsed();
        row.map_err(wasmtime::Error::new)
    }

    fn log(&mut self, level: LogLevel, message: String) {
        let [.., log] = &self.output;
        log.log(level, &message);
    }
}

impl v0_4::LookupsHost for StageState {
    fn lookup_many(&mut self, keys: Vec<RowKey>) -> wasmtime::Result<Vec<Option<Row>>> {
        // Rows of undeclared tables are none, as for `lookup`; each such
        // table is logged once per call.
        let mut undeclared: Vec<&str> = Vec::new();
        let wanted: Vec<(&str, &str)> = keys
            .iter()
            .filter(|k| {
                let declared = self.tables.contains(&k.table);
                if !declared && !undeclared.contains(&k.table.as_str()) {
                    undeclared.push(&k.table);
                }
                declared
            })
            .map(|k| (k.table.as_str(), k.key.as_str()))
            .collect();
        for table in undeclared {
            let [.., log] = &self.output;
            log.log(LogLevel::Warn, &format!("lookup of table `{table}`, which the stage did not declare"));
        }
        let started = Instant::now();
        let rows = self.lookups.lookup_many(&wanted);
        self.clock.host += started.elapsed();
        let mut rows = rows.map_err(wasmtime::Error::new)?.into_iter();
        Ok(keys.iter().map(|k| if self.tables.contains(&k.table) { rows.next().flatten() } else { None }).collect())
    }
}

impl v0_2::StateHost for StateState<'_> {
    fn get(&mut self, keys: Vec<StateKey>) -> wasmtime::Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<(u32, String)> = keys.into_iter().map(|k| (k.at, k.key)).collect();
        let started = Instant::now();
        let values = self.calls.get(&keys);
        self.clock.host += started.elapsed();
        values.map_err(trap)
    }

    fn set(
        &mut self,
        at: u32,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), String>> {
        let started = Instant::now();
        let done = self.calls.put(at, key, Some(value), ttl_ms);
        self.clock.host += started.elapsed();
        refusal(done)
    }

    fn delete(&mut self, at: u32, key: String) -> wasmtime::Result<Result<(), String>> {
        let started = Instant::now();
        let done = self.calls.put(at, key, None, None);
        self.clock.host += started.elapsed();
        refusal(done)
    }
}

/// A state call that could not be served: Redis away (the batch is
/// retried), or a broken promise of the plugin (the call fails as a trap).
fn trap(error: StateCallError) -> wasmtime::Error {
    match error {
        StateCallError::Unavailable(e) => wasmtime::Error::new(e),
        StateCallError::Contract(message) | StateCallError::Refused(message) => wasmtime::Error::msg(message),
    }
}

/// A refused write is the plugin's to handle; anything else traps.
fn refusal(done: Result<(), StateCallError>) -> wasmtime::Result<Result<(), String>> {
    match done {
        Ok(()) => Ok(Ok(())),
        Err(StateCallError::Refused(why)) => Ok(Err(why)),
        Err(other) => Err(trap(other)),
    }
}

/// What the `state` interface sees of an instance's store.
pub(super) struct StateState<'a> {
    calls: &'a mut StateCalls,
    clock: &'a mut CallClock,
}

struct StateData;

impl HasData for StateData {
    type Data<'a> = StateState<'a>;
}

/// Most table elements (function references) an instance may hold, over
/// all its tables. Default one million: a Python or JavaScript runtime
/// needs tens of thousands; the cap stops a plugin from growing tables
/// until the host runs out of memory.
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// A sandbox limit the plugin ran into: what and which limit.
#[derive(Debug, Clone)]
pub struct LimitExceeded(String);

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitExceeded {}

/// The instance's limits, over all its memories and tables together (a
/// component has several core instances; a per-memory cap would let it
/// hold several times `memory_mib`).
pub(super) struct Limiter {
    /// Bytes of memory over all the instance's memories.
    pub(super) memory: usize,
    /// `limits.memory_mib`, in bytes.
    pub(super) memory_cap: usize,
    /// Elements over all the instance's tables.
    pub(super) table_elements: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let total = self.memory - current + desired;
        if total > self.memory_cap {
            return Err(LimitExceeded(format!(
                "the instance's memory would grow to {} MiB, beyond limits.memory_mib = {}",
                total.div_ceil(1 << 20),
                self.memory_cap >> 20
            ))
            .into());
        }
        self.memory = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(LimitExceeded(format!("the host could not grow the instance's memory: {error}")).into())
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let total = self.table_elements - current + desired;
        if total > MAX_TABLE_ELEMENTS {
            return Err(LimitExceeded(format!(
                "the instance's tables would hold {total} elements, beyond the limit of {MAX_TABLE_ELEMENTS}"
            ))
            .into());
        }
        self.table_elements = total;
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(LimitExceeded(format!("the host could not grow the instance's table: {error}")).into())
    }
}

/// Builds the linker every stage is instantiated with: WASI p2 (with no
/// capability granted by the context) and the Sluice host interface.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<StageState>> {
    let mut linker = Linker::new(engine.wasmtime());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<_, DeadlineClocks>(&mut linker, StageState::deadline_clock)?;
    linker.allow_shadowing(false);
    Transform::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
    v0_2::add_state_to_linker::<_, StateData>(&mut linker, |state: &mut StageState| StateState {
        calls: &mut state.state,
        clock: &mut state.clock,
    })?;
    v0_4::add_lookups_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn memory_is_capped_over_all_of_an_instances_memories() {
        let mut limiter = Limiter { memory: 0, memory_cap: 16 * MIB, table_elements: 0 };
        assert!(limiter.memory_growing(0, 10 * MIB, None).unwrap(), "the first memory");
        let error = limiter.memory_growing(0, 10 * MIB, None).unwrap_err();
        assert_eq!(
            error.downcast_ref::<LimitExceeded>().unwrap().to_string(),
            "the instance's memory would grow to 20 MiB, beyond limits.memory_mib = 16"
        );
        assert!(limiter.memory_growing(10 * MIB, 12 * MIB, None).unwrap(), "growth within the cap");
        assert_eq!(limiter.memory, 12 * MIB);
    }

    #[test]
    fn table_elements_are_capped_over_all_of_an_instances_tables() {
        let mut limiter = Limiter { memory: 0, memory_cap: MIB, table_elements: 0 };
        assert!(limiter.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        assert!(limiter.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        let error = limiter.table_growing(0, 1, None).unwrap_err();
        assert!(error.downcast_ref::<LimitExceeded>().is_some(), "{error}");
        assert!(!limiter.table_growing(0, 10, Some(5)).unwrap(), "a table's own maximum holds");
    }

    #[test]
    fn the_call_clock_leaves_out_the_hosts_time() {
        let mut clock = CallClock::new(Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(60));
        clock.host += Duration::from_millis(60);
        assert!(clock.left() > Duration::from_millis(90), "{:?}", clock.left());
        clock.host = Duration::ZERO;
        assert!(clock.left() <= Duration::from_millis(40), "{:?}", clock.left());
    }
}
