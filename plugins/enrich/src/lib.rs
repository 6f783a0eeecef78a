//! `enrich`: user, store and product details from the `user`, `store` and
//! `product` lookup tables, which the stage declares in pipeline.toml.
// Natively only the `logic` module is used (tests, `sluice bench`).
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod logic;

use sluice_order::stage;
use sluice_sdk::{Guest, Message, Outcome, emit, headers_of, lookup, reject};

struct Enrich;

impl Guest for Enrich {
    fn init(config_json: String) -> Result<(), String> {
        match config_json.trim() {
            "" | "{}" => Ok(()),
            other => Err(format!("enrich takes no config, got {other}")),
        }
    }

    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        batch
            .iter()
            .map(|message| {
                let enriched = stage::parse("enrich", &message.value)
                    .and_then(|mut order| logic::enrich(&mut order, &mut |t, k| lookup(t, k)).map(|()| order));
                match enriched {
                    Ok(order) => emit(message.key.clone(), stage::to_json(&order), headers_of(message), Vec::new()),
                    Err(r) => reject(r.reason, r.message),
                }
            })
            .collect()
    }
}

// Exported only from the component: natively (as in `sluice bench`) several
// plugins link into one binary, and their exports would clash.
#[cfg(target_arch = "wasm32")]
sluice_sdk::export!(Enrich with_types_in sluice_sdk);
