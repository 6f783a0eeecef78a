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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A row of a lookup table as (field, value) pairs.
pub type Row = Vec<(String, String)>;

/// Where lookups are served from.
pub trait LookupSource: Send + Sync {
    /// The row `key` of `table`; `Ok(None)` when it does not exist.
    fn lookup(&self, table: &str, key: &str) -> Result<Option<Row>, Unavailable>;

    /// The rows of `keys` as (table, key), in the same order. By default
    /// one [`LookupSource::lookup`] each.
    fn lookup_many(&self, keys: &[(&str, &str)]) -> Result<Vec<Option<Row>>, Unavailable> {
        keys.iter().map(|(table, key)| self.lookup(table, key)).collect()
    }
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

    /// The rows of `keys`, in the same order: by default one
    /// [`Fetch::fetch`] each (Redis reads them in one round trip).
    fn fetch_many(&self, keys: &[String]) -> Result<Vec<Option<Row>>, Unavailable> {
        keys.iter().map(|key| self.fetch(key)).collect()
    }
}

struct Table {
    key_prefix: String,
    ttl: Duration,
    max_rows: usize,
    rows: HashMap<String, Entry>,
}

/// A cached row (or the fact that there is none).
struct Entry {
    row: Option<Row>,
    /// From here on, a read also asks the refresher for a fresh copy.
    refresh_at: Instant,
    /// From here on, the row is not served: a read fetches it.
    expires: Instant,
    /// A refresh is queued or running.
    refreshing: bool,
}

impl Entry {
    /// A row fetched at `now`, kept for `ttl` less up to a fifth (the jitter:
    /// rows loaded together do not all expire together) and refreshed
    /// ahead once three quarters of that have passed.
    fn new(row: Option<Row>, now: Instant, ttl: Duration, jitter: u64) -> Self {
        let kept = ttl.mul_f64(1.0 - JITTER * (jitter % 1_000_000) as f64 / 1_000_000.0);
        Self { row, refresh_at: now + kept.mul_f64(REFRESH_AT), expires: now + kept, refreshing: false }
    }
}

/// The largest share of a row's `ttl_ms` its life is shortened by, at
/// random: 0.2, so the rows loaded in one burst expire over the last fifth
/// of the time-to-live instead of at one instant.
const JITTER: f64 = 0.2;
/// The share of its (jittered) life after which a row that is read is
/// refreshed in the background: 0.75, so a row in use is fetched again
/// well before it expires and a read never waits for it.
const REFRESH_AT: f64 = 0.75;
/// Refreshes waiting for the refresher at most; beyond that a row is left
/// to expire and be fetched when next read.
const REFRESH_QUEUE: usize = 4096;
/// Rows the refresher reads in one round trip at most.
const REFRESH_BATCH: usize = 256;

/// The clock of the cache (a test moves its own).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The declared tables, each row (absent rows too) kept for about its
/// table's `ttl_ms` and at most `cache_rows` rows per table (the table's
/// cache is emptied when full). Rows are read from `F` on a miss. A row read
/// in the last quarter of its life is served from the cache and refreshed
/// by a background thread, so rows in use never expire into a burst of
/// reads that block the chain; a refresh that fails leaves the row to
/// expire. A table that is not declared has no rows.
pub struct Cached<F> {
    shared: Arc<Shared<F>>,
    /// The refresher's queue, once it is started.
    refresher: Mutex<Option<SyncSender<(String, String)>>>,
}

struct Shared<F> {
    fetch: F,
    tables: Mutex<HashMap<String, Table>>,
    clock: Clock,
    /// Rows the refresher has fetched again.
    refreshed: AtomicU64,
}

impl<F: Fetch + 'static> Cached<F> {
    /// The declared `tables`, read through `fetch`.
    pub fn with(fetch: F, tables: &BTreeMap<String, LookupConfig>) -> Self {
        Self::with_clock(fetch, tables, Arc::new(Instant::now))
    }

    /// [`Cached::with`] on another clock.
    pub fn with_clock(fetch: F, tables: &BTreeMap<String, LookupConfig>, clock: Clock) -> Self {
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
        let shared = Arc::new(Shared { fetch, tables: Mutex::new(tables), clock, refreshed: AtomicU64::new(0) });
        Self { shared, refresher: Mutex::new(None) }
    }

    /// How many rows were refreshed ahead of their expiry so far.
    pub fn refreshed(&self) -> u64 {
        self.shared.refreshed.load(Ordering::Relaxed)
    }

    /// Queues `key` of `table` for the refresher; when the queue is full,
    /// the row is left to expire and be read when next asked for.
    fn refresh_or_let_expire(&self, table: &str, key: &str) {
        if !self.refresh(table, key) {
            let mut tables = self.shared.tables.lock().expect("lookup cache lock");
            if let Some(entry) = tables.get_mut(table).and_then(|t| t.rows.get_mut(key)) {
                entry.refreshing = false;
            }
        }
    }

    /// Queues `key` of `table` for the refresher, starting it if needed;
    /// false when the queue is full.
    fn refresh(&self, table: &str, key: &str) -> bool {
        let mut refresher = self.refresher.lock().expect("refresher lock");
        let queue = refresher.get_or_insert_with(|| {
            let (queue, requests) = std::sync::mpsc::sync_channel(REFRESH_QUEUE);
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("sluice-lookup-refresh".into())
                .spawn(move || shared.refresh_all(requests))
                .expect("start the lookup refresher");
            queue
        });
        queue.try_send((table.to_string(), key.to_string())).is_ok()
    }
}

