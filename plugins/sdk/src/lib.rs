//! Write Sluice transform stages in Rust.
//!
//! A stage is a type that implements [`Stage`]: built once per instance from
//! its config in pipeline.toml, then called once per record. Register it with
//! [`stage!`], build the crate for `wasm32-wasip2`, and the result is a
//! component of the `sluice:plugin@0.6.0` `transform` world that the host
//! loads.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use sluice_sdk::{Config, Emit, Error, Record, Stage};
//!
//! /// Routes orders of at least `min_cents` to the `vip` output and counts
//! /// them per user in Redis; everything else goes on to the next stage.
//! struct Vip {
//!     min_cents: i64,
//! }
//!
//! #[derive(Deserialize)]
//! struct Settings {
//!     min_cents: i64,
//! }
//!
//! #[derive(Deserialize, Serialize)]
//! struct Order {
//!     order_id: String,
//!     user: String,
//!     total_cents: i64,
//! }
//!
//! impl Stage for Vip {
//!     fn init(config: Config) -> Result<Self, String> {
//!         let settings: Settings = config.parse()?;
//!         Ok(Vip { min_cents: settings.min_cents })
//!     }
//!
//!     fn process(&mut self, record: &Record) -> Result<Emit, Error> {
//!         // Invalid JSON is rejected with reason `invalid_json`.
//!         let order: Order = record.json()?;
//!         if order.total_cents < 0 {
//!             return Err(Error::reject("invalid_total", format!("order {} has a negative total", order.order_id)));
//!         }
//!         if order.total_cents < self.min_cents {
//!             // The record as it came, with its key and headers, to the next stage.
//!             return Ok(Emit::value(record.value().to_vec()));
//!         }
//!         sluice_sdk::log::debug(&format!("vip order {}", order.order_id));
//!         Ok(Emit::json(&order)?
//!             .route("vip")
//!             .key(order.order_id.as_str())
//!             .header("x-vip", "true")
//!             .incr(format!("vip:{}", order.user), "orders", 1))
//!     }
//! }
//!
//! sluice_sdk::stage!(Vip);
//! # fn main() {
//! #     let mut vip = Vip::init(Config::new(r#"{"min_cents": 10000}"#)).unwrap();
//! #     let big = Record::from_value(br#"{"order_id":"o1","user":"u1","total_cents":12000}"#.to_vec());
//! #     let emit = vip.process(&big).unwrap();
//! #     assert_eq!(emit.outputs()[0].route.as_deref(), Some("vip"));
//! #     let bad = Record::from_value(b"{".to_vec());
//! #     assert_eq!(vip.process(&bad).unwrap_err().reason(), "invalid_json");
//! # }
//! ```
//!
//! Outputs inherit the input record's key and headers unless they set their
//! own ([`Emit::key`], [`Emit::header`] adds to the inherited headers). A
//! stage that reads lookup rows names them in [`Stage::lookups`]: the rows
//! of the whole batch are then read in one host call. A stage that needs
//! the whole batch at once overrides [`Stage::process_batch`].
//!
//! Everything here also compiles natively, so a stage's logic can be unit
//! tested with `cargo test`: natively, [`lookup`] finds nothing and [`log`]
//! writes to stderr. `sluice test plugin.wasm --input records.jsonl` runs the
//! built component in the real host engine.
#![deny(missing_docs)]

// The allocator stays wasi-libc's (dlmalloc), although talc made the
// default chain about 5% faster (BENCHMARKS.md): on wasm32-wasip2, memory
// that the host hands to the component is allocated through Rust's global
// allocator (`cabi_realloc`), and some of it is freed by wasi-libc's
// `free()`, so the two must be the same allocator.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "../../wit/plugin@0.6.0",
        pub_export_macro: true,
        default_bindings_module: "sluice_sdk",
        generate_all,
    });
}

pub use bindings::sluice::plugin0_1_0::types::{
    Effect, ErrorInfo, Header, LogLevel, Message, Outcome, Output as RawOutput,
};
pub use bindings::sluice::plugin0_3_0::values::{Declared, Encoding, Encodings, ValueType};
pub use bindings::{Guest, export};

