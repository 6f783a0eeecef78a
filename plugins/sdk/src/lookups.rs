//! Rows of the lookup tables a stage declared in pipeline.toml: one at a
//! time ([`lookup`]), or every row a batch needs in one host call
//! ([`Lookups`], named by [`crate::Stage::lookups`] before the batch's
//! records are processed).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// A row of a lookup table: (field, value) pairs.
pub type Row = Vec<(String, String)>;

/// A row shared, not copied, by every record of a batch that reads it.
pub type SharedRow = Rc<[(String, String)]>;

/// Rows by table and key.
type Rows = HashMap<String, HashMap<String, Option<SharedRow>>>;

std::thread_local! {
    /// The rows read for the batch being processed.
    static READ: RefCell<Rows> = RefCell::new(HashMap::new());
}

/// The row `key` of lookup table `table` (which the stage must declare in
/// pipeline.toml), or `None` if there is none. A row that
/// [`crate::Stage::lookups`] named for the batch being processed is served
/// without a host call. Natively, always `None`.
pub fn lookup(table: &str, key: &str) -> Option<Row> {
    lookup_shared(table, key).map(|row| row.to_vec())
}

/// [`lookup`] without copying the row: a row read for the batch is shared
/// by every record that reads it.
pub fn lookup_shared(table: &str, key: &str) -> Option<SharedRow> {
    let read = READ.with(|read| read.borrow().get(table).and_then(|rows| rows.get(key)).cloned());
    match read {
        Some(row) => row,
        None => host::lookup(table, key).map(Rc::from),
    }
}

/// The rows the records of a batch need, named by [`crate::Stage::lookups`]
/// and read together, in one host call, before any record of the batch is
/// processed: the host serves the rows it has cached and reads the others
/// from Redis in one round trip.
#[derive(Debug, Default)]
pub struct Lookups {
    named: HashMap<String, HashSet<String>>,
}

impl Lookups {
    /// Names the row `key` of `table`. A row named more than once is read
    /// once.
    pub fn row(&mut self, table: &str, key: &str) {
        match self.named.get_mut(table) {
            Some(keys) if keys.contains(key) => {}
            Some(keys) => {
                keys.insert(key.to_string());
            }
            None => {
                self.named.insert(table.to_string(), HashSet::from([key.to_string()]));
            }
        }
    }

    /// Reads every named row in one host call and keeps them for [`lookup`]
    /// until [`forget`].
    pub(crate) fn read(self) {
        if self.named.is_empty() {
            return;
        }
        let keys: Vec<host::RowKey> = self
            .named
            .into_iter()
            .flat_map(|(table, keys)| keys.into_iter().map(move |key| host::RowKey { table: table.clone(), key }))
            .collect();
        let rows = host::lookup_many(&keys);
        READ.with(|read| {
            let mut read = read.borrow_mut();
            for (named, row) in keys.into_iter().zip(rows) {
                read.entry(named.table).or_default().insert(named.key, row.map(Rc::from));
            }
        });
    }
}

/// Drops the rows read for the batch that has been processed.
pub(crate) fn forget() {
    READ.with(|read| read.borrow_mut().clear());
}

#[cfg(target_arch = "wasm32")]
mod host {
    pub use crate::bindings::sluice::plugin0_1_0::host::lookup;
    pub use crate::bindings::sluice::plugin0_4_0::lookups::{RowKey, lookup_many};
}

/// Natively there is no host: no table has rows.
#[cfg(not(target_arch = "wasm32"))]
mod host {
    use super::Row;

    pub struct RowKey {
        pub table: String,
        pub key: String,
    }

    pub fn lookup(_: &str, _: &str) -> Option<Row> {
        None
    }

    pub fn lookup_many(keys: &[RowKey]) -> Vec<Option<Row>> {
        keys.iter().map(|_| None).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_named_twice_is_read_once_and_served_until_forgotten() {
        let mut rows = Lookups::default();
        rows.row("product", "W");
        rows.row("product", "W");
        rows.row("user", "W");
        assert_eq!(rows.named.values().map(HashSet::len).sum::<usize>(), 2);
        rows.read();
        READ.with(|read| assert_eq!(read.borrow()["product"]["W"], None, "natively no table has rows"));
        assert_eq!(lookup("product", "W"), None);
        forget();
        READ.with(|read| assert!(read.borrow().is_empty()));
    }

    /// Names a row per record and keeps what it parsed for `process`;
    /// refuses records that are not JSON before they are processed.
    struct Named(Vec<String>);

    impl crate::Stage for Named {
        fn init(_: crate::Config) -> Result<Self, String> {
            Ok(Named(Vec::new()))
        }

        fn lookups(&mut self, record: &crate::Record<'_>, rows: &mut Lookups) -> Result<(), crate::Error> {
            let id: String = record.json()?;
            rows.row("user", &id);
            self.0.push(format!("named {id}"));
            record.keep(id);
            Ok(())
        }

        fn process(&mut self, record: &crate::Record) -> Result<crate::Emit, crate::Error> {
            let id: String = record.kept().expect("kept by lookups");
            assert_eq!(record.kept::<String>(), None, "handed over once");
            self.0.push(format!("processed {id}"));
            crate::Emit::json(&id)
        }
    }

    #[test]
    fn every_record_names_its_rows_before_any_is_processed_and_a_refused_one_is_not_processed() {
        use crate::Stage;
        let record = |value: &str| crate::Record::from_value(value.as_bytes().to_vec());
        let mut stage = Named(Vec::new());
        let results = stage.process_batch(&[record("\"a\""), record("{"), record("\"b\"")]);
        assert_eq!(stage.0, ["named a", "named b", "processed a", "processed b"]);
        assert!(matches!(&results[0], Ok(emit) if emit.outputs()[0].value == b"\"a\""));
        assert!(matches!(&results[1], Err(e) if e.reason() == "invalid_json"));
        READ.with(|read| assert!(read.borrow().is_empty(), "forgotten after the batch"));
    }
}
