//! Stages' keyed state in Redis: a hash per stage and partition
//! (`{state_prefix}stage:{stage}:{topic}:{partition}`), and per partition an
//! owner token and a fence (the last offset whose writes are applied) in
//! the hash `{state_prefix}fence`, and an undo log of the writes not yet
//! committed (`{state_prefix}undo:{topic}:{partition}`).
//!
//! See [`crate::state`] for how they keep state consistent with the
//! offsets.

use crate::lookup::Unavailable;
use crate::state::{Durable, Partition, StateWrite, Swept};
use std::sync::Mutex;
use std::time::Duration;

/// Connect and I/O timeout of a state read or claim, made on the processing
/// thread. Default 2 s, as a lookup's.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(2);

/// Rolls back the undo log of a partition to before offset ARGV[3], sets
/// the fence below it, and makes ARGV[2] the owner.
///
/// KEYS[1]: the fence hash; KEYS[2]: the undo list. ARGV[1]: the
/// partition's field (`topic:partition`). Returns the writes undone.
const CLAIM: &str = r"
local fence, undo = KEYS[1], KEYS[2]
local field, token, position = ARGV[1], ARGV[2], tonumber(ARGV[3])
local undone = 0
while true do
  local last = redis.call('LINDEX', undo, -1)
  if not last then break end
  local entry = cmsgpack.unpack(last)
  if entry[1] < position then break end
  redis.call('RPOP', undo)
  if entry[4] then redis.call('HSET', entry[2], entry[3], entry[4]) else redis.call('HDEL', entry[2], entry[3]) end
  undone = undone + 1
end
local current = tonumber(redis.call('HGET', fence, field) or '-1')
if current >= position then redis.call('HSET', fence, field, position - 1) end
redis.call('HSET', fence, field .. ':owner', token)
return undone
";

/// Applies a partition's writes past its fence, each with its old value
/// pushed to the undo log, if ARGV[2] still owns the partition; then drops
/// the undo entries below ARGV[3] (committed; -1: none).
///
/// KEYS[1]: the fence hash; KEYS[2]: the undo list. ARGV[1]: the
/// partition's field; then per write its offset, `s` (set) or `d`
/// (delete), hash, key and stored value. Returns -1 if another claim owns
/// the partition (nothing written), else the writes applied.
const APPLY: &str = r"
local fence, undo = KEYS[1], KEYS[2]
local field, token, trim = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HGET', fence, field .. ':owner') ~= token then return -1 end
local current = tonumber(redis.call('HGET', fence, field) or '-1')
local last = current
local n = 0
local i = 4
while i <= #ARGV do
  local offset = tonumber(ARGV[i])
  if offset > current then
    local hash, key = ARGV[i + 2], ARGV[i + 3]
    local before = redis.call('HGET', hash, key)
    redis.call('RPUSH', undo, cmsgpack.pack({offset, hash, key, before}))
    if ARGV[i + 1] == 's' then redis.call('HSET', hash, key, ARGV[i + 4]) else redis.call('HDEL', hash, key) end
    if offset > last then last = offset end
    n = n + 1
  end
  i = i + 5
end
if last > current then redis.call('HSET', fence, field, last) end
while trim >= 0 do
  local first = redis.call('LINDEX', undo, 0)
  if not first or cmsgpack.unpack(first)[1] >= trim then break end
  redis.call('LPOP', undo)
end
return n
";