#[doc(hidden)]
pub use bindings::*;

pub mod lookups;
#[doc(hidden)]
pub mod packed;
pub mod state;
pub mod values;

pub use lookups::{Lookups, Row, SharedRow, lookup, lookup_shared};
pub use values::{Value, View};

/// The value of `field` in a lookup row.
pub fn field<'a>(row: &'a [(String, String)], field: &str) -> Option<&'a str> {
    row.iter().find(|(k, _)| k == field).map(|(_, v)| v.as_str())
}

/// Lines in the host's log, tagged with the stage name. Natively they go to
/// stderr.
pub mod log {
    use super::LogLevel;

    fn write(level: LogLevel, message: &str) {
        #[cfg(target_arch = "wasm32")]
        super::bindings::sluice::plugin0_1_0::host::log(level, message);
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!("{level:?}: {message}");
    }

    /// Logs at trace level.
    pub fn trace(message: &str) {
        write(LogLevel::Trace, message)
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        write(LogLevel::Debug, message)
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        write(LogLevel::Info, message)
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        write(LogLevel::Warn, message)
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        write(LogLevel::Error, message)
    }
}

/// The stage's `config` table from pipeline.toml, as JSON.
#[derive(Debug, Clone)]
pub struct Config(String);

impl Config {
    /// A config from its JSON text (for tests).
    pub fn new(json: impl Into<String>) -> Self {
        Self(json.into())
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        &self.0
    }

    /// Whether the stage was given no settings.
    pub fn is_empty(&self) -> bool {
        matches!(self.0.trim(), "" | "{}")
    }

    /// The config as `T`; the error names the setting that is wrong.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        let text = if self.0.trim().is_empty() { "{}" } else { &self.0 };
        serde_json::from_str(text).map_err(|e| format!("stage config: {e}"))
    }

    /// Fails unless the config is empty, for stages that take no settings.
    pub fn expect_empty(&self, stage: &str) -> Result<(), String> {
        if self.is_empty() { Ok(()) } else { Err(format!("{stage} takes no config, got {}", self.0.trim())) }
    }
}

/// One input record: its text and bytes are borrowed from the batch the
/// host passed in (or owned, for a record made in a test).
pub struct Record<'a> {
    key: Option<Cow<'a, [u8]>>,
    value: Cow<'a, [u8]>,
    headers: Headers<'a>,
    topic: Cow<'a, str>,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    at: u32,
    /// A value decoded from it, kept for the stage's next step.
    kept: RefCell<Option<Box<dyn Any>>>,
}

/// A record's headers.
#[derive(Clone)]
enum Headers<'a> {
    /// In the batch's bytes.
    Packed { bytes: &'a [u8], rows: &'a [u8] },
    /// Its own.
    Owned(Vec<Header>),
}

impl Clone for Record<'_> {
    /// The same record and index, without a kept value.
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            value: self.value.clone(),
            headers: self.headers.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            at: self.at,
            kept: RefCell::new(None),
        }
    }
}

impl fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("key", &self.key)
            .field("value", &String::from_utf8_lossy(&self.value))
            .field("headers", &self.headers().collect::<Vec<_>>())
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl Record<'static> {
    /// Record `at` of a batch, made of a message of its own (for
    /// [`Stage::process_batch`] in tests): its index is what [`state`] calls
    /// name it by.
    pub fn new(message: Message, at: u32) -> Self {
        let Message { key, value, headers, topic, partition, offset, timestamp_ms } = message;
        Self {
            key: key.map(Cow::Owned),
            value: Cow::Owned(value),
            headers: Headers::Owned(headers),
            topic: Cow::Owned(topic),
            partition,
            offset,
            timestamp_ms,
            at,
            kept: RefCell::new(None),
        }
    }

    /// A record with this value and nothing else (for tests).
    pub fn from_value(value: Vec<u8>) -> Self {
        Self::new(
            Message {
                key: None,
                value,
                headers: Vec::new(),
                topic: String::new(),
                partition: 0,
                offset: 0,
                timestamp_ms: None,
            },
            0,
        )
    }

    /// The same record with a key (for tests).
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(Cow::Owned(key.into()));
        self
    }

    /// The same record with one more header (for tests).
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        let mut headers: Vec<Header> =
            self.headers().map(|(name, value)| Header { name: name.to_string(), value: value.to_vec() }).collect();
        headers.push(Header { name: name.to_string(), value: value.into() });
        self.headers = Headers::Owned(headers);
        self
    }
}

