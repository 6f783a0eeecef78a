//! Keyed state that survives restarts, rebalances and replays.
//!
//! The host keeps it per stage and per input partition: a call names a
//! record, and reads or writes the state of that record's partition as of
//! that record. A write is seen at once by the records after it, and is
//! made durable with the record: a record processed again (after a crash, a
//! rebalance or an aborted transaction) sees the state as it was before it.
//! Records whose state must meet have to come from one partition: key the
//! input topic by what the state is keyed by.
//!
//! ```
//! use sluice_sdk::{state, Record};
//! let record = Record::from_value(b"{}".to_vec());
//! assert_eq!(state::get_json::<u32>(&record, "seen").unwrap(), None);
//! state::set_json(&record, "seen", &3u32, None).unwrap();
//! assert_eq!(state::get_json::<u32>(&record, "seen").unwrap(), Some(3));
//! assert_eq!(state::sliding_count(&record, "u1", 1_000, 60_000).unwrap(), 1);
//! assert_eq!(state::sliding_count(&record, "u1", 30_000, 60_000).unwrap(), 2);
//! assert_eq!(state::sliding_count(&record, "u1", 90_001, 60_000).unwrap(), 1);
//! ```
//!
//! Natively (unit tests), state lives in the thread's memory, one map per
//! partition.

use crate::{Error, Record};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

#[cfg(target_arch = "wasm32")]
mod host {
    pub use crate::bindings::sluice::plugin0_2_0::state::{Key, delete, get, set};
}

#[cfg(not(target_arch = "wasm32"))]
mod host {
    //! The state calls, natively: per (partition, key), in the thread.
    use std::cell::RefCell;
    use std::collections::HashMap;

    std::thread_local! {
        static VALUES: RefCell<HashMap<(i32, String), Vec<u8>>> = RefCell::new(HashMap::new());
    }

    pub fn get(partition: i32, key: &str) -> Option<Vec<u8>> {
        VALUES.with(|v| v.borrow().get(&(partition, key.to_string())).cloned())
    }

    pub fn put(partition: i32, key: &str, value: Option<Vec<u8>>) {
        VALUES.with(|v| match value {
            Some(value) => v.borrow_mut().insert((partition, key.to_string()), value),
            None => v.borrow_mut().remove(&(partition, key.to_string())),
        });
    }
}

/// The value of `key`, as of `record`; `None` if never set, deleted or
/// expired.
pub fn get(record: &Record, key: &str) -> Option<Vec<u8>> {
    get_many(&[(record, key)]).pop().flatten()
}

/// The values of several keys in one call to the host (a batch's keys,
/// read together before the records are processed).
pub fn get_many(keys: &[(&Record, &str)]) -> Vec<Option<Vec<u8>>> {
    #[cfg(target_arch = "wasm32")]
    {
        let keys: Vec<host::Key> = keys.iter().map(|(r, k)| host::Key { at: r.at(), key: k.to_string() }).collect();
        host::get(&keys)
    }
    #[cfg(not(target_arch = "wasm32"))]
    keys.iter().map(|(r, k)| host::get(r.partition(), k)).collect()
}

/// Sets `key`, as written by `record`; with `ttl`, it expires that long
/// (wall-clock) after the write. A value the host refuses (over 64 KiB, a
/// key over 1 KiB) is an [`Error`] with reason `state_refused`.
pub fn set(record: &Record, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
    let ttl_ms = ttl.map(|t| t.as_millis().clamp(1, u64::MAX as u128) as u64);
    #[cfg(target_arch = "wasm32")]
    let result = host::set(record.at(), key, value, ttl_ms);
    #[cfg(not(target_arch = "wasm32"))]
    let result: Result<(), String> = {
        let _ = ttl_ms;
        host::put(record.partition(), key, Some(value.to_vec()));
        Ok(())
    };
    result.map_err(|e| Error::reject("state_refused", e))
}

/// Deletes `key`, as written by `record`.
pub fn delete(record: &Record, key: &str) -> Result<(), Error> {
    #[cfg(target_arch = "wasm32")]
    let result = host::delete(record.at(), key);
    #[cfg(not(target_arch = "wasm32"))]
    let result: Result<(), String> = {
        host::put(record.partition(), key, None);
        Ok(())
    };
    result.map_err(|e| Error::reject("state_refused", e))
}

/// The value of `key` as JSON of type `T`. A stored value of another
/// shape is an [`Error`] with reason `state_invalid`.
pub fn get_json<T: DeserializeOwned>(record: &Record, key: &str) -> Result<Option<T>, Error> {
    get(record, key)
        .map(|bytes| serde_json::from_slice(&bytes))
        .transpose()
        .map_err(|e| Error::reject("state_invalid", format!("state key `{key}`: {e}")))
}

/// Sets `key` to `value` as JSON.
pub fn set_json<T: Serialize + ?Sized>(
    record: &Record,
    key: &str,
    value: &T,
    ttl: Option<Duration>,
) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::reject("state_invalid", e.to_string()))?;
    set(record, key, &bytes, ttl)
}

/// A sliding window count per key: adds an event at `at_ms` (event time)
/// for `key` and returns how many events of `key` fall within
/// `(at_ms - window_ms, at_ms]`. The events are kept under `key` as a JSON
/// list of times, pruned to the window of the latest, and expire a window
/// after the last write.
pub fn sliding_count(record: &Record, key: &str, at_ms: i64, window_ms: i64) -> Result<usize, Error> {
    let mut times: Vec<i64> = get_json(record, key)?.unwrap_or_default();
    times.push(at_ms);
    let latest = times.iter().copied().max().unwrap_or(at_ms);
    times.retain(|&t| t > latest - window_ms);
    let count = times.iter().filter(|&&t| t > at_ms - window_ms && t <= at_ms).count();
    set_json(record, key, &times, Some(Duration::from_millis(window_ms.max(1) as u64)))?;
    Ok(count)
}

/// A tumbling window count per key: adds an event at `at_ms` (event time)
/// to `key`'s window of `size_ms` that holds it, and returns the count of
/// that window so far. Each window is its own key (`key@start`), and
/// expires two windows after its last write.
pub fn tumbling_count(record: &Record, key: &str, at_ms: i64, size_ms: i64) -> Result<u64, Error> {
    let start = at_ms.div_euclid(size_ms.max(1)) * size_ms.max(1);
    let slot = format!("{key}@{start}");
    let count = get_json::<u64>(record, &slot)?.unwrap_or(0) + 1;
    set_json(record, &slot, &count, Some(Duration::from_millis(2 * size_ms.max(1) as u64)))?;
    Ok(count)
}