/// One page of a sweep of hash KEYS[1] from cursor ARGV[1]: deletes the
/// values expired by ARGV[2] (ms; stored as `{expiry}:{value}`, 0: never),
/// if ARGV[5] still owns the partition ARGV[4] in the fence hash KEYS[2].
///
/// Returns the next cursor ('0': done), the keys and bytes (key and value,
/// without the expiry) left in the page, the deleted keys, each followed by
/// its bytes, and then the keys left in the whole hash on the last page, -1
/// on the others, or -2 (and nothing done) if another claim owns the
/// partition. A page is at most ARGV[3] fields, so a sweep of a large hash
/// never blocks Redis for long.
const SWEEP: &str = r"
local hash, now = KEYS[1], tonumber(ARGV[2])
if redis.call('HGET', KEYS[2], ARGV[4] .. ':owner') ~= ARGV[5] then return {'0', 0, 0, {}, -2} end
local page = redis.call('HSCAN', hash, ARGV[1], 'COUNT', ARGV[3])
local fields, keys, bytes, deleted = page[2], 0, 0, {}
for i = 1, #fields, 2 do
  local key, stored = fields[i], fields[i + 1]
  local colon = string.find(stored, ':', 1, true) or 0
  local expires = tonumber(string.sub(stored, 1, colon - 1)) or 0
  local size = #key + #stored - colon
  if expires ~= 0 and expires <= now then
    redis.call('HDEL', hash, key)
    deleted[#deleted + 1] = key
    deleted[#deleted + 1] = size
  else
    keys = keys + 1
    bytes = bytes + size
  end
end
local left = -1
if page[1] == '0' then left = redis.call('HLEN', hash) end
return {page[1], keys, bytes, deleted, left}
";

/// Fields a page of a sweep covers.
const SWEEP_PAGE: usize = 1000;

/// One page of a sweep: next cursor, keys left, bytes left, deleted, keys
/// in the hash (see [`SWEEP`]).
type SweptPage = (u64, u64, u64, Vec<(String, u64)>, i64);

/// Adds a page to what a sweep found. Returns `None` while there are more
/// pages, then the sweep (`Some(None)`: not the owner).
fn take_page(swept: &mut Swept, cursor: &mut u64, page: SweptPage) -> Option<Option<Swept>> {
    let (next, keys, bytes, deleted, left) = page;
    if left == -2 {
        return Some(None);
    }
    swept.left.keys += keys;
    swept.left.bytes += bytes;
    swept.deleted.extend(deleted);
    *cursor = next;
    if next != 0 {
        return None;
    }
    // HSCAN may return a field twice while the hash is resized: the keys
    // are Redis's own count.
    swept.left.keys = left.max(0) as u64;
    Some(Some(std::mem::take(swept)))
}

/// The Redis side of stages' state.
pub struct RedisState {
    client: redis::Client,
    prefix: String,
    /// For reads and claims, from the processing thread.
    blocking: Mutex<Option<redis::Connection>>,
    /// For applies, from the run loop.
    connection: Option<redis::aio::MultiplexedConnection>,
    claim: redis::Script,
    apply: redis::Script,
    sweep: redis::Script,
}

/// What applying a partition's writes did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateApplied {
    /// This many writes applied (the others were already).
    Applied(usize),
    /// Another claim owns the partition: nothing written.
    Claimed,
}

impl RedisState {
    /// State under `prefix` in the Redis at `url`. Connects lazily.
    pub fn new(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            prefix: prefix.to_string(),
            blocking: Mutex::new(None),
            connection: None,
            claim: redis::Script::new(CLAIM),
            apply: redis::Script::new(APPLY),
            sweep: redis::Script::new(SWEEP),
        })
    }

    /// A second handle on the same Redis, with its own connections.
    pub fn handle(&self) -> Self {
        Self {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            blocking: Mutex::new(None),
            connection: None,
            claim: self.claim.clone(),
            apply: self.apply.clone(),
            sweep: self.sweep.clone(),
        }
    }

    fn fence(&self) -> String {
        format!("{}fence", self.prefix)
    }

    fn undo(&self, partition: &Partition) -> String {
        format!("{}undo:{}:{}", self.prefix, partition.0, partition.1)
    }

    fn blocking<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Unavailable> {
        let mut slot = self.blocking.lock().expect("state connection lock");
        let result = (|| {
            if slot.is_none() {
                let connection = self.client.get_connection_with_timeout(STATE_TIMEOUT)?;
                connection.set_read_timeout(Some(STATE_TIMEOUT))?;
                connection.set_write_timeout(Some(STATE_TIMEOUT))?;
                *slot = Some(connection);
            }
            f(slot.as_mut().expect("connected above"))
        })();
        if result.is_err() {
            *slot = None;
        }
        result.map_err(|e| Unavailable(format!("state unavailable: {what}: {e}")))
    }

    /// The connection for applies and measures, made lazily.
    async fn connection(&mut self) -> Result<&mut redis::aio::MultiplexedConnection, redis::RedisError> {
        if self.connection.is_none() {
            self.connection = Some(self.client.get_multiplexed_async_connection().await?);
        }
        Ok(self.connection.as_mut().expect("connected above"))
    }

    /// The keys and bytes (as `MEMORY USAGE` counts them) of the hashes
    /// matching `pattern`.
    pub async fn sizes(&mut self, pattern: &str) -> Result<(u64, u64), redis::RedisError> {
        let result = async {
            let connection = self.connection().await?;
            let (mut keys, mut bytes, mut cursor) = (0, 0, 0u64);
            loop {
                let (next, hashes): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(connection)
                    .await?;
                for hash in hashes {
                    let n: u64 = redis::cmd("HLEN").arg(&hash).query_async(connection).await?;
                    let size: Option<u64> =
                        redis::cmd("MEMORY").arg("USAGE").arg(&hash).query_async(connection).await?;
                    keys += n;
                    bytes += size.unwrap_or(0);
                }
                if next == 0 {
                    return Ok((keys, bytes));
                }
                cursor = next;
            }
        }
        .await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// The sweep script for one page of `hash` (see [`SWEEP`]).
    fn sweep_page(
        &self,
        partition: &Partition,
        token: &str,
        hash: &str,
        cursor: u64,
        now_ms: u64,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.sweep.key(hash);
        invocation.key(self.fence());
        invocation.arg(cursor).arg(now_ms).arg(SWEEP_PAGE);
        invocation.arg(format!("{}:{}", partition.0, partition.1)).arg(token);
        invocation
    }

    /// Sweeps the expired values out of `hash`, the state of a stage in
    /// `partition`, if `token` owns it (see [`SWEEP`]), from the run loop's
    /// side.
    pub async fn sweep_async(
        &mut self,
        partition: &Partition,
        token: &str,
        hash: &str,
        now_ms: u64,
    ) -> Result<Option<Swept>, redis::RedisError> {
        let this = self.handle();
        let result = async {
            let connection = self.connection().await?;
            let (mut swept, mut cursor) = (Swept::default(), 0);
            loop {
                let page = this.sweep_page(partition, token, hash, cursor, now_ms).invoke_async(connection).await?;
                if let Some(done) = take_page(&mut swept, &mut cursor, page) {
                    return Ok(done);
                }
            }
        }
        .await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// Applies the writes of one partition, in order (see [`APPLY`]).
    /// `committed`: the partition's committed offset, if known; undo
    /// entries below it are dropped.
    pub async fn apply(
        &mut self,
        partition: &Partition,
        token: &str,
        committed: Option<i64>,
        writes: &[&StateWrite],
    ) -> Result<StateApplied, redis::RedisError> {
        let result = self.try_apply(partition, token, committed, writes).await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn try_apply(
        &mut self,
        partition: &Partition,
        token: &str,
        committed: Option<i64>,
        writes: &[&StateWrite],
    ) -> Result<StateApplied, redis::RedisError> {
        let script = self.apply.clone();
        let mut invocation = script.key(self.fence());
        invocation.key(self.undo(partition));
        invocation.arg(format!("{}:{}", partition.0, partition.1)).arg(token).arg(committed.unwrap_or(-1));
        for write in writes {
            invocation.arg(write.offset);
            match &write.value {
                Some(value) => invocation.arg("s").arg(&*write.hash).arg(&write.key).arg(value.as_slice()),
                None => invocation.arg("d").arg(&*write.hash).arg(&write.key).arg(""),
            };
        }
        let connection = self.connection().await?;
        let n: i64 = invocation.invoke_async(connection).await?;
        Ok(if n < 0 { StateApplied::Claimed } else { StateApplied::Applied(n as usize) })
    }
}

impl Durable for RedisState {
    fn claim(&self, partition: &Partition, position: i64, token: &str) -> Result<usize, Unavailable> {
        let what = format!("claiming {}:{}", partition.0, partition.1);
        self.blocking(&what, |connection| {
            let mut invocation = self.claim.key(self.fence());
            invocation.key(self.undo(partition));
            invocation.arg(format!("{}:{}", partition.0, partition.1)).arg(token).arg(position);
            invocation.invoke::<usize>(connection)
        })
    }

    fn read(&self, hash: &str, fields: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Unavailable> {
        self.blocking(&format!("HMGET {hash}"), |connection| {
            redis::cmd("HMGET").arg(hash).arg(fields).query::<Vec<Option<Vec<u8>>>>(connection)
        })
    }

    fn sweep(&self, partition: &Partition, token: &str, hash: &str, now_ms: u64) -> Result<Option<Swept>, Unavailable> {
        self.blocking(&format!("sweeping {hash}"), |connection| {
            let (mut swept, mut cursor) = (Swept::default(), 0);
            loop {
                let page = self.sweep_page(partition, token, hash, cursor, now_ms).invoke(connection)?;
                if let Some(done) = take_page(&mut swept, &mut cursor, page) {
                    return Ok(done);
                }
            }
        })
    }
}
