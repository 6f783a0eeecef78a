//! Keyed state of stages (`sluice:plugin/state@0.2.0`): per stage and per
//! input partition, read through an in-memory view, made durable in Redis
//! together with the batch that wrote it.
//!
//! How it stays consistent with the delivery guarantees:
//! - A partition's state is *claimed* when the chain first sees the
//!   partition, after it was revoked, or when it goes back to an offset it
//!   has already processed (a rewind, an aborted transaction). The claim
//!   rolls Redis back to the state before the batch's first record, using
//!   the undo log the writes left, and takes ownership of the partition with
//!   a fresh token.
//! - A write is visible at once to the records after it (the view), and is
//!   applied to Redis with the batch, after the chain, with its old value
//!   saved in the partition's undo log. The apply is refused when another
//!   claim took the partition since: a zombie instance, or a batch this
//!   instance processed before it rewound, never writes over the state of
//!   the records read again.
//! - Undo entries below the offset committed for the partition are dropped
//!   by the next apply.
//!
//! The writes of a call that fails (a trap, a deadline, a lookup that
//! could not be served) are dropped with the call. The writes of a call
//! that succeeds are kept whatever happens to its records afterwards (a
//! rejection by this or a later stage): a record processed again makes the
//! same writes.
//!
//! A value past its time-to-live reads as absent, and the read that finds
//! it deletes it (as a write of the reading record). Expired values nobody
//! reads again are deleted by sweeps: when a partition's state is first
//! measured against the stage's limits (once per claim), when a write would
//! exceed a limit (at most every [`RECOUNT_EVERY`], less often while sweeps
//! find nothing to delete), and in the background
//! every [`SWEEP_EVERY`](crate::run) for the partitions this instance owns.

use crate::bindings::Message;
use crate::lookup::Unavailable;
use crate::record::Record;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest key of a stage's state, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Values kept in the in-memory view of one partition before the ones
/// already durable in Redis are dropped from it (they are read again from
/// Redis when needed).
pub const VIEW_CAPACITY: usize = 100_000;
/// How often, at most, a write refused by a limit sweeps the partition's
/// expired values and counts its state again before refusing. A sweep that
/// deletes nothing doubles the wait, up to [`RECOUNT_AT_MOST_EVERY`]; and
/// the wait is at least 20 times what the last sweep took, so that a
/// partition full of live values never spends more than 5% of the chain's
/// time being swept.
pub const RECOUNT_EVERY: Duration = Duration::from_secs(5);
/// The longest wait between sweeps of a partition whose writes are refused.
pub const RECOUNT_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// The size of a stage's state in a partition, and when a refused write
/// may sweep it again.
#[derive(Debug, Clone, Copy)]
struct Counted {
    size: Size,
    swept: Instant,
    wait: Duration,
}

/// A partition of a source topic.
pub type Partition = (Arc<str>, i32);

/// Where state is made durable.
pub trait Durable: Send + Sync {
    /// Rolls the partition's state back to before offset `position` and
    /// makes `token` its owner. Returns the writes undone.
    fn claim(&self, partition: &Partition, position: i64, token: &str) -> Result<usize, Unavailable>;

    /// The stored values of `fields` of the hash `hash`, as stored (see
    /// [`encode`]).
    fn read(&self, hash: &str, fields: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Unavailable>;

    /// Deletes the values of `hash`, the state of a stage in `partition`,
    /// expired by `now_ms`, and measures what is left; `None`, deleting
    /// nothing, unless `token` still owns the partition.
    fn sweep(&self, partition: &Partition, token: &str, hash: &str, now_ms: u64) -> Result<Option<Swept>, Unavailable>;

    /// Whether the state is kept here (not only in the view), so that a
    /// sweep measures it.
    fn keeps(&self) -> bool {
        true
    }
}

/// How much state a stage holds in a partition: what its limits count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    /// Keys.
    pub keys: u64,
    /// Bytes of keys and values (see [`held_bytes`]).
    pub bytes: u64,
}

/// What a write changes of a [`Size`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Delta {
    keys: i64,
    bytes: i64,
}

impl Delta {
    fn add(&mut self, other: Delta) {
        self.keys += other.keys;
        self.bytes += other.bytes;
    }
}

impl Size {
    fn apply(&mut self, delta: Delta) {
        self.keys = self.keys.saturating_add_signed(delta.keys);
        self.bytes = self.bytes.saturating_add_signed(delta.bytes);
    }
}

/// What a key and its value weigh against `limits.state_mib`: their bytes,
/// without the stored expiry.
pub fn held_bytes(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// What a sweep of a hash found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// The values left.
    pub left: Size,
    /// The expired values deleted: key and [`held_bytes`].
    pub deleted: Vec<(String, u64)>,
}

/// State kept in memory only (`sluice test`, `sluice bench`): nothing to
/// roll back, nothing to read.
pub struct InMemory;

impl Durable for InMemory {
    fn claim(&self, _: &Partition, _: i64, _: &str) -> Result<usize, Unavailable> {
        Ok(0)
    }

    fn read(&self, _: &str, fields: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Unavailable> {
        Ok(vec![None; fields.len()])
    }

    fn sweep(&self, _: &Partition, _: &str, _: &str, _: u64) -> Result<Option<Swept>, Unavailable> {
        Ok(Some(Swept::default()))
    }

    fn keeps(&self) -> bool {
        false
    }
}

/// A stage's limits on its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Most keys per input partition (`limits.state_keys`).
    pub max_keys: u64,
    /// Most bytes of keys and values per input partition
    /// (`limits.state_mib`).
    pub max_bytes: u64,
    /// Largest value in bytes (`limits.state_value_kib`).
    pub max_value_bytes: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self { max_keys: 1_000_000, max_bytes: 256 << 20, max_value_bytes: 64 * 1024 }
    }
}

