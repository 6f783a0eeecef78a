//! Guest-side bindings for the `sluice:plugin@0.1.0` transform world.
//!
//! A plugin implements [`Guest`] and registers it with
//! `sluice_sdk::export!(MyStage with_types_in sluice_sdk);`. The helpers here
//! keep the per-record code short: [`reject`], [`emit`], [`headers_of`].
//!
//! The bindings compile on every target so that a plugin's logic can be unit
//! tested natively; the host imports ([`lookup`], [`log`]) only work inside
//! the host, so native tests pass lookups in as closures instead.
#![deny(missing_docs)]

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "../../wit/plugin@0.1.0",
        pub_export_macro: true,
        default_bindings_module: "sluice_sdk",
    });
}

pub use bindings::sluice::plugin::host::{log, lookup};
pub use bindings::sluice::plugin::types::{Effect, ErrorInfo, Header, LogLevel, Message, Outcome, Output};
pub use bindings::{Guest, export};

#[doc(hidden)]
pub use bindings::*;

/// An outcome that dead-letters the record with `reason` and `message`.
pub fn reject(reason: &str, message: impl Into<String>) -> Outcome {
    Outcome::Reject(ErrorInfo { reason: reason.to_string(), message: message.into() })
}

/// An outcome that sends one record on to the next stage (route none) and
/// applies `effects`.
pub fn emit(key: Option<Vec<u8>>, value: Vec<u8>, headers: Vec<Header>, effects: Vec<Effect>) -> Outcome {
    Outcome::Emit((vec![Output { route: None, key, value, headers }], effects))
}

/// The headers of `message`, to carry them over to its outputs.
pub fn headers_of(message: &Message) -> Vec<Header> {
    message.headers.iter().map(|h| Header { name: h.name.clone(), value: h.value.clone() }).collect()
}
