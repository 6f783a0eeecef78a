//! `categorize`: each item's category from keyword rules in the stage config,
//! unless the item brings a non-empty category of its own.

pub mod logic;

use logic::Categorizer;
use sluice_order::{Order, stage};
use sluice_sdk::{Config, Declared, Emit, Error, Record, Stage};

impl Stage for Categorizer {
    fn init(config: Config) -> Result<Self, String> {
        Categorizer::from_json(config.json())
    }

    fn declare(_: &Config) -> Declared {
        stage::declared()
    }

    fn process(&mut self, record: &Record) -> Result<Emit, Error> {
        // Read in place: the order's text is not copied.
        let mut order = stage::parse_view("categorize", record.value())?;
        self.categorize(&mut order);
        Emit::encode_view::<Order>(&order)
    }
}

sluice_sdk::stage!(Categorizer);
