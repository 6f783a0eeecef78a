//! The developer tools of the command line, apart from the runtime: they
//! use it, it never uses them.
//!
//! - [`generator`]: `sluice gen`, orders of the three shops for the default
//!   pipeline, and its lookup tables.
//! - [`bench`]: `sluice bench` (the stage chain in process), `sluice
//!   passthrough` and `sluice latency` (end to end).
//! - [`test`]: `sluice test`, a plugin run on records from a file.
//! - [`scaffold`]: `sluice new`, a plugin project from a template.
//! - [`report`]: `sluice report` and `GET /api/report`, the sales report from
//!   the counters of the default pipeline's `totals` stage.
//! - [`replay`]: `sluice replay`, dead letters sent through the pipeline
//!   again.
//! - [`capture`]: `sluice capture`, records of a topic written to a file in
//!   the format ([`records`]) that `sluice test --records` reads.

pub mod bench;
pub mod capture;
pub mod generator;
pub mod records;
pub mod replay;
pub mod report;
pub mod scaffold;
pub mod test;
