//! Lookup tables: what a plugin's `lookup(table, key)` is served from.
//!
//! The [`LookupSource`] trait and every implementation: [`Cached`] rows
//! with a time-to-live per table in front of a [`Fetch`] (Redis hashes in
//! production, `redis::RedisRows`), [`InMemory`] tables (the benchmark and
//! `sluice test`), and [`Offline`] (`sluice validate`, where every lookup
//! is unavailable).

use crate::config::LookupConfig;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A row of a lookup table as (field, value) pairs.
pub type Row = Vec<(String, String)>;

/// Where lookups are served from.
pub trait LookupSource: Send + Sync {
    /// The row `key` of `table`; `Ok(None)` when it does not exist.
    fn lookup(&self, table: &str, key: &str) -> Result<Option<Row>, Unavailable>;
}

/// A stage cannot run now (a lookup backend is down, or the stage is halted
/// by its circuit breaker); the batch must be retried later.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// Reads one row by its full key (the table's prefix included).
pub trait Fetch: Send + Sync {
    /// The row, `Ok(None)` when there is none.
    fn fetch(&self, key: &str) -> Result<Option<Row>, Unavailable>;
}

struct Table {
    key_prefix: String,
    ttl: Duration,
    max_rows: usize,
    rows: HashMap<String, (Instant, Option<Row>)>,
}

/// The declared tables, each row (absent rows too) kept for its table's
/// `ttl_ms` and at most `cache_rows` rows per table (the table's cache is
/// emptied when full). Rows are read from `F` on a miss; a table that is not
/// declared has no rows.
pub struct Cached<F> {
    fetch: F,
    tables: Mutex<HashMap<String, Table>>,
}

impl<F: Fetch> Cached<F> {
    /// The declared `tables`, read through `fetch`.
    pub fn with(fetch: F, tables: &BTreeMap<String, LookupConfig>) -> Self {
        let tables = tables
            .iter()
            .map(|(name, t)| {
                let table = Table {
                    key_prefix: t.key_prefix.clone(),
                    ttl: Duration::from_millis(t.ttl_ms),
                    max_rows: t.cache_rows.get(),
                    rows: HashMap::new(),
                };
                (name.clone(), table)
            })
            .collect();
        Self { fetch, tables: Mutex::new(tables) }
    }
}

impl<F: Fetch> LookupSource for Cached<F> {
    fn lookup(&self, table: &str, key: &str) -> Result<Option<Row>, Unavailable> {
        let full_key = {
            let tables = self.tables.lock().expect("lookup cache lock");
            let Some(t) = tables.get(table) else {
                return Ok(None);
            };
            if let Some((at, row)) = t.rows.get(key)
                && at.elapsed() < t.ttl
            {
                return Ok(row.clone());
            }
            format!("{}{key}", t.key_prefix)
        };
        let row = self.fetch.fetch(&full_key)?;
        let mut tables = self.tables.lock().expect("lookup cache lock");
        if let Some(t) = tables.get_mut(table) {
            if t.rows.len() >= t.max_rows {
                t.rows.clear();
            }
            t.rows.insert(key.to_string(), (Instant::now(), row.clone()));
        }
        Ok(row)
    }
}

/// Tables by name, rows by key, fields by name.
pub type Tables = BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>;

/// Lookup tables held in memory.
pub struct InMemory(pub Tables);

impl LookupSource for InMemory {
    fn lookup(&self, table: &str, key: &str) -> Result<Option<Row>, Unavailable> {
        Ok(self
            .0
            .get(table)
            .and_then(|t| t.get(key))
            .map(|row| row.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }
}

/// Lookups for `sluice validate`: nothing is connected, so every lookup is
/// unavailable.
pub struct Offline;

impl LookupSource for Offline {
    fn lookup(&self, table: &str, key: &str) -> Result<Option<Row>, Unavailable> {
        Err(Unavailable(format!("lookup unavailable: no Redis while validating (lookup {table}/{key})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Rows `{key}` -> `[("key", key)]`, absent for keys ending in `-`,
    /// unavailable while `down`; counts its reads.
    #[derive(Default)]
    struct Counting {
        reads: AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    impl Fetch for &Counting {
        fn fetch(&self, key: &str) -> Result<Option<Row>, Unavailable> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(Unavailable(format!("down: {key}")));
            }
            Ok((!key.ends_with('-')).then(|| vec![("key".into(), key.into())]))
        }
    }

    fn tables(ttl_ms: u64, cache_rows: usize) -> BTreeMap<String, LookupConfig> {
        let text = format!("key_prefix = \"user:\"\nttl_ms = {ttl_ms}\ncache_rows = {cache_rows}");
        BTreeMap::from([("user".to_string(), toml::from_str(&text).expect("a lookup table"))])
    }

    #[test]
    fn rows_and_absent_rows_are_served_from_the_cache_within_their_ttl() {
        let backend = Counting::default();
        let cached = Cached::with(&backend, &tables(60_000, 100));
        assert_eq!(cached.lookup("user", "1").unwrap(), Some(vec![("key".into(), "user:1".into())]));
        assert_eq!(cached.lookup("user", "2-").unwrap(), None);
        backend.down.store(true, Ordering::Relaxed);
        assert!(cached.lookup("user", "1").unwrap().is_some(), "a cached row outlives an outage");
        assert_eq!(cached.lookup("user", "2-").unwrap(), None, "absent rows are cached too");
        assert_eq!(backend.reads.load(Ordering::Relaxed), 2);
        assert_eq!(cached.lookup("nope", "1").unwrap(), None, "an undeclared table has no rows");
        assert_eq!(cached.lookup("user", "3").unwrap_err().to_string(), "down: user:3");
    }

    #[test]
    fn an_expired_row_is_read_again_and_a_full_cache_starts_over() {
        let backend = Counting::default();
        let expiring = Cached::with(&backend, &tables(0, 100));
        expiring.lookup("user", "1").unwrap();
        expiring.lookup("user", "1").unwrap();
        assert_eq!(backend.reads.load(Ordering::Relaxed), 2, "a ttl of 0 keeps nothing");

        let backend = Counting::default();
        let small = Cached::with(&backend, &tables(60_000, 2));
        for key in ["1", "2", "3", "1"] {
            small.lookup("user", key).unwrap();
        }
        assert_eq!(backend.reads.load(Ordering::Relaxed), 4, "the third row emptied the full cache");
    }
}
