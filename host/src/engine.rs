//! The only place that configures wasmtime: the engine, the compiled-code
//! cache, the epoch ticker that enforces call deadlines, and loading
//! components with errors that say what is wrong with the file.

use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::{Cache, CacheConfig, Config, OptLevel};

/// How often the epoch advances. Call deadlines are counted in these ticks,
/// so a deadline is enforced to within one tick (10 ms).
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Most wasm stack one call may use, unless a stage sets `stack_kib`.
/// Default 512 KiB, wasmtime's own default: deep enough for any reasonable
/// JSON recursion.
pub const MAX_WASM_STACK: usize = 512 << 10;

/// Why a plugin file could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file cannot be read.
    Read(PathBuf, std::io::Error),
    /// The file is not WebAssembly at all.
    NotWasm(PathBuf),
    /// The file is a core module, not a component.
    CoreModule(PathBuf),
    /// wasmtime refused the component.
    Invalid(PathBuf, String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(p, e) => write!(f, "cannot read plugin {}: {e}", p.display()),
            Self::NotWasm(p) => write!(f, "plugin {} is not a WebAssembly file (no `\\0asm` header)", p.display()),
            Self::CoreModule(p) => write!(
                f,
                "plugin {} is a core WebAssembly module, not a component: build it for wasm32-wasip2 (or run `wasm-tools component new`)",
                p.display()
            ),
            Self::Invalid(p, e) => {
                write!(f, "plugin {} is not a valid component: {e}", p.display())
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// A compiled plugin and the identity of its bytes.
#[derive(Clone)]
pub struct LoadedComponent {
    /// The compiled component.
    pub component: Component,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// sha256 of the file, hex.
    pub sha256: String,
}

impl LoadedComponent {
    /// The short version shown in logs: the first 12 hex digits of the hash.
    pub fn version(&self) -> &str {
        &self.sha256[..12]
    }
}

/// The wasmtime engine shared by every stage.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    config: Config,
    stack: usize,
}

impl Engine {
    /// An engine with epoch interruption, the stack limit and, where a cache
    /// directory is usable, the compiled-code cache (`SLUICE_CACHE_DIR`,
    /// default `$HOME/.cache/sluice`). Starts its epoch ticker.
    pub fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        if let Some(dir) = cache_dir() {
            match Cache::new(CacheConfig::new().with_directory(&dir).clone()) {
                Ok(cache) => {
                    config.cache(Some(cache));
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "compiled-code cache disabled")
                }
            }
        }
        Self::build(config, MAX_WASM_STACK)
    }

    fn build(mut config: Config, stack: usize) -> anyhow::Result<Self> {
        config.max_wasm_stack(stack);
        let inner = wasmtime::Engine::new(&config)?;
        start_ticker(&inner);
        Ok(Self { inner, config, stack })
    }

    /// This engine, or a sibling with the same settings but a wasm stack of
    /// `stack` bytes (the stack limit is per engine in wasmtime, so stages
    /// with their own `stack_kib` get their own engine).
    pub fn with_stack(&self, stack: usize) -> anyhow::Result<Self> {
        if stack == self.stack { Ok(self.clone()) } else { Self::build(self.config.clone(), stack) }
    }

    /// The wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// Reads and compiles a component, checking first that it is one.
    pub fn load(&self, path: &Path) -> Result<LoadedComponent, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::Read(path.to_path_buf(), e))?;
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(LoadError::CoreModule(path.to_path_buf()));
            }
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(LoadError::NotWasm(path.to_path_buf())),
        }
        let component = Component::new(&self.inner, &bytes)
            .map_err(|e| LoadError::Invalid(path.to_path_buf(), format!("{e:#}")))?;
        let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        Ok(LoadedComponent { component, path: path.to_path_buf(), sha256 })
    }

    /// Ticks needed for a deadline of `timeout`.
    pub fn deadline_ticks(timeout: Duration) -> u64 {
        (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
    }
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