/// One write to a stage's state, as it is applied to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// The source partition of the record that wrote it.
    pub partition: Partition,
    /// That record's offset.
    pub offset: i64,
    /// The owner token of the partition when it was written.
    pub token: Arc<str>,
    /// The Redis hash of the stage's state in this partition.
    pub hash: Arc<str>,
    /// The key.
    pub key: String,
    /// The stored value (see [`encode`]); `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// A value in a partition's view.
#[derive(Debug, Clone)]
struct Held {
    /// `None`: the key is absent.
    value: Option<Vec<u8>>,
    /// Wall-clock ms after which the value is gone (0: never).
    expires_ms: u64,
    /// The offset of the last write, if written since the claim.
    written_at: Option<i64>,
}

impl Held {
    fn absent() -> Self {
        Self { value: None, expires_ms: 0, written_at: None }
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.expires_ms != 0 && self.expires_ms <= now_ms
    }

    fn current(&self, now_ms: u64) -> Option<&Vec<u8>> {
        if self.expired(now_ms) { None } else { self.value.as_ref() }
    }
}

/// What this instance holds of one partition's state.
struct Owned {
    token: Arc<str>,
    /// The offset after the last record processed.
    next: i64,
    /// Revoked since the claim: the next batch claims again.
    revoked: bool,
    /// The last offset whose writes are durable.
    durable: i64,
    /// Per (stage hash, key).
    view: HashMap<(Arc<str>, String), Held>,
    /// Per stage hash, its size (expired values included until deleted),
    /// and when it was last swept.
    sizes: HashMap<Arc<str>, Counted>,
}

impl Owned {
    /// Takes values a sweep deleted from `hash` out of the view. Returns
    /// what they take off the size counted in memory (the values it still
    /// counted: not written again or deleted since, nor written and not yet
    /// durable), and what the `journaled` ones (already accounted for by the
    /// call in progress) weigh.
    fn reconcile(
        &mut self,
        hash: &Arc<str>,
        deleted: &[(String, u64)],
        journaled: &dyn Fn(&str) -> bool,
    ) -> (Delta, Delta) {
        let now = now_ms();
        let (mut forgotten, mut kept) = (Delta::default(), Delta::default());
        for (key, bytes) in deleted {
            let one = Delta { keys: 1, bytes: *bytes as i64 };
            if journaled(key) {
                kept.add(one);
                continue;
            }
            let counted = match self.view.get_mut(&(hash.clone(), key.clone())) {
                None => true,
                Some(held) if held.expired(now) && held.written_at.is_none_or(|at| at <= self.durable) => {
                    *held = Held::absent();
                    true
                }
                Some(_) => false,
            };
            if counted {
                forgotten.add(Delta { keys: -one.keys, bytes: -one.bytes });
            }
        }
        (forgotten, kept)
    }
}

/// What one stage's state calls did, and how large its state is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StateTotals {
    /// Keys read.
    pub reads: u64,
    /// Keys read from Redis (not in the view).
    pub fetched: u64,
    /// Sets and deletes.
    pub writes: u64,
    /// Values found expired (and deleted).
    pub expired: u64,
    /// Sets refused by the stage's limits.
    pub refused: u64,
    /// Keys in Redis over every partition, as last measured.
    pub keys: u64,
    /// Bytes in Redis over every partition, as last measured.
    pub bytes: u64,
}

/// The keyed state of every stage, shared by the chain (which reads and
/// writes it) and the run loop (which makes it durable).
pub struct StateStore {
    prefix: String,
    durable: Box<dyn Durable>,
    inner: Mutex<Inner>,
    totals: Mutex<BTreeMap<Arc<str>, StateTotals>>,
    /// Writes undone by claims.
    pub undone: AtomicU64,
}

#[derive(Default)]
struct Inner {
    owned: HashMap<Partition, Owned>,
    /// Writes of the batch in the chain, in order.
    pending: Vec<StateWrite>,
    claims: u64,
}

impl StateStore {
    /// State made durable by `durable`, in Redis hashes under `prefix`.
    pub fn new(prefix: &str, durable: Box<dyn Durable>) -> Arc<Self> {
        Arc::new(Self {
            prefix: prefix.to_string(),
            durable,
            inner: Mutex::default(),
            totals: Mutex::default(),
            undone: AtomicU64::new(0),
        })
    }

    /// State in memory only.
    pub fn in_memory() -> Arc<Self> {
        Self::new("", Box::new(InMemory))
    }

    /// The Redis hash of `stage`'s state in `partition`.
    pub fn hash(&self, stage: &str, partition: &Partition) -> String {
        format!("{}stage:{stage}:{}:{}", self.prefix, partition.0, partition.1)
    }

    /// The pattern of every Redis hash of `stage`'s state.
    pub fn hashes_of(&self, stage: &str) -> String {
        format!("{}stage:{stage}:*", self.prefix)
    }

    /// What each stage's state calls did so far, and the sizes last set
    /// by [`StateStore::set_sizes`].
    pub fn totals(&self) -> BTreeMap<Arc<str>, StateTotals> {
        self.totals.lock().expect("state totals lock").clone()
    }

    /// The totals of one stage, if it used its state.
    pub fn totals_of(&self, stage: &str) -> Option<StateTotals> {
        self.totals.lock().expect("state totals lock").get(stage).cloned()
    }

    /// Sets the measured keys and bytes of a stage's state.
    pub fn set_sizes(&self, stage: &str, keys: u64, bytes: u64) {
        let mut totals = self.totals.lock().expect("state totals lock");
        let t = totals.entry(Arc::from(stage)).or_default();
        (t.keys, t.bytes) = (keys, bytes);
    }

    fn count(&self, stage: &str, f: impl FnOnce(&mut StateTotals)) {
        let mut totals = self.totals.lock().expect("state totals lock");
        match totals.get_mut(stage) {
            Some(t) => f(t),
            None => f(totals.entry(Arc::from(stage)).or_default()),
        }
    }

