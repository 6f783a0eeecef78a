//! Sluice: a stream processor whose transforms are WebAssembly components.
//!
//! # Layout
//!
//! The runtime is every module but [`tools`] and [`cli`]; the tools (load
//! generator, benchmarks, `sluice test`, `sluice new`, the sales report) use
//! the runtime, which never uses them, but for one wire: the composition root
//! ([`run`]) hands the admin API the sales report as an
//! [`http::ReportSource`]. Only [`kafka`] talks to Kafka, only [`redis`]
//! to Redis and only [`postgres`] to PostgreSQL.
//!
//! - [`record`]: the records the host moves (read, produced, effects, batches
//!   with their offset spans); a leaf, free of the plugin contract's types.
//! - [`config`]: the pipeline.toml model, `${VAR}` interpolation, validation.
//! - [`engine`]: the only place that configures wasmtime; loads components.
//! - [`bindings`]: the host side of the `sluice:plugin` WIT contract.
//! - [`pipeline`]: a stage (one sandboxed instance) and the stage chain.
//! - [`kafka`]: the consumer-group source and the producer sink.
//! - [`lookup`]: lookup tables: the trait plugins' lookups are served by, the
//!   cache with a time-to-live per table, in-memory and offline tables.
//! - [`redis`]: lookup rows from Redis hashes, effects, and what HTTP
//!   sources remember.
//! - [`http_source`]: HTTP JSON APIs polled into topics.
//! - [`postgres`]: the table outputs, upserted behind an offset fence.
//! - [`run`]: the composition root: wires the source, the chain, Redis and
//!   the admin API, and runs the consume -> process -> apply -> deliver loop.
//! - [`delivery`]: the delivery guarantees as types (at-least-once,
//!   exactly-once), Kafka errors classified, and the steps that wait out a
//!   failing peer.
//! - [`reload`]: the reload protocol (building and probing new pipelines and
//!   putting them live between two batches), the file watcher and the diff
//!   between two pipelines.
//! - [`http`]: the admin API, its JSON views and the dashboard;
//!   [`metrics`]: the counters it serves.
//! - [`tools`]: the developer tools; [`cli`]: the command line.
#![deny(missing_docs)]

#[allow(missing_docs)]
pub mod bindings;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod engine;
pub mod http;
pub mod http_source;
pub mod kafka;
pub mod lookup;
pub mod metrics;
pub mod pipeline;
pub mod postgres;
pub mod record;
pub mod redis;
pub mod reload;
pub mod run;
pub mod state;
pub mod tools;
