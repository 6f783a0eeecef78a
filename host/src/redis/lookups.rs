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
    /// Runs `query` on the connection, made if there is none and dropped
    /// after an error.
    fn with_connection<T>(
        &self,
        query: impl FnOnce(&mut redis::Connection) -> Result<T, redis::RedisError>,
    ) -> Result<T, redis::RedisError> {
        let mut slot = self.connection.lock().expect("lookup connection lock");
        if slot.is_none() {
            let connection = self.client.get_connection_with_timeout(LOOKUP_TIMEOUT)?;
            connection.set_read_timeout(Some(LOOKUP_TIMEOUT))?;
            connection.set_write_timeout(Some(LOOKUP_TIMEOUT))?;
            *slot = Some(connection);
        }
        let result = query(slot.as_mut().expect("connected above"));
        if result.is_err() {
            *slot = None;
        }
        result
    }
}

/// A hash as a row: none when it is empty (Redis has no empty hashes).
fn row(fields: Vec<(String, String)>) -> Option<Row> {
    (!fields.is_empty()).then_some(fields)
}

impl Fetch for RedisRows {
    fn fetch(&self, key: &str) -> Result<Option<Row>, Unavailable> {
        self.with_connection(|c| redis::cmd("HGETALL").arg(key).query::<Vec<(String, String)>>(c))
            .map(row)
            .map_err(|e| Unavailable(format!("lookup unavailable: HGETALL {key}: {e}")))
    }

    /// One `HGETALL` per key, in one pipeline: one round trip.
    fn fetch_many(&self, keys: &[String]) -> Result<Vec<Option<Row>>, Unavailable> {
        let [first, more @ ..] = keys else { return Ok(Vec::new()) };
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HGETALL").arg(key);
        }
        self.with_connection(|c| pipe.query::<Vec<Vec<(String, String)>>>(c))
            .map(|rows| rows.into_iter().map(row).collect())
            .map_err(|e| {
                let and = if more.is_empty() { String::new() } else { format!(" and {} more", more.len()) };
                Unavailable(format!("lookup unavailable: HGETALL {first}{and}: {e}"))
            })
    }
}
