//! `enrich`: user, store and product details from the `user`, `store` and
//! `product` lookup tables, which the stage declares in pipeline.toml. The
//! rows of a whole batch are read in one host call.

pub mod logic;

use sluice_order::{Order, stage};
use sluice_sdk::{Config, Declared, Emit, Error, Lookups, Record, Stage, lookup_shared};

struct Enrich;

impl Stage for Enrich {
    fn init(config: Config) -> Result<Self, String> {
        config.expect_empty("enrich").map(|()| Enrich)
    }

    fn declare(_: &Config) -> Declared {
        stage::declared()
    }

    fn lookups(&mut self, record: &Record, rows: &mut Lookups) -> Result<(), Error> {
        let order = stage::parse_view("enrich", record.value())?;
        logic::rows(&order, &mut |table, key| rows.row(table, key));
        Ok(())
    }

    fn process(&mut self, record: &Record) -> Result<Emit, Error> {
        // Read in place (again: reading a view copies no text).
        let mut order = stage::parse_view("enrich", record.value())?;
        logic::enrich(&mut order, &mut |table, key| lookup_shared(table, key))?;
        Emit::encode_view::<Order>(&order)
    }
}

sluice_sdk::stage!(Enrich);