impl<F: Fetch> Shared<F> {
    /// The refresher: fetches the rows it is given again, as many at a
    /// time as are waiting, and keeps each for a new time-to-live; ends
    /// when the cache is dropped.
    fn refresh_all(&self, requests: Receiver<(String, String)>) {
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            while batch.len() < REFRESH_BATCH
                && let Ok(next) = requests.try_recv()
            {
                batch.push(next);
            }
            let full_keys: Vec<String> = {
                let tables = self.tables.lock().expect("lookup cache lock");
                batch.retain(|(table, _)| tables.contains_key(table));
                batch.iter().map(|(table, key)| tables[table].full_key(key)).collect()
            };
            let fetched = self.fetch.fetch_many(&full_keys);
            let now = (self.clock)();
            let mut tables = self.tables.lock().expect("lookup cache lock");
            match fetched {
                Ok(rows) => {
                    for ((table, key), row) in batch.into_iter().zip(rows) {
                        if let Some(t) = tables.get_mut(&table) {
                            t.insert(key, row, now);
                            self.refreshed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // Served until they expire; a later read tries again.
                Err(_) => {
                    for (table, key) in batch {
                        if let Some(entry) = tables.get_mut(&table).and_then(|t| t.rows.get_mut(&key)) {
                            entry.refreshing = false;
                        }
                    }
                }
            }
        }
    }
}

impl Table {
    /// The row `key` if it is cached and alive, and whether it is now to be
    /// refreshed (it is then marked as refreshing).
    fn hit(&mut self, key: &str, now: Instant) -> Option<(Option<Row>, bool)> {
        let entry = self.rows.get_mut(key).filter(|entry| now < entry.expires)?;
        let refresh = now >= entry.refresh_at && !entry.refreshing;
        entry.refreshing |= refresh;
        Some((entry.row.clone(), refresh))
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    fn insert(&mut self, key: String, row: Option<Row>, now: Instant) {
        if self.rows.len() >= self.max_rows && !self.rows.contains_key(&key) {
            self.rows.clear();
        }
        let jitter = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), &key);
        self.rows.insert(key, Entry::new(row, now, self.ttl, jitter));
    }
}

impl<F: Fetch + 'static> LookupSource for Cached<F> {
    fn lookup(&self, table: &str, key: &str) -> Result<Option<Row>, Unavailable> {
        let now = (self.shared.clock)();
        let hit = {
            let mut tables = self.shared.tables.lock().expect("lookup cache lock");
            let Some(t) = tables.get_mut(table) else { return Ok(None) };
            t.hit(key, now)
        };
        match hit {
            Some((row, refresh)) => {
                if refresh {
                    self.refresh_or_let_expire(table, key);
                }
                Ok(row)
            }
            None => Ok(self.lookup_many(&[(table, key)])?.pop().flatten()),
        }
    }

    /// Cached rows are served at once (those late in their life are queued
    /// for the refresher); the others are read in one [`Fetch::fetch_many`],
    /// each once however often it is asked for.
    fn lookup_many(&self, keys: &[(&str, &str)]) -> Result<Vec<Option<Row>>, Unavailable> {
        let now = (self.shared.clock)();
        let mut rows = Vec::with_capacity(keys.len());
        // The rows to read, each once, and the results that wait for each.
        let mut misses: HashMap<(&str, &str), usize> = HashMap::new();
        let mut full_keys = Vec::new();
        let mut waiting = Vec::new();
        let mut refresh = Vec::new();
        {
            let mut tables = self.shared.tables.lock().expect("lookup cache lock");
            for &(table, key) in keys {
                let Some(t) = tables.get_mut(table) else {
                    rows.push(None);
                    continue;
                };
                if let Some((row, to_refresh)) = t.hit(key, now) {
                    if to_refresh {
                        refresh.push((table, key));
                    }
                    rows.push(row);
                    continue;
                }
                let miss = *misses.entry((table, key)).or_insert_with(|| {
                    full_keys.push(t.full_key(key));
                    full_keys.len() - 1
                });
                waiting.push((rows.len(), miss));
                rows.push(None);
            }
        }
        for (table, key) in refresh {
            self.refresh_or_let_expire(table, key);
        }
        if full_keys.is_empty() {
            return Ok(rows);
        }
        let fetched = self.shared.fetch.fetch_many(&full_keys)?;
        if fetched.len() != full_keys.len() {
            return Err(Unavailable(format!(
                "lookup unavailable: {} rows read for {} keys",
                fetched.len(),
                full_keys.len()
            )));
        }
        let mut tables = self.shared.tables.lock().expect("lookup cache lock");
        for (&(table, key), &miss) in &misses {
            if let Some(t) = tables.get_mut(table) {
                t.insert(key.to_string(), fetched[miss].clone(), now);
            }
        }
        drop(tables);
        for (at, miss) in waiting {
            rows[at] = fetched[miss].clone();
        }
        Ok(rows)
    }
}

