//! `normalize`: any of the three order shapes (web shop, grocery, delivery)
//! to one canonical order, keyed by its order id. Cancelled delivery orders
//! are filtered; records that cannot be mapped are rejected with a reason.
// Natively only the `logic` module is used (tests, `sluice bench`).
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod logic;
mod ts;

use logic::Normalized;
use sluice_sdk::{Guest, Message, Outcome, emit, headers_of, reject};

struct Normalize;

impl Guest for Normalize {
    fn init(config_json: String) -> Result<(), String> {
        match config_json.trim() {
            "" | "{}" => Ok(()),
            other => Err(format!("normalize takes no config, got {other}")),
        }
    }

    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        batch
            .iter()
            .map(|message| match logic::normalize(&message.value) {
                Ok(Normalized::Order(order)) => {
                    let value = serde_json::to_vec(&order).expect("an order always serializes");
                    emit(Some(order.order_id.into_bytes()), value, headers_of(message), Vec::new())
                }
                Ok(Normalized::Filtered) => Outcome::Filtered,
                Err(r) => reject(r.reason, r.message),
            })
            .collect()
    }
}

// Exported only from the component: natively (as in `sluice bench`) several
// plugins link into one binary, and their exports would clash.
#[cfg(target_arch = "wasm32")]
sluice_sdk::export!(Normalize with_types_in sluice_sdk);
