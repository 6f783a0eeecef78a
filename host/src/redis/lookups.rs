//! Lookup rows read from Redis hashes: `HGETALL {key_prefix}{key}`, behind
//! the cache of [`crate::lookup::Cached`].

use crate::config::LookupConfig;
use crate::lookup::{Cached, Fetch, Row, Unavailable};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Connect and I/O timeout of a lookup. Default 2 s: long enough for a busy
/// Redis, short enough that an outage is noticed and the batch retried.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Rows as Redis hashes. Called from plugin code on the processing thread,
/// so it uses a blocking connection, made lazily and remade after an error.
pub struct RedisRows {
    client: redis::Client,
    connection: Mutex<Option<redis::Connection>>,
}

/// The lookup tables of a pipeline, served from Redis through the cache.
pub type RedisLookups = Cached<RedisRows>;

impl RedisLookups {
    /// Lookups for the declared tables. Connects lazily.
    pub fn new(url: &str, tables: &BTreeMap<String, LookupConfig>) -> Result<Self, redis::RedisError> {
        let rows = RedisRows { client: redis::Client::open(url)?, connection: Mutex::new(None) };
        Ok(Cached::with(rows, tables))
    }
}

impl RedisRows {
    fn hgetall(&self, key: &str) -> Result<Option<Row>, redis::RedisError> {
        let mut slot = self.connection.lock().expect("lookup connection lock");
        if slot.is_none() {
            let connection = self.client.get_connection_with_timeout(LOOKUP_TIMEOUT)?;
            connection.set_read_timeout(Some(LOOKUP_TIMEOUT))?;
            connection.set_write_timeout(Some(LOOKUP_TIMEOUT))?;
            *slot = Some(connection);
        }
        let connection = slot.as_mut().expect("connected above");
        let result = redis::cmd("HGETALL").arg(key).query::<Vec<(String, String)>>(connection);
        if result.is_err() {
            *slot = None;
        }
        result.map(|row| (!row.is_empty()).then_some(row))
    }
}

impl Fetch for RedisRows {
    fn fetch(&self, key: &str) -> Result<Option<Row>, Unavailable> {
        self.hgetall(key).map_err(|e| Unavailable(format!("lookup unavailable: HGETALL {key}: {e}")))
    }
}
