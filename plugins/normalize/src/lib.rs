//! `normalize`: any of the three order shapes (web shop, grocery, delivery)
//! to one canonical order, keyed by its order id. Cancelled delivery orders
//! are filtered; records that cannot be mapped are rejected with a reason.

pub mod logic;
mod ts;

use logic::Normalized;
use sluice_sdk::{Config, Emit, Error, Record, Stage};

struct Normalize;

impl Stage for Normalize {
    fn init(config: Config) -> Result<Self, String> {
        config.expect_empty("normalize").map(|()| Normalize)
    }

    fn process(&mut self, record: &Record) -> Result<Emit, Error> {
        match logic::normalize(record.value())? {
            Normalized::Order(order) => Ok(Emit::json(&order)?.key(order.order_id)),
            Normalized::Filtered => Ok(Emit::filtered()),
        }
    }
}

sluice_sdk::stage!(Normalize);
