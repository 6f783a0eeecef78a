//! The only place that configures wasmtime: the engine, the compiled-code
//! cache, the epoch ticker that enforces call deadlines, and loading
//! components with errors that say what is wrong with the file.
//!
//! Compiled code is cached by the sha256 of the plugin file, in memory (a
//! reload of an unchanged plugin costs nothing) and on disk in
//! `SLUICE_CACHE_DIR` (a restart does not recompile).

use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::{Config, OptLevel};

/// How often the epoch advances. Call deadlines are counted in these ticks,
/// so a deadline is enforced to within one tick (10 ms).
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Most wasm stack one call may use, unless a stage sets `stack_kib`.
/// Default 512 KiB, wasmtime's own default: deep enough for any reasonable
/// JSON recursion.
pub const MAX_WASM_STACK: usize = 512 << 10;

/// Why a plugin file could not be loaded.
#[derive(Debug)]
///
/// Its message names the file; the cause, where there is one, is its
/// [`source`](std::error::Error::source) (print it with `{:#}` through
/// anyhow to see both).
pub enum LoadError {
    /// The file cannot be read.
    Read {
        /// The plugin file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not WebAssembly at all.
    NotWasm {
        /// The plugin file.
        path: PathBuf,
    },
    /// The file is a core module, not a component.
    CoreModule {
        /// The plugin file.
        path: PathBuf,
    },
    /// wasmtime refused the component.
    Invalid {
        /// The plugin file.
        path: PathBuf,
        /// wasmtime's reason.
        source: wasmtime::Error,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, .. } => write!(f, "cannot read plugin {}", path.display()),
            Self::NotWasm { path } => {
                write!(f, "plugin {} is not a WebAssembly file (no `\\0asm` header)", path.display())
            }
            Self::CoreModule { path } => write!(
                f,
                "plugin {} is a core WebAssembly module, not a component: build it for wasm32-wasip2 (or run `wasm-tools component new`)",
                path.display()
            ),
            Self::Invalid { path, .. } => write!(f, "plugin {} is not a valid component", path.display()),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            Self::Invalid { source, .. } => Some(source.as_ref()),
            Self::NotWasm { .. } | Self::CoreModule { .. } => None,
        }
    }
}

/// Where a component's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodeOrigin {
    /// Compiled from the file now.
    Compiled,
    /// Read from the on-disk cache.
    DiskCache,
    /// Already in memory (an unchanged plugin, reloaded).
    MemoryCache,
}

/// A compiled plugin and the identity of its bytes.
#[derive(Clone)]
pub struct LoadedComponent {
    /// The compiled component.
    pub component: Component,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// Where its compiled code came from.
    pub origin: CodeOrigin,
    /// How long reading and compiling (or fetching from a cache) took.
    pub load_time: Duration,
}

/// The export of a stage that declares its value types
/// (`sluice:plugin@0.3.0` and later).
pub const DESCRIBE_EXPORT: &str = "describe";

/// The export of a component whose batches cross packed (`sluice:plugin@0.5.0`).
pub const PROCESS_PACKED_EXPORT: &str = "process-packed";

/// The export of a component whose batches cross as tables of bytes
/// (`sluice:plugin@0.6.0`).
pub const PROCESS_TABLES_EXPORT: &str = "process-tables";

/// The import of keyed state (`sluice:plugin@0.2.0`).
pub const STATE_IMPORT: &str = "sluice:plugin/state@0.2.0";

impl LoadedComponent {
    /// Whether the component imports keyed state: a stage that does not
    /// costs the host no state work at all.
    pub fn uses_state(&self, engine: &Engine) -> bool {
        self.component.component_type().imports(engine.wasmtime()).any(|(name, _)| name == STATE_IMPORT)
    }

    /// Whether the component declares the types of its values
    /// (`sluice:plugin@0.3.0` or `0.4.0`: it exports `describe`).
    pub fn declares_values(&self) -> bool {
        let engine = self.component.engine();
        self.component.component_type().exports(engine).any(|(name, _)| name == DESCRIBE_EXPORT)
    }