    /// Before the chain processes `records`: claims the partitions seen
    /// for the first time, revoked since, or read again from an offset
    /// already processed.
    pub fn begin(&self, records: &[Record]) -> Result<(), Unavailable> {
        let mut spans: BTreeMap<(&str, i32), (i64, i64)> = BTreeMap::new();
        for r in records {
            let span = spans.entry((r.topic.as_str(), r.partition)).or_insert((r.offset, r.offset));
            span.0 = span.0.min(r.offset);
            span.1 = span.1.max(r.offset);
        }
        let mut inner = self.inner.lock().expect("state lock");
        inner.pending.clear();
        for ((topic, partition), (first, last)) in spans {
            let key: Partition = (Arc::from(topic), partition);
            let stale = inner.owned.get(&key).is_none_or(|o| o.revoked || first < o.next);
            if stale {
                inner.claims += 1;
                let token: Arc<str> = Arc::from(format!("{}-{}-{}", std::process::id(), start_nanos(), inner.claims));
                let undone = self.durable.claim(&key, first, &token)?;
                if undone > 0 {
                    tracing::info!(topic, partition, from = first, undone, "state rolled back to a batch read again");
                }
                self.undone.fetch_add(undone as u64, Ordering::Relaxed);
                let owned = Owned {
                    token,
                    next: first,
                    revoked: false,
                    durable: first - 1,
                    view: HashMap::new(),
                    sizes: HashMap::new(),
                };
                inner.owned.insert(key.clone(), owned);
            }
            let owned = inner.owned.get_mut(&key).expect("claimed above");
            owned.next = owned.next.max(last + 1);
        }
        Ok(())
    }

    /// Forgets every partition: the next batch of each claims it anew.
    pub fn forget(&self) {
        let mut inner = self.inner.lock().expect("state lock");
        if !inner.owned.is_empty() {
            inner.owned.clear();
        }
    }

    /// The partitions revoked from this instance: their next batch claims
    /// them again.
    pub fn revoked(&self, partitions: &[(String, i32)]) {
        let mut inner = self.inner.lock().expect("state lock");
        for (topic, partition) in partitions {
            if let Some(owned) = inner.owned.get_mut(&(Arc::from(topic.as_str()), *partition)) {
                owned.revoked = true;
            }
        }
    }

    /// The writes of the batch the chain just processed.
    pub fn take_pending(&self) -> Vec<StateWrite> {
        std::mem::take(&mut self.inner.lock().expect("state lock").pending)
    }

    /// Notes that the writes of `partition` up to `offset`, made under
    /// `token`, are durable: the view may drop them.
    pub fn durable(&self, partition: &Partition, token: &str, offset: i64) {
        let mut inner = self.inner.lock().expect("state lock");
        let Some(owned) = inner.owned.get_mut(partition) else { return };
        if &*owned.token == token {
            owned.durable = owned.durable.max(offset);
        }
    }

    /// The values of `keys` of `stage`'s state, as the view holds them or
    /// else from Redis (`None`: absent). Expired values are returned as
    /// they are: the caller decides.
    fn read(&self, stage: &str, keys: &[(&Coordinates, &str)], counted: bool) -> Result<Vec<Held>, Unavailable> {
        let mut inner = self.inner.lock().expect("state lock");
        let mut out: Vec<Held> = vec![Held::absent(); keys.len()];
        // Misses, per hash: indices in `keys`.
        let mut misses: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut hashes: HashMap<&Partition, Arc<str>> = HashMap::new();
        for (i, (at, key)) in keys.iter().enumerate() {
            let hash =
                hashes.entry(&at.partition).or_insert_with(|| Arc::from(self.hash(stage, &at.partition))).clone();
            let owned = inner.owned.get(&at.partition);
            match owned.and_then(|o| o.view.get(&(hash.clone(), key.to_string()))) {
                Some(held) => out[i] = held.clone(),
                None => misses.entry(hash.to_string()).or_default().push(i),
            }
        }
        let fetched = misses.values().map(Vec::len).sum::<usize>() as u64;
        for (hash, indices) in misses {
            let fields: Vec<&str> = indices.iter().map(|&i| keys[i].1).collect();
            let stored = self.durable.read(&hash, &fields)?;
            let hash: Arc<str> = Arc::from(hash);
            for (&i, stored) in indices.iter().zip(stored) {
                let held = match stored.as_deref().and_then(decode) {
                    Some((expires_ms, value)) => Held { value: Some(value.to_vec()), expires_ms, written_at: None },
                    None => Held::absent(),
                };
                out[i] = held.clone();
                if let Some(owned) = inner.owned.get_mut(&keys[i].0.partition) {
                    owned.view.insert((hash.clone(), keys[i].1.to_string()), held);
                }
            }
        }
        if counted {
            self.count(stage, |t| {
                t.reads += keys.len() as u64;
                t.fetched += fetched;
            });
        }
        Ok(out)
    }

