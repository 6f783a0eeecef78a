//! `normalize`: any of the three order shapes (web shop, grocery, delivery)
//! to one canonical order, keyed by its order id. Cancelled delivery orders
//! are filtered; records that cannot be mapped are rejected with a reason.

mod fast;
pub mod logic;
mod ts;

use logic::Normalized;
use sluice_order::Order;
use sluice_sdk::{Config, Declared, Emit, Error, Record, Stage};

struct Normalize;

impl Stage for Normalize {
    fn init(config: Config) -> Result<Self, String> {
        config.expect_empty("normalize").map(|()| Normalize)
    }

    /// Any of the three shapes in, as JSON; canonical orders out.
    fn declare(_: &Config) -> Declared {
        Declared::any().writes::<Order>()
    }

    fn process(&mut self, record: &Record) -> Result<Emit, Error> {
        match logic::normalize(record.value())? {
            Normalized::Order(order) => {
                let key = order.order_id.clone();
                Ok(Emit::encode(order)?.key(key))
            }
            Normalized::Filtered => Ok(Emit::filtered()),
        }
    }
}

sluice_sdk::stage!(Normalize);
