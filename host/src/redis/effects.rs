//! Applying the Redis effects of a batch: coalesced, in one atomic pipeline.

use crate::bindings::Effect;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// Sums increments of the same hash field and keeps the last set of each,
/// in first-seen order, so a batch costs one command per distinct field.
pub fn coalesce<'a>(effects: impl IntoIterator<Item = &'a Effect>) -> Vec<Effect> {
    let mut index: HashMap<(&'a str, &'a str, bool), usize> = HashMap::new();
    let mut out: Vec<Effect> = Vec::new();
    for effect in effects {
        let slot = match effect {
            Effect::HashIncr((k, f, _)) => (k.as_str(), f.as_str(), true),
            Effect::HashSet((k, f, _)) => (k.as_str(), f.as_str(), false),
        };
        match index.entry(slot) {
            Entry::Occupied(at) => match (&mut out[*at.get()], effect) {
                (Effect::HashIncr((_, _, total)), Effect::HashIncr((_, _, delta))) => *total += delta,
                (slot, set) => *slot = set.clone(),
            },
            Entry::Vacant(at) => {
                at.insert(out.len());
                out.push(effect.clone());
            }
        }
    }
    out
}

/// Applies effects and moves the fences, atomically, if the fences still
/// hold the values the host read (else returns -1 and changes nothing).
/// KEYS[1]: the fence hash. ARGV: the number of partitions; per partition
/// its field, the expected current offset (-1 for none) and the new one;
/// then per effect `i` (HINCRBY) or `s` (HSET), key, field, value.
const APPLY_FENCED: &str = r"
local fence = KEYS[1]
local np = tonumber(ARGV[1])
local i = 2
for p = 1, np do
  local current = redis.call('HGET', fence, ARGV[i]) or '-1'
  if current ~= ARGV[i + 1] then return -1 end
  i = i + 3
end
local applied = 0
local e = 2 + 3 * np
while e <= #ARGV do
  if ARGV[e] == 'i' then
    redis.call('HINCRBY', ARGV[e + 1], ARGV[e + 2], ARGV[e + 3])
  else
    redis.call('HSET', ARGV[e + 1], ARGV[e + 2], ARGV[e + 3])
  end
  applied = applied + 1
  e = e + 4
end
i = 2
for p = 1, np do
  if tonumber(ARGV[i + 2]) > tonumber(ARGV[i + 1]) then redis.call('HSET', fence, ARGV[i], ARGV[i + 2]) end
  i = i + 3
end
return applied
";

/// How often a fenced apply is attempted when another writer moved a fence
/// between the read and the write (a zombie instance after a rebalance).
const FENCE_ATTEMPTS: usize = 5;

/// The last offset whose effects are applied, per source partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The Redis hash holding the fences of one consumer group.
    pub key: String,
    /// Per partition: its field in the hash (`topic:partition`) and the
    /// last offset of the batch in that partition.
    pub partitions: Vec<(String, i64)>,
}

/// An effect of the record at `offset` of partition `partition` (an index
/// into [`Fence::partitions`]).
#[derive(Debug, Clone)]
pub struct RecordEffect {
    /// Index into [`Fence::partitions`].
    pub partition: usize,
    /// The record's offset.
    pub offset: i64,
    /// The effect.
    pub effect: Effect,
}

/// Writes effects to Redis over a multiplexed connection, reconnecting
/// after an error.
pub struct RedisEffects {
    client: redis::Client,
    connection: Option<redis::aio::MultiplexedConnection>,
    script: redis::Script,
}

impl RedisEffects {
    /// Effects for the Redis at `url`. Connects lazily.
    pub fn new(url: &str) -> Result<Self, redis::RedisError> {
        Ok(Self { client: redis::Client::open(url)?, connection: None, script: redis::Script::new(APPLY_FENCED) })
    }

    async fn connection(&mut self) -> Result<&mut redis::aio::MultiplexedConnection, redis::RedisError> {
        if self.connection.is_none() {
            self.connection = Some(self.client.get_multiplexed_async_connection().await?);
        }
        Ok(self.connection.as_mut().expect("connected above"))
    }

    /// Applies the effects of the records past each partition's fence, and
    /// moves the fences to the batch's last offsets, in one atomic script.
    /// A batch replayed after a crash therefore never counts twice. Returns
    /// how many (coalesced) effects were applied.
    pub async fn apply_fenced(&mut self, fence: &Fence, effects: &[RecordEffect]) -> Result<usize, redis::RedisError> {
        if fence.partitions.is_empty() {
            return Ok(0);
        }
        let result = self.try_apply_fenced(fence, effects).await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn try_apply_fenced(&mut self, fence: &Fence, effects: &[RecordEffect]) -> Result<usize, redis::RedisError> {
        let fields: Vec<&str> = fence.partitions.iter().map(|(f, _)| f.as_str()).collect();
        let script = self.script.clone();
        let connection = self.connection().await?;
        for _ in 0..FENCE_ATTEMPTS {
            let current: Vec<Option<i64>> =
                redis::cmd("HMGET").arg(&fence.key).arg(&fields).query_async(connection).await?;
            let current: Vec<i64> = current.into_iter().map(|c| c.unwrap_or(-1)).collect();
            let fresh = effects.iter().filter(|e| e.offset > current[e.partition]).map(|e| &e.effect);
            let mut invocation = script.key(&fence.key);
            invocation.arg(fence.partitions.len());
            for ((field, last), current) in fence.partitions.iter().zip(&current) {
                invocation.arg(field).arg(current).arg(last);
            }
            for effect in coalesce(fresh) {
                match effect {
                    Effect::HashIncr((key, field, delta)) => invocation.arg("i").arg(key).arg(field).arg(delta),
                    Effect::HashSet((key, field, value)) => invocation.arg("s").arg(key).arg(field).arg(value),
                };
            }
            let applied: i64 = invocation.invoke_async(connection).await?;
            if applied >= 0 {
                return Ok(applied as usize);
            }
            tracing::warn!(fence = %fence.key, "a fence moved while applying effects (another instance?); reading it again");
        }
        Err(redis::RedisError::from((redis::ErrorKind::Client, "fences kept moving", fence.key.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(k: &str, f: &str, d: i64) -> Effect {
        Effect::HashIncr((k.into(), f.into(), d))
    }

    #[test]
    fn increments_sum_and_sets_keep_the_last() {
        let set = |v: &str| Effect::HashSet(("k".into(), "f".into(), v.into()));
        let got = coalesce(&[incr("k", "a", 1), set("x"), incr("k", "b", 2), incr("k", "a", 5), set("y")]);
        let want = [incr("k", "a", 6), set("y"), incr("k", "b", 2)];
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
    }
}