    /// The size of `stage`'s state in `partition`: measured in Redis (after
    /// a sweep of its expired values) at the first call after a claim, and
    /// kept up to date by the writes after that. When `recount` and the
    /// wait after the last sweep is over (see [`RECOUNT_EVERY`]), sweeps
    /// again and takes off the values it deleted. `journaled` says which
    /// keys the call in progress has already accounted for.
    fn size(
        &self,
        stage: &str,
        partition: &Partition,
        recount: bool,
        journaled: &dyn Fn(&str) -> bool,
    ) -> Result<Size, Unavailable> {
        let hash = self.hash(stage, partition);
        let (last, token) = {
            let inner = self.inner.lock().expect("state lock");
            let Some(owned) = inner.owned.get(partition) else { return Ok(Size::default()) };
            let last = owned.sizes.get(hash.as_str()).copied();
            match last {
                Some(c) if !recount || !self.durable.keeps() || c.swept.elapsed() < c.wait => return Ok(c.size),
                _ => (last, owned.token.clone()),
            }
        };
        // Not under the lock: the run loop goes on meanwhile.
        let started = Instant::now();
        let swept = self.durable.sweep(partition, &token, &hash, now_ms())?;
        let took = started.elapsed();
        let fallback = last.map(|c| c.size).unwrap_or_default();
        // Another claim owns the partition: this one's writes will be refused.
        let Some(swept) = swept else { return Ok(fallback) };
        let wait = match last {
            Some(c) if swept.deleted.is_empty() => (c.wait * 2).min(RECOUNT_AT_MOST_EVERY),
            _ => RECOUNT_EVERY,
        };
        if !swept.deleted.is_empty() {
            self.count(stage, |t| t.expired += swept.deleted.len() as u64);
        }
        let mut inner = self.inner.lock().expect("state lock");
        let Some(owned) = inner.owned.get_mut(partition).filter(|o| o.token == token) else { return Ok(fallback) };
        let hash: Arc<str> = Arc::from(hash);
        let (forgotten, journaled) = owned.reconcile(&hash, &swept.deleted, journaled);
        let size = match owned.sizes.get(&hash) {
            // What was counted, less what the sweep deleted.
            Some(c) => {
                let mut size = c.size;
                size.apply(forgotten);
                size
            }
            // What Redis holds, and the values the call in progress has
            // accounted for as present although the sweep deleted them.
            None => {
                let mut size = swept.left;
                size.apply(journaled);
                size
            }
        };
        owned.sizes.insert(hash, Counted { size, swept: Instant::now(), wait: wait.max(took * 20) });
        Ok(size)
    }

    /// The partitions this instance owns, with their owner tokens.
    pub fn owned(&self) -> Vec<(Partition, Arc<str>)> {
        let inner = self.inner.lock().expect("state lock");
        inner.owned.iter().filter(|(_, o)| !o.revoked).map(|(p, o)| (p.clone(), o.token.clone())).collect()
    }

    /// Takes what a background sweep of `stage`'s state in `partition`,
    /// owned under `token` and started at `started`, deleted: the size kept
    /// in memory loses the values it still counted (not those written again
    /// or deleted since, nor any counted again since the sweep started), and
    /// the view forgets them.
    pub fn swept(&self, stage: &str, partition: &Partition, token: &str, started: Instant, deleted: &[(String, u64)]) {
        if deleted.is_empty() {
            return;
        }
        self.count(stage, |t| t.expired += deleted.len() as u64);
        let hash: Arc<str> = Arc::from(self.hash(stage, partition));
        let mut inner = self.inner.lock().expect("state lock");
        let Some(owned) = inner.owned.get_mut(partition).filter(|o| &*o.token == token) else { return };
        let (forgotten, _) = owned.reconcile(&hash, deleted, &|_| false);
        if let Some(counted) = owned.sizes.get_mut(&hash)
            && counted.swept < started
        {
            counted.size.apply(forgotten);
        }
    }

    /// Takes a successful call's writes: into the view and the batch's
    /// pending writes.
    fn record(&self, stage: &str, journal: Vec<Journaled>) {
        if journal.is_empty() {
            return;
        }
        self.count(stage, |t| t.writes += journal.iter().filter(|w| !w.expiry).count() as u64);
        let mut inner = self.inner.lock().expect("state lock");
        let inner = &mut *inner;
        let mut hashes: HashMap<Partition, Arc<str>> = HashMap::new();
        for write in journal {
            let Some(owned) = inner.owned.get_mut(&write.at.partition) else { continue };
            let hash = match hashes.get(&write.at.partition) {
                Some(hash) => hash.clone(),
                None => {
                    let hash: Arc<str> = Arc::from(self.hash(stage, &write.at.partition));
                    hashes.insert(write.at.partition.clone(), hash.clone());
                    hash
                }
            };
            inner.pending.push(StateWrite {
                partition: write.at.partition.clone(),
                offset: write.at.offset,
                token: owned.token.clone(),
                hash: hash.clone(),
                key: write.key.clone(),
                value: write.value.as_deref().map(|v| encode(write.expires_ms, v)),
            });
            let held = Held { value: write.value, expires_ms: write.expires_ms, written_at: Some(write.at.offset) };
            owned.view.insert((hash.clone(), write.key), held);
            if let Some(counted) = owned.sizes.get_mut(&hash) {
                counted.size.apply(write.delta);
            }
            if owned.view.len() > VIEW_CAPACITY {
                let durable = owned.durable;
                owned.view.retain(|_, h| h.written_at.is_some_and(|at| at > durable));
            }
        }
    }
}

/// The stored form of a value: its expiry in wall-clock ms (0: never),
/// `:`, then the value.
pub fn encode(expires_ms: u64, value: &[u8]) -> Vec<u8> {
    let mut out = format!("{expires_ms}:").into_bytes();
    out.extend_from_slice(value);
    out
}

/// The expiry and value of a stored value, if it is one.
pub fn decode(stored: &[u8]) -> Option<(u64, &[u8])> {
    let colon = stored.iter().position(|&b| b == b':')?;
    let expires = std::str::from_utf8(&stored[..colon]).ok()?.parse().ok()?;
    Some((expires, &stored[colon + 1..]))
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn start_nanos() -> u128 {
    static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    *START.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()))
}

/// Where a record of the batch in a call came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinates {
    partition: Partition,
    offset: i64,
}

/// A write made during a call, not yet taken.
struct Journaled {
    at: Coordinates,
    key: String,
    value: Option<Vec<u8>>,
    expires_ms: u64,
    /// The delete of an expired value by the read that found it.
    expiry: bool,
    /// What it changes of the partition's size.
    delta: Delta,
}

