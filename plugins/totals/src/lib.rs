//! `totals`: line totals, item count and order total, plus the Redis
//! counters of the default pipeline as effects. Its output is the canonical
//! enriched order, keyed by order id.
// Natively only the `logic` module is used (tests, `sluice bench`).
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod logic;

use serde::Deserialize;
use sluice_order::stage;
use sluice_sdk::{Effect, Guest, Message, Outcome, emit, headers_of, reject};
use std::sync::OnceLock;

/// The stage config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Prefix of every counter key, e.g. `sluice:`.
    prefix: String,
}

static PREFIX: OnceLock<String> = OnceLock::new();

struct Totals;

impl Guest for Totals {
    fn init(config_json: String) -> Result<(), String> {
        let config: Config = serde_json::from_str(&config_json).map_err(|e| format!("totals config: {e}"))?;
        PREFIX.set(config.prefix).map_err(|_| "totals was initialised twice".to_string())
    }

    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        let prefix = PREFIX.get().map_or("", String::as_str);
        batch
            .iter()
            .map(|message| {
                let totalled = stage::parse("totals", &message.value)
                    .and_then(|mut order| logic::total(&mut order, prefix).map(|incrs| (order, incrs)));
                match totalled {
                    Ok((order, incrs)) => {
                        let effects = incrs.into_iter().map(|i| Effect::HashIncr((i.key, i.field, i.delta))).collect();
                        let key = Some(order.order_id.clone().into_bytes());
                        emit(key, stage::to_json(&order), headers_of(message), effects)
                    }
                    Err(r) => reject(r.reason, r.message),
                }
            })
            .collect()
    }
}

// Exported only from the component: natively (as in `sluice bench`) several
// plugins link into one binary, and their exports would clash.
#[cfg(target_arch = "wasm32")]
sluice_sdk::export!(Totals with_types_in sluice_sdk);
