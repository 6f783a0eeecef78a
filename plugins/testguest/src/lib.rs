//! A test plugin: each record's value is a command that makes the plugin
//! misbehave (or not), so that tests can check what the host does about it.
//!
//! `ok` emits the record; `loop` never returns; `alloc N` allocates N MiB;
//! `panic` panics; `recurse` overflows the stack; `depth N` recurses N calls
//! deep on the wasm stack; `open-file`, `connect` and
//! `getenv` try a capability and emit `allowed: ...` or `denied: ...`;
//! `retry` and `reject` return those decisions; `reason R` rejects with
//! reason code R; `drop` filters; `route R` emits to route R.
//!
//! Against the host's limits: `sleep MS` sleeps (a blocking WASI wait);
//! `lookup TABLE N` looks up N distinct keys of TABLE and emits how many it
//! found; `outputs N BYTES` emits N records of BYTES bytes; `effects N KEY`
//! emits one record and N increments of hash KEY; `log N BYTES` logs N
//! lines of BYTES bytes, and `log-forge` one message with a newline in it.
//!
//! Config: `{"init_error": "why"}` makes `init` fail with that message;
//! `{"init_sleep_ms": N}` makes it sleep first; `{"always": "CMD"}` runs CMD
//! for every record instead of its value (so `always = "ok"` is a
//! pass-through stage, `always = "panic"` a broken one).
//!
//! Built with the `packed` feature, it is a component of
//! `sluice:plugin@0.5.0` (`process-packed`) that runs the same commands,
//! and a few more that break the packed contract: `bad-span` emits an
//! output whose value lies outside the results' bytes, `bad-utf8` rejects
//! with a reason code that is not UTF-8, `no-outcome` gives the record no
//! outcome, and `inherit N` emits N outputs that inherit the record's key
//! and headers.
//!
//! Built with the `tables` feature, it is a component of
//! `sluice:plugin@0.6.0` (`process-tables`) that runs the same commands,
//! and a few more that break the contract of its tables: `bad-kind` gives
//! the record an outcome row of an unknown kind, `torn-rows` leaves the
//! rows 5 bytes short of whole, and `bad-span` emits an output whose value
//! lies outside the results' bytes.
//!
//! Value types: `{"reads": "T", "writes": "U", "binary": "B"}` declares
//! that the stage reads type T and writes type U, each with binary form B
//! (if given); `encodings` emits the encodings the host chose, as
//! `input=json output=binary`.

// The raw world, without the SDK: this plugin exercises the contract
// itself, of 0.4.0 (the lists of 0.1.0 to 0.4.0), with `packed` 0.5.0 or
// with `tables` 0.6.0.
#[cfg(all(feature = "packed", feature = "tables"))]
compile_error!("the features `packed` and `tables` choose different contracts: enable one");

#[cfg(not(any(feature = "packed", feature = "tables")))]
mod bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "../../wit/plugin@0.4.0",
        generate_all,
    });
}

#[cfg(feature = "packed")]
mod bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "../../wit/plugin@0.5.0",
        generate_all,
    });
}

#[cfg(feature = "tables")]
mod bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "../../wit/plugin@0.6.0",
        generate_all,
    });
}

#[cfg(feature = "packed")]
mod packed;
#[cfg(feature = "tables")]
mod tables;

use bindings::Guest;
use bindings::sluice::plugin0_1_0::host;
use bindings::sluice::plugin0_1_0::types::{Effect, ErrorInfo, Header, LogLevel, Message, Outcome, Output};
use bindings::sluice::plugin0_3_0::values::{Declared, Encoding, Encodings, ValueType};

fn emit(key: Option<Vec<u8>>, value: Vec<u8>, headers: Vec<Header>, effects: Vec<Effect>) -> Outcome {
    Outcome::Emit((vec![Output { route: None, key, value, headers }], effects))
}

fn reject(reason: &str, message: impl Into<String>) -> Outcome {
    Outcome::Reject(ErrorInfo { reason: reason.to_string(), message: message.into() })
}

struct TestGuest;

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[3]
}

/// Recursion that uses the wasm stack (not the shadow stack in memory).
#[inline(never)]
fn depth(n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    let below = depth(std::hint::black_box(n - 1));
    std::hint::black_box(below) + 1
}

/// `N BYTES` as two numbers (default 1 each).
fn numbers(arg: &str) -> (usize, usize) {
    let mut words = arg.split(' ').map(|w| w.parse().unwrap_or(1));
    (words.next().unwrap_or(1), words.next().unwrap_or(1))
}

fn verdict<T, E: std::fmt::Display>(result: Result<T, E>) -> String {
    match result {
        Ok(_) => "allowed".to_string(),
        Err(e) => format!("denied: {e}"),
    }
}

