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

use crate::bindings::Message;
use crate::lookup::Unavailable;
use crate::record::Record;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest key of a stage's state, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest value of a stage's state, in bytes. Default 64 KiB: state
/// holds what a stage remembers per key, not records.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Values kept in the in-memory view of one partition before the ones
/// already durable in Redis are dropped from it (they are read again from
/// Redis when needed).
pub const VIEW_CAPACITY: usize = 100_000;

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
    value: Option<Vec<u8>>,
    /// Wall-clock ms after which the value is gone (0: never).
    expires_ms: u64,
    /// The offset of the last write, if written since the claim.
    written_at: Option<i64>,
}

impl Held {
    fn current(&self, now_ms: u64) -> Option<&Vec<u8>> {
        if self.expires_ms != 0 && self.expires_ms <= now_ms {
            return None;
        }
        self.value.as_ref()
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
}

/// Counts, for metrics.
#[derive(Debug, Default)]
pub struct StateCounts {
    /// Values read by stages.
    pub reads: AtomicU64,
    /// Values read from Redis (not in the view).
    pub fetched: AtomicU64,
    /// Writes and deletes by stages.
    pub writes: AtomicU64,
    /// Reads that found a value expired.
    pub expired: AtomicU64,
    /// Writes undone by claims.
    pub undone: AtomicU64,
}

/// The keyed state of every stage, shared by the chain (which reads and
/// writes it) and the run loop (which makes it durable).
pub struct StateStore {
    prefix: String,
    durable: Box<dyn Durable>,
    inner: Mutex<Inner>,
    /// Counts, for metrics.
    pub counts: StateCounts,
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
        Arc::new(Self { prefix: prefix.to_string(), durable, inner: Mutex::default(), counts: StateCounts::default() })
    }

    /// State in memory only.
    pub fn in_memory() -> Arc<Self> {
        Self::new("", Box::new(InMemory))
    }

    /// The Redis hash of `stage`'s state in `partition`.
    pub fn hash(&self, stage: &str, partition: &Partition) -> String {
        format!("{}{stage}:{}:{}", self.prefix, partition.0, partition.1)
    }

    /// Before the chain processes `records`: claims the partitions seen
    /// for the first time, revoked since, or read again from an offset
    /// already processed.
    pub fn begin(&self, records: &[Record]) -> Result<(), Unavailable> {
        let mut first: BTreeMap<(&str, i32), (i64, i64)> = BTreeMap::new();
        for r in records {
            let span = first.entry((r.topic.as_str(), r.partition)).or_insert((r.offset, r.offset));
            span.0 = span.0.min(r.offset);
            span.1 = span.1.max(r.offset);
        }
        let mut inner = self.inner.lock().expect("state lock");
        inner.pending.clear();
        for ((topic, partition), (first, last)) in first {
            let key: Partition = (Arc::from(topic), partition);
            let stale = inner.owned.get(&key).is_none_or(|o| o.revoked || first < o.next);
            if stale {
                inner.claims += 1;
                let token: Arc<str> = Arc::from(format!("{}-{}-{}", std::process::id(), start_nanos(), inner.claims));
                let undone = self.durable.claim(&key, first, &token)?;
                if undone > 0 {
                    tracing::info!(topic, partition, from = first, undone, "state rolled back to a batch read again");
                }
                self.counts.undone.fetch_add(undone as u64, Ordering::Relaxed);
                let owned = Owned { token, next: first, revoked: false, durable: first - 1, view: HashMap::new() };
                inner.owned.insert(key.clone(), owned);
            }
            let owned = inner.owned.get_mut(&key).expect("claimed above");
            owned.next = owned.next.max(last + 1);
        }
        Ok(())
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

    /// Reads `keys` of `stage`'s state, each `(coordinates, key)`, as the
    /// view holds them or else from Redis.
    fn read(&self, stage: &str, keys: &[(&Coordinates, &str)]) -> Result<Vec<Option<Vec<u8>>>, Unavailable> {
        let now = now_ms();
        let mut inner = self.inner.lock().expect("state lock");
        let mut out: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        // Misses, per hash: (index in `keys`, key).
        let mut misses: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, (at, key)) in keys.iter().enumerate() {
            let hash = self.hash(stage, &at.partition);
            let held =
                inner.owned.get(&at.partition).and_then(|o| o.view.get(&(Arc::from(hash.as_str()), key.to_string())));
            match held {
                Some(held) => {
                    if held.value.is_some() && held.current(now).is_none() {
                        self.counts.expired.fetch_add(1, Ordering::Relaxed);
                    }
                    out[i] = held.current(now).cloned();
                }
                None => misses.entry(hash).or_default().push(i),
            }
        }
        self.counts.reads.fetch_add(keys.len() as u64, Ordering::Relaxed);
        for (hash, indices) in misses {
            let fields: Vec<&str> = indices.iter().map(|&i| keys[i].1).collect();
            let stored = self.durable.read(&hash, &fields)?;
            self.counts.fetched.fetch_add(indices.len() as u64, Ordering::Relaxed);
            let hash: Arc<str> = Arc::from(hash);
            for (&i, stored) in indices.iter().zip(stored) {
                let held = match stored.as_deref().map(decode) {
                    Some(Some((expires_ms, value))) => {
                        Held { value: Some(value.to_vec()), expires_ms, written_at: None }
                    }
                    _ => Held { value: None, expires_ms: 0, written_at: None },
                };
                if held.value.is_some() && held.current(now).is_none() {
                    self.counts.expired.fetch_add(1, Ordering::Relaxed);
                }
                out[i] = held.current(now).cloned();
                if let Some(owned) = inner.owned.get_mut(&keys[i].0.partition) {
                    owned.view.insert((hash.clone(), keys[i].1.to_string()), held);
                }
            }
        }
        Ok(out)
    }

