//! `totals`: line totals, item count and order total, plus the Redis
//! counters of the default pipeline as effects. Its output is the canonical
//! enriched order, keyed by order id.

pub mod logic;

use serde::Deserialize;
use sluice_order::{Order, stage};
use sluice_sdk::{Config, Declared, Emit, Error, Record, Stage};

/// The stage config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Prefix of every counter key, e.g. `sluice:`.
    prefix: String,
}

struct Totals {
    keys: logic::Keys,
}

impl Stage for Totals {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(Totals { keys: logic::Keys::new(&settings.prefix) })
    }

    fn declare(_: &Config) -> Declared {
        stage::declared()
    }

    fn process(&mut self, record: &Record) -> Result<Emit, Error> {
        // Read in place: the order's text is not copied.
        let mut order = stage::parse_view("totals", record.value())?;
        let increments = logic::total(&mut order, &self.keys)?;
        let emit = Emit::encode_view::<Order>(&order)?.key(order.order_id.as_bytes());
        Ok(increments.iter().fold(emit, |emit, (key, field, delta)| emit.incr(key, field, delta)))
    }
}

sluice_sdk::stage!(Totals);
