//! `categorize`: each item's category from keyword rules in the stage config,
//! unless the item brings a non-empty category of its own.
// Natively only the `logic` module is used (tests, `sluice bench`).
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod logic;

use logic::Categorizer;
use sluice_order::stage;
use sluice_sdk::{Guest, Message, Outcome, emit, headers_of, reject};
use std::sync::OnceLock;

static CATEGORIZER: OnceLock<Categorizer> = OnceLock::new();

struct Categorize;

impl Guest for Categorize {
    fn init(config_json: String) -> Result<(), String> {
        let categorizer = Categorizer::from_json(&config_json)?;
        CATEGORIZER.set(categorizer).map_err(|_| "categorize was initialised twice".to_string())
    }

    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        let Some(categorizer) = CATEGORIZER.get() else {
            return batch.iter().map(|_| reject("not_initialised", "categorize was not initialised")).collect();
        };
        batch
            .iter()
            .map(|message| match stage::parse("categorize", &message.value) {
                Ok(mut order) => {
                    categorizer.categorize(&mut order);
                    emit(message.key.clone(), stage::to_json(&order), headers_of(message), Vec::new())
                }
                Err(r) => reject(r.reason, r.message),
            })
            .collect()
    }
}

// Exported only from the component: natively (as in `sluice bench`) several
// plugins link into one binary, and their exports would clash.
#[cfg(target_arch = "wasm32")]
sluice_sdk::export!(Categorize with_types_in sluice_sdk);