impl<'a> Record<'a> {
    /// Its index in the batch being processed.
    pub fn at(&self) -> u32 {
        self.at
    }

    /// Keeps `value` with the record, for [`Record::kept`]: what
    /// [`Stage::lookups`] decoded, handed to [`Stage::process`] so that the
    /// record is decoded once.
    pub fn keep<T: 'static>(&self, value: T) {
        *self.kept.borrow_mut() = Some(Box::new(value));
    }

    /// The value [`Record::keep`] kept, if it is a `T`; it is handed over
    /// once.
    pub fn kept<T: 'static>(&self) -> Option<T> {
        let kept = self.kept.borrow_mut().take()?;
        match kept.downcast::<T>() {
            Ok(value) => Some(*value),
            Err(other) => {
                *self.kept.borrow_mut() = Some(other);
                None
            }
        }
    }

    /// The value.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The value as JSON. A value that is not JSON of that type is an
    /// [`Error`] with reason `invalid_json` and the parser's message.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.value).map_err(|e| Error::reject("invalid_json", format!("record value: {e}")))
    }

    /// The value as the type the stage declared it reads
    /// ([`Stage::declare`]): from JSON, or from the binary form the stage
    /// before it wrote. Invalid JSON is an [`Error`] with reason
    /// `invalid_json`.
    pub fn decode<T: Value>(&self) -> Result<T, Error> {
        values::decode(&self.value).map_err(record_value)
    }

    /// [`Record::decode`] as the value's view ([`View`]), whose text
    /// borrows from the record instead of being copied.
    pub fn decode_view<T: View>(&self) -> Result<T::Of<'_>, Error> {
        values::decode_view::<T>(&self.value).map_err(record_value)
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The headers, as (name, value), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let (packed, owned) = match &self.headers {
            Headers::Packed { bytes, rows } => {
                (Some(rows.chunks_exact(packed::HEADER_ROW).map(|row| packed::header(bytes, row))), None)
            }
            Headers::Owned(headers) => (None, Some(headers.iter().map(|h| (h.name.as_str(), h.value.as_slice())))),
        };
        packed.into_iter().flatten().chain(owned.into_iter().flatten())
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| *n == name).map(|(_, value)| value)
    }

    /// The source topic of the record that entered the pipeline.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Its source partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Its source offset.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Its Kafka timestamp in milliseconds, if any.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }
}

/// A decoding error, as about a record's value.
fn record_value(e: Error) -> Error {
    match e.reason.as_str() {
        "invalid_json" => Error { message: format!("record value: {}", e.message), ..e },
        _ => e,
    }
}

/// One record a stage emits.
#[derive(Debug, Clone)]
pub struct Output {
    /// `None`: the next stage (or the pipeline's default output after the
    /// last stage); a name: the output of that name in `[routes]`.
    pub route: Option<String>,
    /// `None`: the input record's key.
    pub key: Option<Option<Vec<u8>>>,
    /// The value.
    pub value: Vec<u8>,
    /// Headers added to the input record's headers.
    pub headers: Vec<Header>,
    /// The value, if it was given typed: routed outputs are JSON.
    typed: Option<values::Typed>,
}

/// What a stage makes of one record: zero or more outputs and the Redis
/// effects they cause. Builder methods such as [`Emit::route`] apply to the
/// latest output.
#[derive(Debug, Clone, Default)]
pub struct Emit {
    outputs: Vec<Output>,
    /// The effects, their text in `text`.
    effects: Vec<Written>,
    /// The keys, fields and values of the effects, back to back: an
    /// effect costs no allocation of its own.
    text: String,
    /// An output that could not be written as JSON when it was routed.
    failed: Option<Error>,
}

