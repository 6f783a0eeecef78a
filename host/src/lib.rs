//! Sluice: a stream processor whose transforms are WebAssembly components.
//!
//! # Layout
//!
//! - [`record`]: the records the host moves (read, produced, effects, batches
//!   with their offset spans); a leaf, free of the plugin contract's types.
//! - [`config`]: the pipeline.toml model, `${VAR}` interpolation, validation.
//! - [`engine`]: the only place that configures wasmtime; loads components.
//! - [`bindings`]: the host side of the `sluice:plugin` WIT contract.
//! - [`pipeline`]: a stage (one sandboxed instance) and the stage chain.
//! - [`kafka`]: the consumer-group source and the producer sink.
//! - [`redis`]: lookup tables with a cache, and effects.
//! - [`run`]: the composition root: wires the source, the chain, Redis and
//!   the admin API, and runs the consume -> process -> apply -> deliver loop.
//! - [`delivery`]: the delivery guarantees as types (at-least-once,
//!   exactly-once), Kafka errors classified, and the steps that wait out a
//!   failing peer.
//! - [`reload`]: watching files, building and probing new pipelines, and
//!   handing them to the run loop to put live between two batches.
//! - [`http`]: the admin API and dashboard; [`metrics`]: the counters it
//!   serves; [`report`]: the sales report from the Redis counters.
//! - [`generator`]: the load generator; [`bench`]: the in-process benchmark;
//!   [`cli`]: the command line.
#![deny(missing_docs)]

pub mod bench;
#[allow(missing_docs)]
pub mod bindings;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod engine;
pub mod generator;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod plugin_test;
pub mod record;
pub mod redis;
pub mod reload;
pub mod report;
pub mod run;
pub mod scaffold;