/// Why a state call failed.
#[derive(Debug)]
pub enum StateCallError {
    /// The plugin named a record not in the batch: the call traps.
    Contract(String),
    /// Redis could not be read: the batch is retried.
    Unavailable(Unavailable),
    /// A limit refused the write: the plugin is told why.
    Refused(String),
}

/// The state calls of one stage instance: the batch of the call in
/// progress, and its writes until the call returns.
pub struct StateCalls {
    store: Arc<StateStore>,
    /// The stage whose state this is (a canary uses its stage's).
    stage: Arc<str>,
    /// Whether writes are kept (a canary's are not).
    keep: bool,
    limits: StateLimits,
    probing: bool,
    batch: Vec<Coordinates>,
    journal: Vec<Journaled>,
    /// The latest write in `journal` of each (partition, key).
    latest: HashMap<(Partition, String), usize>,
    /// What the journal changes of each partition's size.
    added: HashMap<Partition, Delta>,
}

impl StateCalls {
    /// State calls of `stage` into `store`; writes are dropped unless `keep`.
    pub fn new(store: Arc<StateStore>, stage: Arc<str>, keep: bool, limits: StateLimits) -> Self {
        let (batch, journal, latest, added) = (Vec::new(), Vec::new(), HashMap::new(), HashMap::new());
        Self { store, stage, keep, limits, probing: false, batch, journal, latest, added }
    }

    /// Whether the calls are a probe of the chain (a reload's check on
    /// sample records): their writes are dropped.
    pub fn set_probing(&mut self, probing: bool) {
        self.probing = probing;
    }

    /// Whether the calls are a probe.
    pub fn probing(&self) -> bool {
        self.probing
    }

    /// Whether what the calls do counts in the stage's totals (not a
    /// canary's, nor a probe's: the live calls do the same).
    fn counted(&self) -> bool {
        self.keep && !self.probing
    }

    fn tally(&self, f: impl FnOnce(&mut StateTotals)) {
        if self.counted() {
            self.store.count(&self.stage, f);
        }
    }

    /// A call with `batch` starts.
    pub fn start(&mut self, batch: &[Message]) {
        self.journal.clear();
        self.latest.clear();
        self.added.clear();
        self.batch.clear();
        let mut topic: Option<Arc<str>> = None;
        for m in batch {
            let name = match &topic {
                Some(t) if **t == *m.topic => t.clone(),
                _ => topic.insert(Arc::from(m.topic.as_str())).clone(),
            };
            self.batch.push(Coordinates { partition: (name, m.partition), offset: m.offset });
        }
    }

    /// The call succeeded: its writes are taken, unless dropped (a canary,
    /// a probe).
    pub fn finish(&mut self) {
        let journal = std::mem::take(&mut self.journal);
        self.latest.clear();
        if self.counted() {
            self.store.record(&self.stage, journal);
        }
    }

    /// The call failed: its writes are dropped.
    pub fn abandon(&mut self) {
        self.journal.clear();
        self.latest.clear();
    }

    fn at(&self, at: u32) -> Result<Coordinates, StateCallError> {
        self.batch.get(at as usize).cloned().ok_or_else(|| {
            StateCallError::Contract(format!(
                "state: record {at} is not in the batch, which holds {} records",
                self.batch.len()
            ))
        })
    }

    /// The values of `keys`, each `(record, key)`, the call's own writes
    /// first, as `Held` (expired ones included).
    fn lookup(&mut self, keys: &[(Coordinates, &str)]) -> Result<Vec<Held>, StateCallError> {
        let mut out = vec![Held::absent(); keys.len()];
        let mut rest: Vec<(usize, &Coordinates, &str)> = Vec::new();
        for (i, (at, key)) in keys.iter().enumerate() {
            let own = self.latest.get(&(at.partition.clone(), key.to_string())).map(|&i| &self.journal[i]);
            match own {
                Some(w) => out[i] = Held { value: w.value.clone(), expires_ms: w.expires_ms, written_at: None },
                None => rest.push((i, at, key)),
            }
        }
        if !rest.is_empty() {
            let asked: Vec<(&Coordinates, &str)> = rest.iter().map(|(_, at, key)| (*at, *key)).collect();
            let values = self.store.read(&self.stage, &asked, self.counted()).map_err(StateCallError::Unavailable)?;
            for ((i, ..), value) in rest.iter().zip(values) {
                out[*i] = value;
            }
        }
        Ok(out)
    }

    /// `state.get`: the values of `keys`, `(record, key)`. A value found
    /// expired reads as absent, and is deleted.
    pub fn get(&mut self, keys: &[(u32, String)]) -> Result<Vec<Option<Vec<u8>>>, StateCallError> {
        let asked: Vec<(Coordinates, &str)> =
            keys.iter().map(|(at, key)| Ok((self.at(*at)?, key.as_str()))).collect::<Result<_, StateCallError>>()?;
        let held = self.lookup(&asked)?;
        let now = now_ms();
        let mut out = Vec::with_capacity(held.len());
        for ((at, key), held) in asked.into_iter().zip(held) {
            if held.expired(now) {
                self.tally(|t| t.expired += 1);
                let freed = held.value.as_deref().map_or(0, |v| held_bytes(key, v));
                let delta = Delta { keys: -1, bytes: -(freed as i64) };
                self.added.entry(at.partition.clone()).or_default().add(delta);
                self.write(Journaled { at, key: key.to_string(), value: None, expires_ms: 0, expiry: true, delta });
            }
            out.push(held.current(now).cloned());
        }
        Ok(out)
    }