impl Emit {
    /// One output with this value.
    pub fn value(value: impl Into<Vec<u8>>) -> Self {
        Self::default().and_value(value)
    }

    /// One output with `value` serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        Ok(Self::value(to_json(value)?))
    }

    /// One output with `value`, of the type the stage declared it writes
    /// ([`Stage::declare`]): for the next stage in the form the host chose
    /// (JSON or binary), for a named route ([`Emit::route`]) as JSON.
    pub fn encode<T: Value>(value: T) -> Result<Self, Error> {
        Self::default().and_encode(value)
    }

    /// One more output with `value`, as [`Emit::encode`].
    pub fn and_encode<T: Value>(self, value: T) -> Result<Self, Error> {
        self.and_encoded::<T>(&value)
    }

    /// One output with `view`, a value of type `T` read in place
    /// ([`Record::decode_view`]), as [`Emit::encode`] writes `T`.
    pub fn encode_view<T: View>(view: &T::Of<'_>) -> Result<Self, Error> {
        Self::default().and_encoded::<T>(view)
    }

    /// One more output with `value`, which encodes as a `T`.
    fn and_encoded<T: Value>(mut self, value: &(impl Serialize + ?Sized)) -> Result<Self, Error> {
        let output = values::encodings().output;
        self = self.and_value(values::encode(value, output)?);
        if output == Encoding::Binary {
            self.outputs.last_mut().expect("just added").typed = Some(values::Typed::of::<T>());
        }
        Ok(self)
    }

    /// Nothing: the record is dropped on purpose (counted as filtered).
    pub fn filtered() -> Self {
        Self::default()
    }

    /// One more output with this value.
    pub fn and_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.outputs.push(Output { route: None, key: None, value: value.into(), headers: Vec::new(), typed: None });
        self
    }

    /// One more output with `value` serialized as JSON.
    pub fn and_json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, Error> {
        Ok(self.and_value(to_json(value)?))
    }

    /// Sends the latest output to the output named `route` in `[routes]`.
    pub fn route(mut self, route: impl Into<String>) -> Self {
        if let Some(o) = self.outputs.last_mut() {
            o.route = Some(route.into());
            // Named routes lead out of the pipeline: JSON, not the binary
            // form of the next stage.
            if let Some(typed) = o.typed.take() {
                match typed.json(&o.value) {
                    Ok(json) => o.value = json,
                    Err(e) => self.failed = Some(e),
                }
            }
        }
        self
    }

    /// Sets the latest output's key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        if let Some(o) = self.outputs.last_mut() {
            o.key = Some(Some(key.into()));
        }
        self
    }

    /// Gives the latest output no key.
    pub fn no_key(mut self) -> Self {
        if let Some(o) = self.outputs.last_mut() {
            o.key = Some(None);
        }
        self
    }

    /// Adds a header to the latest output.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        if let Some(o) = self.outputs.last_mut() {
            o.headers.push(Header { name: name.to_string(), value: value.into() });
        }
        self
    }

    /// `HINCRBY key field delta`, applied once the outputs are delivered.
    pub fn incr(mut self, key: impl AsRef<str>, field: impl AsRef<str>, delta: i64) -> Self {
        let (key, field) = (self.write(key.as_ref()), self.write(field.as_ref()));
        self.effects.push(Written::Incr(key, field, delta));
        self
    }

    /// `HSET key field value`, applied once the outputs are delivered.
    pub fn set(mut self, key: impl AsRef<str>, field: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        let (key, field, value) = (self.write(key.as_ref()), self.write(field.as_ref()), self.write(value.as_ref()));
        self.effects.push(Written::Set(key, field, value));
        self
    }

    fn write(&mut self, text: &str) -> std::ops::Range<usize> {
        if self.text.capacity() == 0 {
            self.text.reserve(256);
        }
        let start = self.text.len();
        self.text.push_str(text);
        start..self.text.len()
    }

    /// The effects, as (kind, key, field, delta or value).
    fn written(&self) -> impl Iterator<Item = (&str, &str, Result<i64, &str>)> + '_ {
        let text = |range: &std::ops::Range<usize>| &self.text[range.clone()];
        self.effects.iter().map(move |effect| match effect {
            Written::Incr(key, field, delta) => (text(key), text(field), Ok(*delta)),
            Written::Set(key, field, value) => (text(key), text(field), Err(text(value))),
        })
    }

    /// The outputs.
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// The effects.
    pub fn effects(&self) -> Vec<Effect> {
        self.written()
            .map(|(key, field, change)| match change {
                Ok(delta) => Effect::HashIncr((key.to_string(), field.to_string(), delta)),
                Err(value) => Effect::HashSet((key.to_string(), field.to_string(), value.to_string())),
            })
            .collect()
    }

    /// The outcome of `input` as a component of 0.1.0 to 0.4.0 returns it:
    /// outputs get the input's key unless they set their own, and the
    /// input's headers before their own.
    pub fn into_outcome(self, input: &Record<'_>) -> Outcome {
        if let Some(e) = self.failed {
            return e.into_outcome();
        }
        if self.outputs.is_empty() && self.effects.is_empty() {
            return Outcome::Filtered;
        }
        let effects = self.effects();
        let outputs = self
            .outputs
            .into_iter()
            .map(|o| {
                let key = o.key.unwrap_or_else(|| input.key().map(<[u8]>::to_vec));
                let mut headers: Vec<Header> = input
                    .headers()
                    .map(|(name, value)| Header { name: name.to_string(), value: value.to_vec() })
                    .collect();
                headers.extend(o.headers);
                RawOutput { route: o.route, key, value: o.value, headers }
            })
            .collect();
        Outcome::Emit((outputs, effects))
    }
}

