//! The host side of the plugin contract: the only `bindgen!` in Sluice.
//!
//! `lookup` is trappable: when Redis cannot answer, the call is aborted
//! rather than told "no such row", so a transient outage never turns into a
//! wrong dead letter.

wasmtime::component::bindgen!({
    world: "transform",
    path: "../wit/plugin@0.1.0",
    imports: {
        "sluice:plugin/host.lookup": trappable,
    },
    additional_derives: [PartialEq, Eq],
});

pub use self::sluice::plugin::types::{Effect, ErrorInfo, Header, LogLevel, Output};