    /// `state.set` (`value` `Some`) and `state.delete` (`None`).
    pub fn put(
        &mut self,
        at: u32,
        key: String,
        value: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    ) -> Result<(), StateCallError> {
        let at = self.at(at)?;
        let stage = self.stage.clone();
        let refuse = |why: String| Err(StateCallError::Refused(format!("state of stage `{stage}`: {why}")));
        if key.len() > MAX_KEY_BYTES {
            return refuse(format!("a key of {} bytes is longer than {MAX_KEY_BYTES}", key.len()));
        }
        if let Some(v) = &value
            && v.len() > self.limits.max_value_bytes
        {
            self.tally(|t| t.refused += 1);
            let key: String = key.chars().take(100).collect();
            let (size, max) = (v.len(), self.limits.max_value_bytes);
            return refuse(format!(
                "the value of key `{key}` is {size} bytes, more than limits.state_value_kib ({max})"
            ));
        }
        let expires_ms = match ttl_ms {
            Some(0) => return refuse("a time-to-live of 0 ms would expire the value at once".into()),
            Some(ttl) => now_ms().saturating_add(ttl),
            None => 0,
        };
        let before = self.lookup(&[(at.clone(), &key)])?.swap_remove(0);
        let bytes = |v: Option<&Vec<u8>>| v.map_or(0, |v| held_bytes(&key, v) as i64);
        let delta = Delta {
            keys: i64::from(value.is_some()) - i64::from(before.value.is_some()),
            bytes: bytes(value.as_ref()) - bytes(before.value.as_ref()),
        };
        if delta.keys > 0 || delta.bytes > 0 {
            // Expired values may hold the room: sweep them, then judge again.
            if self.over_limits(&at.partition, &key, delta, false)?.is_some()
                && let Some(why) = self.over_limits(&at.partition, &key, delta, true)?
            {
                self.tally(|t| t.refused += 1);
                return refuse(why);
            }
        }
        self.added.entry(at.partition.clone()).or_default().add(delta);
        self.write(Journaled { at, key, value, expires_ms, expiry: false, delta });
        Ok(())
    }

    /// Why a write of `key` changing `partition`'s size by `delta` would
    /// exceed the stage's limits, if it would.
    fn over_limits(
        &self,
        partition: &Partition,
        key: &str,
        delta: Delta,
        recount: bool,
    ) -> Result<Option<String>, StateCallError> {
        // The keys this call has written, and this one, are accounted for
        // by the call.
        let journaled = |k: &str| k == key || self.latest.contains_key(&(partition.clone(), k.to_string()));
        let size = self.store.size(&self.stage, partition, recount, &journaled);
        let mut size = size.map_err(StateCallError::Unavailable)?;
        size.apply(self.added.get(partition).copied().unwrap_or_default());
        let (topic, p) = (&partition.0, partition.1);
        Ok(if delta.keys > 0 && size.keys as i64 + delta.keys > self.limits.max_keys as i64 {
            Some(format!("it holds {} keys in partition {p} of `{topic}`, limits.state_keys", size.keys))
        } else if delta.bytes > 0 && size.bytes as i64 + delta.bytes > self.limits.max_bytes as i64 {
            Some(format!(
                "it holds {} bytes in partition {p} of `{topic}`, and {} more would exceed limits.state_mib ({} bytes)",
                size.bytes, delta.bytes, self.limits.max_bytes
            ))
        } else {
            None
        })
    }