/// An effect, its text in [`Emit`]'s.
#[derive(Debug, Clone)]
enum Written {
    Incr(std::ops::Range<usize>, std::ops::Range<usize>, i64),
    Set(std::ops::Range<usize>, std::ops::Range<usize>, std::ops::Range<usize>),
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::reject("serialize_failed", e.to_string()))
}

/// Why a record was not processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    retry: bool,
    reason: String,
    message: String,
}

impl Error {
    /// The record is bad: it goes to the dead-letter topic with `reason`
    /// (a short snake_case code) and `message` (for people: what is wrong,
    /// and where).
    pub fn reject(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { retry: false, reason: reason.into(), message: message.into() }
    }

    /// A transient failure: the host retries the record with backoff, then
    /// dead-letters it with `reason` when the retries are spent.
    pub fn retry(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { retry: true, reason: reason.into(), message: message.into() }
    }

    /// The reason code.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the host should retry the record.
    pub fn is_retry(&self) -> bool {
        self.retry
    }

    /// The outcome the host receives.
    pub fn into_outcome(self) -> Outcome {
        let info = ErrorInfo { reason: self.reason, message: self.message };
        if self.retry { Outcome::Retry(info) } else { Outcome::Reject(info) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::reject("invalid_json", e.to_string())
    }
}

/// A transform stage. See the crate documentation for an example.
pub trait Stage: Sized + 'static {
    /// Builds the stage from its config, once per instance, before any
    /// record. An error stops the pipeline from loading (or a reload from
    /// applying), with this message.
    fn init(config: Config) -> Result<Self, String>;

    /// What the stage reads from the stage before it and writes for the
    /// stage after it, given its config: by default any JSON. A stage that
    /// declares its types ([`Declared::reads`], [`Declared::writes`]) and
    /// uses [`Record::decode`] and [`Emit::encode`] exchanges values with
    /// neighbours of the same types in a binary form, parsed once.
    fn declare(config: &Config) -> Declared {
        let _ = config;
        Declared::any()
    }

    /// Names the lookup rows [`Stage::process`] will read for `record`
    /// ([`Lookups::row`]). It is called for every record of a batch before
    /// any is processed, and the rows named for the whole batch are read in
    /// one host call; [`lookup`] then serves them without one. A value
    /// decoded here can be handed to `process` with [`Record::keep`]. An
    /// error is the record's outcome: it is not processed. By default no
    /// rows are named.
    fn lookups(&mut self, record: &Record, rows: &mut Lookups) -> Result<(), Error> {
        let _ = (record, rows);
        Ok(())
    }

