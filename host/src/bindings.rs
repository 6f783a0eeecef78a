//! The host side of the plugin contract: the only `bindgen!`s in Sluice.
//!
//! `sluice:plugin@0.1.0` is the records, the outcomes and the host calls;
//! `0.2.0` adds keyed state (`state`) and reuses 0.1.0's types and host
//! calls, so a component of either version is instantiated through the
//! same `Transform` bindings, with `state` in the linker beside `host`.
//! `0.3.0` adds `describe` and the encodings `init` is given (`v0_3`),
//! with the same records, host calls and state. `0.4.0` adds `lookups`
//! (`v0_4`), the rows of a batch read in one call; its exports are
//! 0.3.0's, so its components are instantiated through `v0_3`'s bindings.
//! `0.5.0` (`v0_5`) has the same imports as 0.4.0 and exports
//! `process-packed` instead of `process`: a batch and its results cross
//! packed into a few lists (see `pipeline::packed`). `0.6.0` (`v0_6`)
//! exports `process-tables` instead: the same, with every table a list of
//! bytes (see `pipeline::tables`).
//!
//! `lookup`, `lookup-many` and the `state` calls are trappable: when Redis cannot answer, the
//! call is aborted rather than told "no such row", so a transient outage
//! never turns into a wrong dead letter.

wasmtime::component::bindgen!({
    world: "transform",
    path: "../wit/plugin@0.1.0",
    imports: {
        "sluice:plugin/host.lookup": trappable,
    },
    additional_derives: [PartialEq, Eq],
});

pub use self::sluice::plugin::types::{Effect, ErrorInfo, Header, LogLevel, Output};

/// `sluice:plugin@0.2.0`: the `state` interface.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        world: "transform",
        path: "../wit/plugin@0.2.0",
        with: {
            "sluice:plugin/types@0.1.0": super::sluice::plugin::types,
            "sluice:plugin/host@0.1.0": super::sluice::plugin::host,
        },
        imports: {
            "sluice:plugin/state.get": trappable,
            "sluice:plugin/state.set": trappable,
            "sluice:plugin/state.delete": trappable,
        },
    });

    pub use self::sluice::plugin0_2_0::state::{
        Host as StateHost, Key as StateKey, add_to_linker as add_state_to_linker,
    };
}

/// `sluice:plugin@0.3.0`: stages that declare the types of their values,
/// told at `init` whether to exchange them in binary.
pub mod v0_3 {
    wasmtime::component::bindgen!({
        world: "transform",
        path: "../wit/plugin@0.3.0",
        with: {
            "sluice:plugin/types@0.1.0": super::sluice::plugin::types,
            "sluice:plugin/host@0.1.0": super::sluice::plugin::host,
            "sluice:plugin/state@0.2.0": super::v0_2::sluice::plugin0_2_0::state,
        },
    });

    pub use self::sluice::plugin0_3_0::values::{Encoding, ValueType};
}

/// `sluice:plugin@0.4.0`: the rows of lookup tables, many at a time.
pub mod v0_4 {
    wasmtime::component::bindgen!({
        world: "transform",
        path: "../wit/plugin@0.4.0",
        with: {
            "sluice:plugin/types@0.1.0": super::sluice::plugin::types,
            "sluice:plugin/host@0.1.0": super::sluice::plugin::host,
            "sluice:plugin/state@0.2.0": super::v0_2::sluice::plugin0_2_0::state,
            "sluice:plugin/values@0.3.0": super::v0_3::sluice::plugin0_3_0::values,
        },
        imports: {
            "sluice:plugin/lookups.lookup-many": trappable,
        },
    });

    pub use self::sluice::plugin0_4_0::lookups::{Host as LookupsHost, RowKey, add_to_linker as add_lookups_to_linker};
}

/// `sluice:plugin@0.5.0`: a batch and its results packed into a few lists.
pub mod v0_5 {
    wasmtime::component::bindgen!({
        world: "transform",
        path: "../wit/plugin@0.5.0",
        with: {
            "sluice:plugin/types@0.1.0": super::sluice::plugin::types,
            "sluice:plugin/host@0.1.0": super::sluice::plugin::host,
            "sluice:plugin/state@0.2.0": super::v0_2::sluice::plugin0_2_0::state,
            "sluice:plugin/values@0.3.0": super::v0_3::sluice::plugin0_3_0::values,
            "sluice:plugin/lookups@0.4.0": super::v0_4::sluice::plugin0_4_0::lookups,
        },
    });

    pub use self::sluice::plugin0_5_0::packed::{
        Effect as PackedEffect, Entry, Header as PackedHeader, Message as PackedMessage, OutcomeKind, OutputKey, Span,
    };
}

/// `sluice:plugin@0.6.0`: a batch and its results as tables of bytes.
pub mod v0_6 {
    wasmtime::component::bindgen!({
        world: "transform",
        path: "../wit/plugin@0.6.0",
        with: {
            "sluice:plugin/types@0.1.0": super::sluice::plugin::types,
            "sluice:plugin/host@0.1.0": super::sluice::plugin::host,
            "sluice:plugin/state@0.2.0": super::v0_2::sluice::plugin0_2_0::state,
            "sluice:plugin/values@0.3.0": super::v0_3::sluice::plugin0_3_0::values,
            "sluice:plugin/lookups@0.4.0": super::v0_4::sluice::plugin0_4_0::lookups,
        },
    });
}