static ALWAYS: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
/// The encodings the host chose at `init`.
static ENCODINGS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub(crate) fn run(message: &Message) -> Outcome {
    let command = match ALWAYS.get().and_then(Option::as_deref) {
        Some(command) => command.to_string(),
        None => String::from_utf8_lossy(&message.value).into_owned(),
    };
    let (verb, arg) = command.split_once(' ').unwrap_or((command.as_str(), ""));
    let say = |text: String| emit(None, text.into_bytes(), Vec::new(), Vec::new());
    match verb {
        "ok" => emit(message.key.clone(), message.value.clone(), Vec::new(), Vec::new()),
        "loop" => {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "alloc" => {
            let mib: usize = arg.parse().unwrap_or(1);
            let mut block = vec![0u8; mib << 20];
            for i in (0..block.len()).step_by(4096) {
                block[i] = 1;
            }
            say(format!("allocated {}", std::hint::black_box(block).len()))
        }
        "panic" => panic!("asked to panic"),
        "recurse" => say(format!("{}", recurse(0))),
        "depth" => say(format!("depth {}", depth(arg.parse().unwrap_or(1)))),
        "open-file" => say(verdict(std::fs::read("/etc/hostname"))),
        "connect" => say(verdict(std::net::TcpStream::connect("127.0.0.1:6379"))),
        "getenv" => say(verdict(std::env::var("PATH"))),
        "retry" => Outcome::Retry(ErrorInfo { reason: "asked_to_retry".into(), message: "retry".into() }),
        "reject" => reject("asked_to_reject", "reject"),
        "reason" => reject(arg, "rejected with the reason code the record names"),
        "drop" => Outcome::Filtered,
        "encodings" => {
            let chosen = ENCODINGS.get().cloned().unwrap_or_default();
            emit(message.key.clone(), chosen.into_bytes(), Vec::new(), Vec::new())
        }
        "route" => Outcome::Emit((
            vec![Output { route: Some(arg.to_string()), key: None, value: message.value.clone(), headers: Vec::new() }],
            Vec::new(),
        )),
        "sleep" => {
            let started = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_millis(arg.parse().unwrap_or(1000)));
            say(format!("slept {} ms", started.elapsed().as_millis()))
        }
        "lookup" => {
            let (table, n) = arg.split_once(' ').unwrap_or((arg, "1"));
            let n: u32 = n.parse().unwrap_or(1);
            let found = (0..n).filter(|i| host::lookup(table, &format!("{}-{i}", message.offset)).is_some()).count();
            say(format!("found {found} of {n}"))
        }
        "outputs" => {
            let (n, bytes) = numbers(arg);
            let outputs = (0..n)
                .map(|_| Output { route: None, key: None, value: vec![b'x'; bytes], headers: Vec::new() })
                .collect();
            Outcome::Emit((outputs, Vec::new()))
        }
        "effects" => {
            let (n, key) = arg.split_once(' ').unwrap_or((arg, "testguest:counts"));
            let n: usize = n.parse().unwrap_or(1);
            let effects = (0..n).map(|i| Effect::HashIncr((key.to_string(), format!("f{i}"), 1))).collect();
            emit(None, b"counted".to_vec(), Vec::new(), effects)
        }
        "log" => {
            let (n, bytes) = numbers(arg);
            let line = "x".repeat(bytes);
            for i in 0..n {
                host::log(LogLevel::Info, &format!("line {i} {line}"));
            }
            say(format!("logged {n}"))
        }
        "log-forge" => {
            host::log(LogLevel::Info, "an honest line\nERROR sluice: a forged line of the host's own");
            say("logged".into())
        }
        other => reject("unknown_command", format!("unknown command `{other}`")),
    }
}

impl Guest for TestGuest {
    fn describe(config_json: String) -> Declared {
        let config: serde_json::Value = serde_json::from_str(&config_json).unwrap_or_default();
        let text = |key: &str| config.get(key).and_then(|v| v.as_str()).map(String::from);
        let side = |key: &str| text(key).map(|name| ValueType { name, binary: text("binary") });
        Declared { input: side("reads"), output: side("writes") }
    }

    fn init(config_json: String, encodings: Encodings) -> Result<(), String> {
        let name = |e: Encoding| if e == Encoding::Binary { "binary" } else { "json" };
        let chosen = format!("input={} output={}", name(encodings.input), name(encodings.output));
        ENCODINGS.set(chosen).map_err(|_| "initialised twice".to_string())?;
        let config: serde_json::Value = serde_json::from_str(&config_json).map_err(|e| e.to_string())?;
        if let Some(ms) = config.get("init_sleep_ms").and_then(|v| v.as_u64()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if let Some(why) = config.get("init_error").and_then(|v| v.as_str()) {
            return Err(why.to_string());
        }
        let always = config.get("always").and_then(|v| v.as_str()).map(String::from);
        ALWAYS.set(always).map_err(|_| "initialised twice".to_string())
    }

    #[cfg(not(any(feature = "packed", feature = "tables")))]
    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        batch.iter().map(run).collect()
    }

    #[cfg(feature = "packed")]
    fn process_packed(batch: packed::Batch) -> packed::Results {
        packed::process(batch)
    }

    #[cfg(feature = "tables")]
    fn process_tables(batch: tables::Batch) -> tables::Results {
        tables::process(batch)
    }
}

bindings::export!(TestGuest with_types_in bindings);