    fn write(&mut self, write: Journaled) {
        self.latest.insert((write.at.partition.clone(), write.key.clone()), self.journal.len());
        self.journal.push(write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(partition: i32, offset: i64) -> Message {
        Message {
            key: None,
            value: Vec::new(),
            headers: Vec::new(),
            topic: "orders".into(),
            partition,
            offset,
            timestamp_ms: None,
        }
    }

    fn record(partition: i32, offset: i64) -> Record {
        Record {
            key: None,
            value: None,
            headers: Vec::new(),
            topic: "orders".into(),
            partition,
            offset,
            timestamp_ms: None,
        }
    }

    fn calls(store: &Arc<StateStore>, limits: StateLimits) -> StateCalls {
        StateCalls::new(store.clone(), Arc::from("dedup"), true, limits)
    }

    fn refusal(result: Result<(), StateCallError>) -> String {
        match result {
            Err(StateCallError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn stored_values_carry_their_expiry() {
        assert_eq!(decode(&encode(0, b"a:b")), Some((0, &b"a:b"[..])));
        assert_eq!(decode(&encode(17, b"")), Some((17, &b""[..])));
        assert_eq!(decode(b"no expiry"), None);
    }

    #[test]
    fn writes_are_seen_by_later_calls_per_partition_and_dropped_with_a_failed_call() {
        let store = StateStore::in_memory();
        store.begin(&[record(0, 10), record(1, 20)]).unwrap();
        let mut calls = calls(&store, StateLimits::default());
        calls.start(&[message(0, 10), message(1, 20)]);
        calls.put(0, "k".into(), Some(b"v0".to_vec()), None).unwrap();
        let got = calls.get(&[(0, "k".into()), (1, "k".into())]).unwrap();
        assert_eq!(got, vec![Some(b"v0".to_vec()), None], "the call's own write, in its partition only");
        calls.finish();

        calls.start(&[message(0, 11)]);
        calls.put(0, "k".into(), None, None).unwrap();
        calls.abandon();
        calls.start(&[message(0, 12)]);
        assert_eq!(
            calls.get(&[(0, "k".into())]).unwrap(),
            vec![Some(b"v0".to_vec())],
            "the failed call's delete is gone"
        );
        let pending = store.take_pending();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].offset, pending[0].key.as_str()), (10, "k"));
        assert!(matches!(calls.get(&[(5, "k".into())]), Err(StateCallError::Contract(_))));
        assert_eq!(store.totals_of("dedup").map(|t| t.writes), Some(1), "the failed call's write is not counted");
    }

    #[test]
    fn a_partition_read_again_is_claimed_again_and_forgets_its_view() {
        let store = StateStore::in_memory();
        let mut calls = calls(&store, StateLimits::default());
        store.begin(&[record(0, 10)]).unwrap();
        calls.start(&[message(0, 10)]);
        calls.put(0, "k".into(), Some(b"v".to_vec()), None).unwrap();
        calls.finish();
        store.begin(&[record(0, 11)]).unwrap();
        calls.start(&[message(0, 11)]);
        assert_eq!(calls.get(&[(0, "k".into())]).unwrap(), vec![Some(b"v".to_vec())]);
        store.begin(&[record(0, 10)]).unwrap();
        calls.start(&[message(0, 10)]);
        assert_eq!(calls.get(&[(0, "k".into())]).unwrap(), vec![None], "rewound to before the write");
        store.revoked(&[("orders".into(), 0)]);
        let token = |s: &StateStore| s.inner.lock().unwrap().owned[&(Arc::from("orders"), 0)].token.clone();
        let before = token(&store);
        store.begin(&[record(0, 30)]).unwrap();
        assert_ne!(token(&store), before, "a revoked partition is claimed anew");
    }

    #[test]
    fn limits_are_refused_with_a_reason() {
        let store = StateStore::in_memory();
        store.begin(&[record(0, 1)]).unwrap();
        let mut calls = calls(&store, StateLimits { max_keys: 2, max_bytes: 1 << 20, max_value_bytes: 8 });
        calls.start(&[message(0, 1)]);
        let big = refusal(calls.put(0, "k".into(), Some(vec![0; 9]), None));
        assert!(big.contains("stage `dedup`") && big.contains("9 bytes, more than limits.state_value_kib"), "{big}");
        assert!(refusal(calls.put(0, "k".repeat(MAX_KEY_BYTES + 1), None, None)).contains("longer than 1024"));
        assert!(refusal(calls.put(0, "k".into(), Some(vec![]), Some(0))).contains("expire the value at once"));
        calls.put(0, "a".into(), Some(vec![1]), None).unwrap();
        calls.put(0, "b".into(), Some(vec![1]), None).unwrap();
        calls.put(0, "a".into(), Some(vec![2]), None).unwrap();
        let third = refusal(calls.put(0, "c".into(), Some(vec![1]), None));
        assert!(third.contains("holds 2 keys in partition 0 of `orders`, limits.state_keys"), "{third}");
        calls.put(0, "b".into(), None, None).unwrap();
        calls.put(0, "c".into(), Some(vec![1]), None).unwrap();
        calls.finish();
        calls.start(&[message(0, 2)]);
        assert!(refusal(calls.put(0, "d".into(), Some(vec![1]), None)).contains("holds 2 keys"), "a later call");
        assert_eq!(store.totals_of("dedup").map(|t| t.refused), Some(3));
    }

    #[test]
    fn the_bytes_of_keys_and_values_are_limited_per_partition() {
        let store = StateStore::in_memory();
        store.begin(&[record(0, 1), record(1, 1)]).unwrap();
        let mut calls = calls(&store, StateLimits { max_keys: 100, max_bytes: 10, max_value_bytes: 8 });
        calls.start(&[message(0, 1), message(1, 1)]);
        calls.put(0, "a".into(), Some(vec![0; 4]), None).unwrap();
        calls.put(0, "b".into(), Some(vec![0; 4]), None).unwrap();
        let over = refusal(calls.put(0, "c".into(), Some(vec![0; 1]), None));
        assert!(
            over.contains("it holds 10 bytes in partition 0 of `orders`, and 2 more would exceed limits.state_mib"),
            "{over}"
        );
        calls.put(1, "c".into(), Some(vec![0; 1]), None).unwrap();
        calls.put(0, "a".into(), Some(vec![0; 2]), None).unwrap();
        calls.finish();
        calls.start(&[message(0, 2)]);
        calls.put(0, "c".into(), Some(vec![0; 1]), None).unwrap();
        assert!(refusal(calls.put(0, "a".into(), Some(vec![0; 3]), None)).contains("holds 10 bytes"), "a later call");
        calls.put(0, "a".into(), None, None).unwrap();
        calls.put(0, "d".into(), Some(vec![0; 2]), None).unwrap();
        assert!(refusal(calls.put(0, "e".into(), Some(vec![]), None)).contains("holds 10 bytes"));
    }

    /// State in a map, as Redis would keep it.
    #[derive(Default)]
    struct Kept(Mutex<HashMap<String, Vec<u8>>>, AtomicU64);

    impl Durable for Arc<Kept> {
        fn claim(&self, _: &Partition, _: i64, _: &str) -> Result<usize, Unavailable> {
            Ok(0)
        }

        fn read(&self, _: &str, fields: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Unavailable> {
            let kept = self.0.lock().unwrap();
            Ok(fields.iter().map(|f| kept.get(*f).cloned()).collect())
        }

        fn sweep(&self, _: &Partition, _: &str, _: &str, now_ms: u64) -> Result<Option<Swept>, Unavailable> {
            self.1.fetch_add(1, Ordering::Relaxed);
            let mut kept = self.0.lock().unwrap();
            let mut swept = Swept::default();
            kept.retain(|key, stored| {
                let (expires, value) = decode(stored).unwrap();
                if expires != 0 && expires <= now_ms {
                    swept.deleted.push((key.clone(), held_bytes(key, value)));
                    return false;
                }
                swept.left.apply(Delta { keys: 1, bytes: held_bytes(key, value) as i64 });
                true
            });
            Ok(Some(swept))
        }
    }

    /// What the run loop does with a batch's writes.
    fn apply(store: &StateStore, kept: &Kept) {
        let mut map = kept.0.lock().unwrap();
        for write in store.take_pending() {
            store.durable(&write.partition, &write.token, write.offset);
            match write.value {
                Some(v) => map.insert(write.key, v),
                None => map.remove(&write.key),
            };
        }
    }

    #[test]
    fn expired_values_nobody_reads_again_are_swept_to_make_room() {
        let (kept, store, mut calls) = two_values(None);
        std::thread::sleep(Duration::from_millis(5));
        calls.start(&[message(0, 2)]);
        assert!(refusal(calls.put(0, "c".into(), Some(vec![1]), None)).contains("holds 2 keys"), "swept just now");
        assert_eq!(kept.1.load(Ordering::Relaxed), 1, "one sweep, at the first count");
        calls.finish();

        // The background sweep deletes `a`; the count in memory follows.
        let (partition, token) = store.owned().pop().unwrap();
        let swept = kept.sweep(&partition, &token, "", now_ms()).unwrap().unwrap();
        assert_eq!(swept.deleted, [("a".to_string(), 2)]);
        store.swept("dedup", &partition, &token, Instant::now(), &swept.deleted);
        calls.start(&[message(0, 3)]);
        calls.put(0, "c".into(), Some(vec![1]), None).unwrap();
        assert_eq!(calls.get(&[(0, "a".into())]).unwrap(), vec![None]);
        calls.finish();
        let pending = store.take_pending();
        assert_eq!(pending.len(), 1, "the swept value is not deleted again: {pending:?}");
        assert_eq!(store.totals_of("dedup").map(|t| (t.expired, t.refused)), Some((1, 1)));
    }

    /// A partition of a store limited to 2 keys, holding `a` for 1 ms and
    /// `b` for `b_ttl_ms`.
    fn two_values(b_ttl_ms: Option<u64>) -> (Arc<Kept>, Arc<StateStore>, StateCalls) {
        let kept = Arc::new(Kept::default());
        let store = StateStore::new("", Box::new(kept.clone()));
        store.begin(&[record(0, 1)]).unwrap();
        let mut calls = calls(&store, StateLimits { max_keys: 2, max_bytes: 1 << 20, max_value_bytes: 8 });
        calls.start(&[message(0, 1)]);
        calls.put(0, "a".into(), Some(vec![1]), Some(1)).unwrap();
        calls.put(0, "b".into(), Some(vec![1]), b_ttl_ms).unwrap();
        calls.finish();
        apply(&store, &kept);
        (kept, store, calls)
    }

    /// As if the wait after the last sweep were over.
    fn backdate(store: &StateStore) {
        for owned in store.inner.lock().unwrap().owned.values_mut() {
            for counted in owned.sizes.values_mut() {
                counted.swept -= counted.wait;
            }
        }
    }

    /// A key the call itself deleted as expired and wrote again, then swept
    /// by the recount, is counted once: the limit holds after the batch.
    #[test]
    fn a_recount_does_not_take_off_what_the_call_already_accounted_for() {
        let (kept, store, mut calls) = two_values(Some(1));
        backdate(&store);
        std::thread::sleep(Duration::from_millis(5));
        calls.start(&[message(0, 2)]);
        assert_eq!(calls.get(&[(0, "a".into())]).unwrap(), vec![None], "expired");
        calls.put(0, "a".into(), Some(vec![2]), None).unwrap();
        calls.put(0, "c".into(), Some(vec![1]), None).unwrap();
        calls.finish();
        apply(&store, &kept);
        assert_eq!(kept.0.lock().unwrap().len(), 2, "a and c");
        calls.start(&[message(0, 3)]);
        assert!(refusal(calls.put(0, "d".into(), Some(vec![1]), None)).contains("holds 2 keys"));
    }

    #[test]
    fn a_write_over_a_limit_sweeps_expired_values_before_it_is_refused() {
        let (kept, store, mut calls) = two_values(Some(1));
        backdate(&store);
        std::thread::sleep(Duration::from_millis(5));
        calls.start(&[message(0, 2)]);
        calls.put(0, "c".into(), Some(vec![1]), None).unwrap();
        calls.put(0, "d".into(), Some(vec![1]), None).unwrap();
        assert!(refusal(calls.put(0, "e".into(), Some(vec![1]), None)).contains("holds 2 keys"));
        assert_eq!(kept.1.load(Ordering::Relaxed), 2, "swept at the first count and at the first refusal only");
        assert_eq!(store.totals_of("dedup").map(|t| (t.expired, t.refused)), Some((2, 1)));

        // Sweeps that find nothing expired wait twice as long each time.
        let wait = |store: &StateStore| {
            store.inner.lock().unwrap().owned.values().next().unwrap().sizes.values().next().unwrap().wait
        };
        assert_eq!(wait(&store), RECOUNT_EVERY);
        for expected in [10, 20, 40, 60, 60] {
            backdate(&store);
            assert!(refusal(calls.put(0, "e".into(), Some(vec![1]), None)).contains("holds 2 keys"));
            assert_eq!(wait(&store), Duration::from_secs(expected));
        }
        assert_eq!(kept.1.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn an_expired_value_reads_as_absent_and_is_deleted() {
        let store = StateStore::in_memory();
        store.begin(&[record(0, 1)]).unwrap();
        let mut calls = calls(&store, StateLimits::default());
        calls.start(&[message(0, 1)]);
        calls.put(0, "k".into(), Some(b"v".to_vec()), Some(1)).unwrap();
        calls.finish();
        std::thread::sleep(std::time::Duration::from_millis(5));
        calls.start(&[message(0, 2)]);
        assert_eq!(calls.get(&[(0, "k".into())]).unwrap(), vec![None]);
        calls.finish();
        let pending = store.take_pending();
        assert_eq!(pending.iter().map(|w| (w.offset, w.value.is_some())).collect::<Vec<_>>(), [(1, true), (2, false)]);
        assert_eq!(store.totals_of("dedup").map(|t| (t.writes, t.expired)), Some((1, 1)));
    }
}
