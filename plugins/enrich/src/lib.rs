//! `enrich`: user, store and product details from the `user`, `store` and
//! `product` lookup tables, which the stage declares in pipeline.toml.

pub mod logic;

use sluice_order::stage;
use sluice_sdk::{Config, Declared, Emit, Error, Record, Stage, lookup};

struct Enrich;

impl Stage for Enrich {
    fn init(config: Config) -> Result<Self, String> {
        config.expect_empty("enrich").map(|()| Enrich)
    }

    fn declare(_: &Config) -> Declared {
        stage::declared()
    }

    fn process(&mut self, record: &Record) -> Result<Emit, Error> {
        let mut order = stage::parse("enrich", record.value())?;
        logic::enrich(&mut order, &mut |table, key| lookup(table, key))?;
        Emit::encode(order)
    }
}

sluice_sdk::stage!(Enrich);
