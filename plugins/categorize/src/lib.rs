//! `categorize`: each item's category from keyword rules in the stage config,
//! unless the item brings a non-empty category of its own.

pub mod logic;

use logic::Categorizer;
use sluice_order::stage;
use sluice_sdk::{Config, Declared, Emit, Error, Record, Stage};

impl Stage for Categorizer {
    fn init(config: Config) -> Result<Self, String> {
        Categorizer::from_json(config.json())
    }

    fn declare(_: &Config) -> Declared {
        stage::declared()
    }

    fn process(&mut self, record: &Record) -> Result<Emit, Error> {
        let mut order = stage::parse("categorize", record.value())?;
        self.categorize(&mut order);
        Emit::encode(order)
    }
}

sluice_sdk::stage!(Categorizer);