    /// Whether its batches cross the boundary packed
    /// (`sluice:plugin@0.5.0`: it exports `process-packed`).
    pub fn packs_batches(&self) -> bool {
        let engine = self.component.engine();
        self.component.component_type().exports(engine).any(|(name, _)| name == PROCESS_PACKED_EXPORT)
    }

    /// Whether its batches cross the boundary as tables of bytes
    /// (`sluice:plugin@0.6.0`: it exports `process-tables`).
    pub fn passes_tables(&self) -> bool {
        let engine = self.component.engine();
        self.component.component_type().exports(engine).any(|(name, _)| name == PROCESS_TABLES_EXPORT)
    }

    /// The short version shown in logs: the first 12 hex digits of the hash.
    pub fn version(&self) -> &str {
        &self.sha256[..12]
    }
}

/// Compiled components kept in memory per engine. Default 64: every plugin
/// of a large pipeline plus the versions a canary or rollback swaps between.
const MEMORY_CACHE_ENTRIES: usize = 64;

/// The wasmtime engine shared by every stage.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    config: Config,
    stack: usize,
    compiled: Arc<Mutex<Compiled>>,
    /// Engines of the same settings by stack size, shared by all siblings.
    siblings: Arc<Mutex<Siblings>>,
    cache_dir: Option<Arc<Path>>,
}

/// Compiled components by file sha256, oldest first for eviction.
type Compiled = (HashMap<String, Component>, VecDeque<String>);

/// Engines by wasm stack size, each with its compiled components.
type Siblings = HashMap<usize, (wasmtime::Engine, Arc<Mutex<Compiled>>)>;