    /// Processes one record.
    fn process(&mut self, record: &Record) -> Result<Emit, Error>;

    /// Processes a batch: one result per record, in order. By default,
    /// [`Stage::lookups`] on each record, one host call for the rows they
    /// named, then [`Stage::process`] on each.
    fn process_batch(&mut self, records: &[Record<'_>]) -> Vec<Result<Emit, Error>> {
        let mut rows = Lookups::default();
        let named: Vec<Result<(), Error>> = records.iter().map(|record| self.lookups(record, &mut rows)).collect();
        rows.read();
        let results =
            records.iter().zip(named).map(|(record, named)| named.and_then(|()| self.process(record))).collect();
        lookups::forget();
        results
    }
}

#[doc(hidden)]
pub mod runtime {
    use super::*;
    use std::cell::RefCell;

    std::thread_local! {
        static STAGE: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
    }

    pub fn describe<S: Stage>(config_json: String) -> Declared {
        S::declare(&Config(config_json))
    }

    pub fn init<S: Stage>(config_json: String, encodings: Encodings) -> Result<(), String> {
        values::set_encodings(encodings);
        let stage = S::init(Config(config_json))?;
        STAGE.with(|s| *s.borrow_mut() = Some(Box::new(stage)));
        Ok(())
    }

    pub fn process<S: Stage>(batch: packed::Batch) -> packed::Results {
        #[cfg(feature = "count-allocations")]
        let (count, boundary) = (batch.records.len() / packed::RECORD_ROW, allocations::take());
        let records = packed::records(&batch);
        let results = STAGE.with(|s| match s.borrow_mut().as_mut().and_then(|s| s.downcast_mut::<S>()) {
            Some(stage) => stage.process_batch(&records),
            None => records
                .iter()
                .map(|_| Err(Error::reject("not_initialised", "process was called before init")))
                .collect(),
        });
        let mut packer = packed::Packer::for_results(&results);
        for result in results {
            packer.push(result);
        }
        drop(records);
        drop(batch);
        #[cfg(feature = "count-allocations")]
        {
            let stage = allocations::take();
            log::info(&format!("allocations: {boundary} at the boundary, {stage} in the stage, {count} records"));
            allocations::take();
        }
        packer.finish()
    }
}

/// With the `count-allocations` feature, every allocation of the component
/// is counted (through the same allocator as without it), and each batch
/// logs a line: `allocations: B at the boundary, S in the stage, N
/// records`. B is what the bindings allocated to receive the batch (and to
/// return the previous batch's outcomes), S what the stage allocated while
/// processing it. For measurements only: the count costs an atomic add per
/// allocation.
#[cfg(feature = "count-allocations")]
mod allocations {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicU64, Ordering};

    static COUNT: AtomicU64 = AtomicU64::new(0);

    struct Counting;

    // SAFETY: every call is passed to `System` unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            COUNT.fetch_add(1, Ordering::Relaxed);
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            COUNT.fetch_add(1, Ordering::Relaxed);
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            COUNT.fetch_add(1, Ordering::Relaxed);
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// The allocations since the last call.
    pub fn take() -> u64 {
        COUNT.swap(0, Ordering::Relaxed)
    }
}

/// Exports a [`Stage`] as the component's `transform` world. Only compiled
/// for WebAssembly, so that several stages can link into one native binary
/// (for tests and benchmarks).
#[macro_export]
macro_rules! stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct SluiceExport;
            impl $crate::Guest for SluiceExport {
                fn describe(config_json: ::std::string::String) -> $crate::Declared {
                    $crate::runtime::describe::<$stage>(config_json)
                }
                fn init(
                    config_json: ::std::string::String,
                    encodings: $crate::Encodings,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::runtime::init::<$stage>(config_json, encodings)
                }
                fn process_tables(batch: $crate::packed::Batch) -> $crate::packed::Results {
                    $crate::runtime::process::<$stage>(batch)
                }
            }
    $crate::export!(SluiceExport with_types_in $crate);
        };
        // Natively the stage is only used by tests: no dead-code warnings.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$stage as $crate::Stage>::init;
        };
    };
}