impl<T: Fetch + ?Sized> Fetch for Arc<T> {
    fn fetch(&self, key: &str) -> Result<Option<Row>, Unavailable> {
        (**self).fetch(key)
    }

    fn fetch_many(&self, keys: &[String]) -> Result<Vec<Option<Row>>, Unavailable> {
        (**self).fetch_many(keys)
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
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// Rows `{key}` -> `[("key", key), ("read", n)]` (n: the how-many-th
    /// read), absent for keys ending in `-`, unavailable while `down`.
    #[derive(Default)]
    struct Counting {
        reads: AtomicUsize,
        /// Calls of `fetch_many`.
        batches: AtomicUsize,
        down: AtomicBool,
    }

    impl Fetch for Counting {
        fn fetch(&self, key: &str) -> Result<Option<Row>, Unavailable> {
            let n = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
            if self.down.load(Ordering::Relaxed) {
                return Err(Unavailable(format!("down: {key}")));
            }
            Ok((!key.ends_with('-')).then(|| vec![("key".into(), key.into()), ("read".into(), n.to_string())]))
        }

        fn fetch_many(&self, keys: &[String]) -> Result<Vec<Option<Row>>, Unavailable> {
            self.batches.fetch_add(1, Ordering::Relaxed);
            keys.iter().map(|key| self.fetch(key)).collect()
        }
    }

    fn tables(ttl_ms: u64, cache_rows: usize) -> BTreeMap<String, LookupConfig> {
        let text = format!("key_prefix = \"user:\"\nttl_ms = {ttl_ms}\ncache_rows = {cache_rows}");
        BTreeMap::from([("user".to_string(), toml::from_str(&text).expect("a lookup table"))])
    }

    /// A clock that moves only when told to.
    fn manual_clock() -> (Clock, Arc<AtomicU64>) {
        let (start, elapsed_ms) = (Instant::now(), Arc::new(AtomicU64::new(0)));
        let at = elapsed_ms.clone();
        (Arc::new(move || start + Duration::from_millis(at.load(Ordering::Relaxed))), elapsed_ms)
    }

    fn field(row: Option<Row>, name: &str) -> String {
        row.unwrap().into_iter().find(|(k, _)| k == name).unwrap().1
    }

    #[test]
    fn rows_and_absent_rows_are_served_from_the_cache_within_their_ttl() {
        let backend = Arc::new(Counting::default());
        let cached = Cached::with(backend.clone(), &tables(60_000, 100));
        assert_eq!(field(cached.lookup("user", "1").unwrap(), "key"), "user:1");
        assert_eq!(cached.lookup("user", "2-").unwrap(), None);
        backend.down.store(true, Ordering::Relaxed);
        assert!(cached.lookup("user", "1").unwrap().is_some(), "a cached row outlives an outage");
        assert_eq!(cached.lookup("user", "2-").unwrap(), None, "absent rows are cached too");
        assert_eq!(backend.reads.load(Ordering::Relaxed), 2);
        assert_eq!(cached.lookup("nope", "1").unwrap(), None, "an undeclared table has no rows");
        assert_eq!(cached.lookup("user", "3").unwrap_err().to_string(), "down: user:3");
    }

    #[test]
    fn the_rows_a_batch_misses_are_read_together_each_once() {
        let backend = Arc::new(Counting::default());
        let cached = Cached::with(backend.clone(), &tables(60_000, 100));
        cached.lookup("user", "1").unwrap();
        let keys = [("user", "1"), ("user", "2"), ("nope", "2"), ("user", "3-"), ("user", "2")];
        let rows = cached.lookup_many(&keys).unwrap();
        let reads: Vec<Option<String>> =
            rows.iter().map(|row| row.as_ref().map(|row| field(Some(row.clone()), "read"))).collect();
        let read = |n: &str| Some(n.to_string());
        // Row 1 from the cache; rows 2 and 3- read once each, together.
        assert_eq!(reads, [read("1"), read("2"), None, None, read("2")]);
        assert_eq!(backend.reads.load(Ordering::Relaxed), 3);
        assert_eq!(backend.batches.load(Ordering::Relaxed), 2, "one read for the first lookup, one for the batch");
        // All cached now, the absent row too: no read at all.
        cached.lookup_many(&keys).unwrap();
        assert_eq!(backend.batches.load(Ordering::Relaxed), 2);

        backend.down.store(true, Ordering::Relaxed);
        assert!(cached.lookup_many(&[("user", "1"), ("user", "2")]).is_ok(), "cached rows outlive an outage");
        let error = cached.lookup_many(&[("user", "1"), ("user", "4")]).unwrap_err();
        assert_eq!(error.to_string(), "down: user:4");
    }

    #[test]
    fn an_expired_row_is_read_again_and_a_full_cache_starts_over() {
        let backend = Arc::new(Counting::default());
        let expiring = Cached::with(backend.clone(), &tables(0, 100));
        expiring.lookup("user", "1").unwrap();
        expiring.lookup("user", "1").unwrap();
        assert_eq!(backend.reads.load(Ordering::Relaxed), 2, "a ttl of 0 keeps nothing");

        let backend = Arc::new(Counting::default());
        let small = Cached::with(backend.clone(), &tables(60_000, 2));
        for key in ["1", "2", "3", "1"] {
            small.lookup("user", key).unwrap();
        }
        assert_eq!(backend.reads.load(Ordering::Relaxed), 4, "the third row emptied the full cache");
    }

    #[test]
    fn rows_loaded_together_expire_over_the_last_fifth_of_their_ttl() {
        let backend = Arc::new(Counting::default());
        let (clock, elapsed_ms) = manual_clock();
        let cached = Cached::with_clock(backend.clone(), &tables(10_000, 10_000), clock);
        for key in 0..1000 {
            cached.lookup("user", &key.to_string()).unwrap();
        }
        // Before 8 s (less the refresh-ahead window) nothing has expired;
        // by 10 s everything has; in between, rows expire a few at a time.
        let still_cached = |ms: u64| {
            elapsed_ms.store(ms, Ordering::Relaxed);
            let tables = cached.shared.tables.lock().unwrap();
            let now = (cached.shared.clock)();
            tables["user"].rows.values().filter(|e| now < e.expires).count()
        };
        assert_eq!(still_cached(7_999), 1000);
        let (at_8_5, at_9, at_9_5) = (still_cached(8_500), still_cached(9_000), still_cached(9_500));
        assert!(1000 > at_8_5 && at_8_5 > at_9 && at_9 > at_9_5 && at_9_5 > 0, "{at_8_5} {at_9} {at_9_5}");
        assert_eq!(still_cached(10_000), 0);
        assert_eq!(backend.reads.load(Ordering::Relaxed), 1000, "counting fetched nothing");
    }

    #[test]
    fn a_row_read_late_in_its_life_is_served_at_once_and_refreshed_in_the_background() {
        let backend = Arc::new(Counting::default());
        let (clock, elapsed_ms) = manual_clock();
        let cached = Cached::with_clock(backend.clone(), &tables(10_000, 100), clock);
        assert_eq!(field(cached.lookup("user", "1").unwrap(), "read"), "1");
        // Three quarters of the shortest possible life (8 s) have passed:
        // the cached row is served and a refresh is queued.
        elapsed_ms.store(7_900, Ordering::Relaxed);
        assert_eq!(field(cached.lookup("user", "1").unwrap(), "read"), "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while cached.refreshed() == 0 {
            assert!(Instant::now() < deadline, "no refresh");
            std::thread::yield_now();
        }
        assert_eq!(backend.reads.load(Ordering::Relaxed), 2);
        // Past the first copy's longest life, the refreshed row is served
        // with no read.
        elapsed_ms.store(10_500, Ordering::Relaxed);
        assert_eq!(field(cached.lookup("user", "1").unwrap(), "read"), "2");
        assert_eq!(backend.reads.load(Ordering::Relaxed), 2);

        // A refresh that fails leaves the row served until it expires.
        backend.down.store(true, Ordering::Relaxed);
        elapsed_ms.store(7_900 + 7_900, Ordering::Relaxed);
        assert_eq!(field(cached.lookup("user", "1").unwrap(), "read"), "2");
        let deadline = Instant::now() + Duration::from_secs(10);
        while backend.reads.load(Ordering::Relaxed) < 3 {
            assert!(Instant::now() < deadline, "no refresh attempt");
            std::thread::yield_now();
        }
        assert_eq!(field(cached.lookup("user", "1").unwrap(), "read"), "2");
        elapsed_ms.store(7_900 + 10_001, Ordering::Relaxed);
        assert_eq!(cached.lookup("user", "1").unwrap_err().to_string(), "down: user:1", "expired, then fetched");
    }
}