    /// Takes a successful call's writes: into the view and the batch's
    /// pending writes.
    fn record(&self, stage: &str, journal: Vec<Journaled>) {
        if journal.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("state lock");
        let inner = &mut *inner;
        self.counts.writes.fetch_add(journal.len() as u64, Ordering::Relaxed);
        for write in journal {
            let Some(owned) = inner.owned.get_mut(&write.at.partition) else { continue };
            let hash: Arc<str> = Arc::from(self.hash(stage, &write.at.partition));
            inner.pending.push(StateWrite {
                partition: write.at.partition.clone(),
                offset: write.at.offset,
                token: owned.token.clone(),
                hash: hash.clone(),
                key: write.key.clone(),
                value: write.value.as_deref().map(|v| encode(write.expires_ms, v)),
            });
            let held = Held { value: write.value, expires_ms: write.expires_ms, written_at: Some(write.at.offset) };
            owned.view.insert((hash, write.key), held);
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

fn now_ms() -> u64 {
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
}

/// The state calls of one stage instance: the batch of the call in
/// progress, and its writes until the call returns.
pub struct StateCalls {
    store: Arc<StateStore>,
    /// The stage whose state this is (a canary uses its stage's).
    stage: Arc<str>,
    /// Whether writes are kept (a canary's and a probe's are not).
    keep: bool,
    probing: bool,
    batch: Vec<Coordinates>,
    journal: Vec<Journaled>,
}

impl StateCalls {
    /// State calls of `stage` into `store`; writes are dropped unless `keep`.
    pub fn new(store: Arc<StateStore>, stage: Arc<str>, keep: bool) -> Self {
        Self { store, stage, keep, probing: false, batch: Vec::new(), journal: Vec::new() }
    }

    /// A call with `batch` starts.
    pub fn start(&mut self, batch: &[Message]) {
        self.journal.clear();
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

    /// Whether the calls are a probe of the chain (a reload's check on
    /// sample records): their writes are dropped.
    pub fn set_probing(&mut self, probing: bool) {
        self.probing = probing;
    }

    /// Whether the calls are a probe.
    pub fn probing(&self) -> bool {
        self.probing
    }

    /// The call succeeded: its writes are taken, unless dropped (a canary,
    /// a probe).
    pub fn finish(&mut self) {
        let journal = std::mem::take(&mut self.journal);
        if self.keep && !self.probing {
            self.store.record(&self.stage, journal);
        }
    }

    /// The call failed: its writes are dropped.
    pub fn abandon(&mut self) {
        self.journal.clear();
    }

    fn at(&self, at: u32) -> Result<&Coordinates, String> {
        self.batch
            .get(at as usize)
            .ok_or_else(|| format!("state: record {at} is not in the batch, which holds {} records", self.batch.len()))
    }

    /// `state.get`: the values of `keys`, the call's own writes first.
    pub fn get(&mut self, keys: &[(u32, String)]) -> Result<Vec<Option<Vec<u8>>>, StateCallError> {
        let now = now_ms();
        let mut out = vec![None; keys.len()];
        let mut rest: Vec<(usize, &Coordinates, &str)> = Vec::new();
        for (i, (at, key)) in keys.iter().enumerate() {
            let at = self.at(*at).map_err(StateCallError::Contract)?;
            let own = self.journal.iter().rev().find(|w| w.at.partition == at.partition && w.key == *key);
            match own {
                Some(w) if w.expires_ms == 0 || w.expires_ms > now => out[i] = w.value.clone(),
                Some(_) => out[i] = None,
                None => rest.push((i, at, key)),
            }
        }
        if !rest.is_empty() {
            let asked: Vec<(&Coordinates, &str)> = rest.iter().map(|(_, at, key)| (*at, *key)).collect();
            let values = self.store.read(&self.stage, &asked).map_err(StateCallError::Unavailable)?;
            for ((i, ..), value) in rest.iter().zip(values) {
                out[*i] = value;
            }
        }
        Ok(out)
    }

    /// `state.set` (`value` `Some`) and `state.delete` (`None`).
    pub fn put(&mut self, at: u32, key: String, value: Option<Vec<u8>>, ttl_ms: Option<u64>) -> Result<(), String> {
        let coordinates = self.at(at)?.clone();
        if key.len() > MAX_KEY_BYTES {
            return Err(format!("state: a key of {} bytes is longer than {MAX_KEY_BYTES}", key.len()));
        }
        if let Some(v) = &value
            && v.len() > MAX_VALUE_BYTES
        {
            return Err(format!(
                "state: the value of key `{}` is {} bytes, more than {MAX_VALUE_BYTES}",
                key.chars().take(100).collect::<String>(),
                v.len()
            ));
        }
        let expires_ms = match ttl_ms {
            Some(0) => return Err("state: a time-to-live of 0 ms would expire the value at once".into()),
            Some(ttl) => now_ms().saturating_add(ttl),
            None => 0,
        };
        self.journal.push(Journaled { at: coordinates, key, value, expires_ms });
        Ok(())
    }
}

/// Why a state read failed.
#[derive(Debug)]
pub enum StateCallError {
    /// The plugin named a record not in the batch.
    Contract(String),
    /// Redis could not be read: the batch is retried.
    Unavailable(Unavailable),
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
        let mut calls = StateCalls::new(store.clone(), Arc::from("dedup"), true);
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
    }

    #[test]
    fn a_partition_read_again_is_claimed_again_and_forgets_its_view() {
        let store = StateStore::in_memory();
        let mut calls = StateCalls::new(store.clone(), Arc::from("dedup"), true);
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
        let mut calls = StateCalls::new(StateStore::in_memory(), Arc::from("s"), true);
        calls.start(&[message(0, 1)]);
        let big = calls.put(0, "k".into(), Some(vec![0; MAX_VALUE_BYTES + 1]), None).unwrap_err();
        assert!(big.contains("more than 65536"), "{big}");
        assert!(calls.put(0, "k".repeat(MAX_KEY_BYTES + 1), None, None).unwrap_err().contains("longer than 1024"));
        assert!(calls.put(0, "k".into(), Some(vec![]), Some(0)).unwrap_err().contains("expire the value at once"));
    }
}
