//! Lookup tables served from Redis hashes through an in-process cache.

use crate::config::LookupConfig;
use crate::pipeline::{LookupSource, Row, Unavailable};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connect and I/O timeout of a lookup. Default 2 s: long enough for a busy
/// Redis, short enough that an outage is noticed and the batch retried.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

struct Table {
    key_prefix: String,
    ttl: Duration,
    max_rows: usize,
    rows: HashMap<String, (Instant, Option<Row>)>,
}

/// `HGETALL {key_prefix}{key}` per table, cached for the table's TTL
/// (absent rows too). Called from plugin code on the processing thread, so
/// it uses a blocking connection.
pub struct RedisLookups {
    client: redis::Client,
    connection: Mutex<Option<redis::Connection>>,
    tables: Mutex<HashMap<String, Table>>,
}

impl RedisLookups {
    /// Lookups for the declared tables. Connects lazily.
    pub fn new(url: &str, tables: &BTreeMap<String, LookupConfig>) -> Result<Self, redis::RedisError> {
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
        Ok(Self { client: redis::Client::open(url)?, connection: Mutex::new(None), tables: Mutex::new(tables) })
    }

    fn fetch(&self, redis_key: &str) -> Result<Option<Row>, redis::RedisError> {
        let mut slot = self.connection.lock().expect("lookup connection lock");
        if slot.is_none() {
            let connection = self.client.get_connection_with_timeout(LOOKUP_TIMEOUT)?;
            connection.set_read_timeout(Some(LOOKUP_TIMEOUT))?;
            connection.set_write_timeout(Some(LOOKUP_TIMEOUT))?;
            *slot = Some(connection);
        }
        let connection = slot.as_mut().expect("connected above");
        let result = redis::cmd("HGETALL").arg(redis_key).query::<Vec<(String, String)>>(connection);
        if result.is_err() {
            *slot = None;
        }
        result.map(|row| (!row.is_empty()).then_some(row))
    }
}

impl LookupSource for RedisLookups {
    fn lookup(&self, table: &str, key: &str) -> Result<Option<Row>, Unavailable> {
        let redis_key = {
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
        let row =
            self.fetch(&redis_key).map_err(|e| Unavailable(format!("lookup unavailable: HGETALL {redis_key}: {e}")))?;
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

/// Lookups for `sluice validate`: nothing is connected, so every lookup is
/// unavailable.
pub struct Offline;

impl LookupSource for Offline {
    fn lookup(&self, table: &str, key: &str) -> Result<Option<Row>, Unavailable> {
        Err(Unavailable(format!("lookup unavailable: no Redis while validating (lookup {table}/{key})")))
    }
}