impl Engine {
    /// An engine with epoch interruption, the stack limit and the
    /// compiled-code cache in `SLUICE_CACHE_DIR` (default
    /// `$HOME/.cache/sluice`; empty disables it). Starts its epoch ticker.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_cache(cache_dir())
    }

    /// An engine whose compiled-code cache is in `dir` (none: no disk cache).
    pub fn with_cache(dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        if std::env::var_os("SLUICE_PERF_MAP").is_some_and(|v| !v.is_empty()) {
            // /tmp/perf-PID.map names the plugins' compiled functions for `perf`.
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let cache_dir = dir.and_then(|dir| match std::fs::create_dir_all(&dir).map_err(|e| e.to_string()) {
            Ok(()) => match private(&dir) {
                Ok(()) => Some(Arc::from(dir.as_path())),
                Err(why) => {
                    tracing::warn!(dir = %dir.display(), why, "compiled-code cache disabled: compiled code is \
                        loaded only from a folder that this user owns and nobody else may write to");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "compiled-code cache disabled");
                None
            }
        });
        let mut engine = Self {
            inner: new_engine(&mut config, MAX_WASM_STACK)?,
            config,
            stack: MAX_WASM_STACK,
            compiled: Arc::default(),
            siblings: Arc::default(),
            cache_dir,
        };
        let own = (engine.inner.clone(), engine.compiled.clone());
        engine.siblings = Arc::new(Mutex::new(HashMap::from([(MAX_WASM_STACK, own)])));
        Ok(engine)
    }

    /// This engine, or a sibling with the same settings but a wasm stack of
    /// `stack` bytes (the stack limit is per engine in wasmtime, so stages
    /// with their own `stack_kib` get their own engine, made once).
    pub fn with_stack(&self, stack: usize) -> anyhow::Result<Self> {
        let mut siblings = self.siblings.lock().expect("engines lock");
        let (inner, compiled) = match siblings.get(&stack) {
            Some(sibling) => sibling.clone(),
            None => {
                let sibling = (new_engine(&mut self.config.clone(), stack)?, Arc::default());
                siblings.insert(stack, sibling.clone());
                sibling
            }
        };
        Ok(Self {
            inner,
            config: self.config.clone(),
            stack,
            compiled,
            siblings: self.siblings.clone(),
            cache_dir: self.cache_dir.clone(),
        })
    }

    /// The wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// Reads a component, checking first that it is one, and compiles it
    /// unless its compiled code is cached in memory or on disk.
    pub fn load(&self, path: &Path) -> Result<LoadedComponent, LoadError> {
        let started = Instant::now();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(LoadError::CoreModule { path: path.to_path_buf() });
            }
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(LoadError::NotWasm { path: path.to_path_buf() }),
        }
        let sha256: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        let loaded = |component, origin| LoadedComponent {
            component,
            path: path.to_path_buf(),
            sha256: sha256.clone(),
            origin,
            load_time: started.elapsed(),
        };
        if let Some(component) = self.compiled.lock().expect("compiled lock").0.get(&sha256) {
            return Ok(loaded(component.clone(), CodeOrigin::MemoryCache));
        }
        let cached = self.cache_file(&sha256);
        let (component, origin) = match cached.as_deref().and_then(|file| self.read_cached(file)) {
            Some(component) => (component, CodeOrigin::DiskCache),
            None => {
                let component = Component::new(&self.inner, &bytes)
                    .map_err(|source| LoadError::Invalid { path: path.to_path_buf(), source })?;
                if let Some(file) = &cached {
                    write_cached(file, &component);
                }
                (component, CodeOrigin::Compiled)
            }
        };
        let mut compiled = self.compiled.lock().expect("compiled lock");
        let (by_sha, order) = &mut *compiled;
        if by_sha.insert(sha256.clone(), component.clone()).is_none() {
            order.push_back(sha256.clone());
            while order.len() > MEMORY_CACHE_ENTRIES {
                let oldest = order.pop_front().expect("non-empty");
                by_sha.remove(&oldest);
            }
        }
        Ok(loaded(component, origin))
    }

    /// The cache file of a plugin: its sha256 and a hash of everything that
    /// makes compiled code fit this engine (wasmtime version, settings, CPU).
    fn cache_file(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.inner.precompile_compatibility_hash().hash(&mut hasher);
        self.stack.hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Some(dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish())))
    }

    fn read_cached(&self, file: &Path) -> Option<Component> {
        if !file.exists() {
            return None;
        }
        if let Err(why) = private(file) {
            tracing::warn!(file = %file.display(), why, "ignoring a compiled-code cache entry another user could have written");
            return None;
        }
        // SAFETY: the file was written by `write_cached` from code this
        // engine compiled; wasmtime checks its header and the engine
        // compatibility before using it. The file and its directory are
        // owned by the host's user and writable by nobody else (`private`).
        match unsafe { Component::deserialize_file(&self.inner, file) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring an unusable compiled-code cache entry");
                None
            }
        }
    }

    /// Ticks needed for a deadline of `timeout`.
    pub fn deadline_ticks(timeout: Duration) -> u64 {
        (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
    }
}

fn new_engine(config: &mut Config, stack: usize) -> anyhow::Result<wasmtime::Engine> {
    config.max_wasm_stack(stack);
    let engine = wasmtime::Engine::new(config)?;
    start_ticker(&engine);
    Ok(engine)
}

/// Writes compiled code next to its final name, then renames it into place,
/// so that a reader never sees a half-written entry.
fn write_cached(file: &Path, component: &Component) {
    let result = component.serialize().map_err(std::io::Error::other).and_then(|bytes| {
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, file)
    });
    if let Err(e) = result {
        tracing::warn!(file = %file.display(), error = %e, "cannot write the compiled-code cache");
    }
}

/// Whether `path` is owned by this process's user and writable by nobody
/// else: the only place compiled code may be loaded from, since loading it
/// runs it as native code.
fn private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!("owned by uid {}, not by this process's uid {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("writable by its group or by others (mode {:o})", meta.mode() & 0o7777));
    }
    Ok(())
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SLUICE_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/sluice"))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_ticker(engine: &wasmtime::Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sluice-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch ticker");
}
