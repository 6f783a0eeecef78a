//! Applying the Redis effects of a batch: coalesced, behind a per-partition
//! offset fence, all-or-nothing per record.
//!
//! The common case costs one script call per batch: every record's effects,
//! coalesced, and the fences moved, atomically. When Redis refuses an effect
//! (an increment that would overflow 64 bits, a field that is not an
//! integer, a key of another type), the script undoes what it did and the
//! batch is applied again record by record: a record whose effects Redis
//! refuses has none of them applied and is reported as refused, with Redis's
//! answer, and every other record is applied once. The refusal is stored
//! beside the fence, so a record replayed after a crash is refused again
//! rather than taken for applied.

use crate::record::{Effect, Span};
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// An increment whose sum with other increments of the same field does not
/// fit in 64 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow {
    /// The hash.
    pub key: String,
    /// The field.
    pub field: String,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the increments of field `{}` of `{}` overflow a 64-bit integer", self.field, self.key)
    }
}

/// Sums increments of the same hash field and keeps the last set of each,
/// in first-seen order, so a batch costs one command per distinct field.
/// Fails when a sum does not fit in 64 bits.
pub fn coalesce<'a>(effects: impl IntoIterator<Item = &'a Effect>) -> Result<Vec<Effect>, Overflow> {
    let mut index: HashMap<(&'a str, &'a str, bool), usize> = HashMap::new();
    let mut out: Vec<Effect> = Vec::new();
    for effect in effects {
        let slot = (effect.key(), effect.field(), matches!(effect, Effect::HashIncr { .. }));
        match index.entry(slot) {
            Entry::Occupied(at) => match (&mut out[*at.get()], effect) {
                (Effect::HashIncr { key, field, delta: total }, Effect::HashIncr { delta, .. }) => {
                    *total =
                        total.checked_add(*delta).ok_or_else(|| Overflow { key: key.clone(), field: field.clone() })?
                }
                (slot, set) => *slot = set.clone(),
            },
            Entry::Vacant(at) => {
                at.insert(out.len());
                out.push(effect.clone());
            }
        }
    }
    Ok(out)
}

/// Applies effects and moves the fences, atomically, if the fences still
/// hold the values the host read.
///
/// KEYS[1]: the fence hash; KEYS[2]: the hash of refused records. ARGV[1]:
/// the field to record a refusal under in KEYS[2] (empty: record nothing);
/// ARGV[2]: the number of partitions; per partition its field, the expected
/// current offset (-1 for none) and the new one; then per effect `i`
/// (HINCRBY) or `s` (HSET), key, field, value.
///
/// Returns `{-1}` if a fence moved (nothing changed); `{n}` when the `n`
/// effects are applied and the fences moved; `{-2, i, error}` when Redis
/// refused effect `i` (1-based): every effect is then undone, and, with a
/// refusal field, the refusal is recorded and the fences moved all the same
/// (the record is handled: it is refused).
const APPLY_FENCED: &str = r"
local fence, refused = KEYS[1], KEYS[2]
local np = tonumber(ARGV[2])
local i = 3
for p = 1, np do
  local current = redis.call('HGET', fence, ARGV[i]) or '-1'
  if current ~= ARGV[i + 1] then return {-1} end
  i = i + 3
end
local undo = {}
local failed = nil
local e = 3 + 3 * np
local n = 0
while e <= #ARGV do
  local key, field, value = ARGV[e + 1], ARGV[e + 2], ARGV[e + 3]
  local before = redis.pcall('HGET', key, field)
  local done = before
  if type(before) ~= 'table' or not before.err then
    if ARGV[e] == 'i' then
      done = redis.pcall('HINCRBY', key, field, value)
    else
      done = redis.pcall('HSET', key, field, value)
    end
  end
  if type(done) == 'table' and done.err then
    failed = {-2, n + 1, done.err}
    break
  end
  undo[#undo + 1] = {key, field, before}
  n = n + 1
  e = e + 4
end
if failed then
  for u = #undo, 1, -1 do
    local key, field, before = undo[u][1], undo[u][2], undo[u][3]
    if before then redis.call('HSET', key, field, before) else redis.call('HDEL', key, field) end
  end
  if ARGV[1] == '' then return failed end
  redis.call('HSET', refused, ARGV[1], failed[3])
end
i = 3
for p = 1, np do
  if tonumber(ARGV[i + 2]) > tonumber(ARGV[i + 1]) then redis.call('HSET', fence, ARGV[i], ARGV[i + 2]) end
  i = i + 3
end
if failed then return failed end
return {n}
";

/// How often a fenced apply is attempted when another writer moved a fence
/// between the read and the write (a zombie instance after a rebalance).
const FENCE_ATTEMPTS: usize = 5;

/// The last offset whose effects are applied, per source partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The Redis hash holding the fences.
    pub key: String,
    /// Per partition: its field in the hash (`topic:partition`) and the
    /// last offset of the batch in that partition.
    pub partitions: Vec<(String, i64)>,
}

impl Fence {
    /// The fence `key` for a batch of these spans: each partition's last
    /// offset.
    pub fn of(key: String, spans: &[Span]) -> Self {
        let partitions = spans.iter().map(|s| (format!("{}:{}", s.topic, s.partition), s.last)).collect();
        Self { key, partitions }
    }

    /// The hash recording the records whose effects Redis refused, field
    /// `topic:partition:offset`, value Redis's answer.
    pub fn refused_key(&self) -> String {
        format!("{}:refused", self.key)
    }
}

/// An effect of the record at `offset` of partition `partition` (an index
/// into [`Fence::partitions`]).
#[derive(Debug, Clone)]
pub struct RecordEffect {
    /// The caller's name for the record (its index in the batch), reported
    /// back when its effects are refused.
    pub record: usize,
    /// Index into [`Fence::partitions`].
    pub partition: usize,
    /// The record's offset.
    pub offset: i64,
    /// The effect.
    pub effect: Effect,
}

/// A record whose effects Redis refused: none of them is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// [`RecordEffect::record`].
    pub record: usize,
    /// What Redis answered, and to which effect.
    pub message: String,
}

/// What applying a batch's effects did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Effects applied (after coalescing).
    pub applied: usize,
    /// Effects not applied because their record is at or below its
    /// partition's fence (a replay).
    pub skipped: usize,
    /// Records whose effects Redis refused, now or when first applied.
    pub refused: Vec<Refused>,
    /// Per partition of the fence, the fence's value before this batch
    /// (-1 for none).
    pub fences_before: Vec<i64>,
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

    /// Copies the fences of `old` into `new` when `new` does not exist yet
    /// (the fence used to be keyed by the consumer group). Returns how many
    /// partitions were copied.
    pub async fn adopt_fences(&mut self, old: &str, new: &str) -> Result<usize, redis::RedisError> {
        let result = async {
            let connection = self.connection().await?;
            let exists: bool = redis::cmd("EXISTS").arg(new).query_async(connection).await?;
            if exists || old == new {
                return Ok(0);
            }
            let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg(old).query_async(connection).await?;
            for (field, value) in &fields {
                let () = redis::cmd("HSETNX")
                    .arg(new)
                    .arg(field)
                    .arg(value)
                    .query_async(connection)
                    .await
                    .map(|_: i64| ())?;
            }
            Ok(fields.len())
        }
        .await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// Applies the effects of the records past each partition's fence, and
    /// moves the fences to the batch's last offsets, atomically. A batch
    /// replayed after a crash therefore never counts twice. Effects must be
    /// in record order. Fails only when Redis cannot be reached (or the
    /// fences keep moving): the batch can then be applied again.
    pub async fn apply_fenced(
        &mut self,
        fence: &Fence,
        effects: &[RecordEffect],
    ) -> Result<Applied, redis::RedisError> {
        if fence.partitions.is_empty() {
            return Ok(Applied::default());
        }
        let result = self.try_apply_fenced(fence, effects).await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn try_apply_fenced(
        &mut self,
        fence: &Fence,
        effects: &[RecordEffect],
    ) -> Result<Applied, redis::RedisError> {
        let fields: Vec<&str> = fence.partitions.iter().map(|(f, _)| f.as_str()).collect();
        let refused_key = fence.refused_key();
        for _ in 0..FENCE_ATTEMPTS {
            let connection = self.connection().await?;
            let current: Vec<Option<i64>> =
                redis::cmd("HMGET").arg(&fence.key).arg(&fields).query_async(connection).await?;
            let current: Vec<i64> = current.into_iter().map(|c| c.unwrap_or(-1)).collect();
            let (fresh, replayed): (Vec<&RecordEffect>, Vec<&RecordEffect>) =
                effects.iter().partition(|e| e.offset > current[e.partition]);
            let mut applied = Applied { skipped: replayed.len(), fences_before: current.clone(), ..Applied::default() };
            applied.refused = self.refused_before(fence, &refused_key, &replayed).await?;
            let whole = coalesce(fresh.iter().map(|e| &e.effect));
            let moves: Vec<(&str, i64, i64)> = fence
                .partitions
                .iter()
                .zip(&current)
                .map(|((field, last), now)| (field.as_str(), *now, *last))
                .collect();
            if let Ok(whole) = &whole {
                match self.invoke(fence, &refused_key, "", &moves, whole).await? {
                    Answer::Moved => continue,
                    Answer::Applied(n) => {
                        applied.applied = n;
                        return Ok(applied);
                    }
                    Answer::Refused(..) => {}
                }
            }
            // Redis refused an effect, or the batch's sums overflow: find the
            // records at fault by applying the batch record by record.
            match self.apply_one_by_one(fence, &refused_key, &current, &fresh).await? {
                None => continue,
                Some((n, refused)) => {
                    applied.applied = n;
                    applied.refused.extend(refused);
                    return Ok(applied);
                }
            }
        }
        Err(redis::RedisError::from((redis::ErrorKind::Client, "fences kept moving", fence.key.clone())))
    }

    /// The records among `replayed` whose effects were refused when they
    /// were first applied.
    async fn refused_before(
        &mut self,
        fence: &Fence,
        refused_key: &str,
        replayed: &[&RecordEffect],
    ) -> Result<Vec<Refused>, redis::RedisError> {
        let mut records: Vec<(usize, String)> = Vec::new();
        for e in replayed {
            if records.last().is_none_or(|(r, _)| *r != e.record) {
                records.push((e.record, refusal_field(fence, e)));
            }
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let fields: Vec<&str> = records.iter().map(|(_, f)| f.as_str()).collect();
        let connection = self.connection().await?;
        let answers: Vec<Option<String>> =
            redis::cmd("HMGET").arg(refused_key).arg(&fields).query_async(connection).await?;
        Ok(records
            .into_iter()
            .zip(answers)
            .filter_map(|((record, _), answer)| Some(Refused { record, message: answer? }))
            .collect())
    }

    /// Applies `fresh` one record at a time, each record with its fence,
    /// then moves every fence to the batch's end. Returns `None` if a fence
    /// moved under it (read them again), else the effects applied and the
    /// records refused.
    async fn apply_one_by_one(
        &mut self,
        fence: &Fence,
        refused_key: &str,
        current: &[i64],
        fresh: &[&RecordEffect],
    ) -> Result<Option<(usize, Vec<Refused>)>, redis::RedisError> {
        let mut at: Vec<i64> = current.to_vec();
        let (mut applied, mut refused) = (0, Vec::new());
        for record in fresh.chunk_by(|a, b| a.record == b.record) {
            let first = record[0];
            let field = fence.partitions[first.partition].0.as_str();
            let moves = [(field, at[first.partition], first.offset)];
            let marker = refusal_field(fence, first);
            let answer = match coalesce(record.iter().map(|e| &e.effect)) {
                Ok(effects) => self.invoke(fence, refused_key, &marker, &moves, &effects).await?,
                Err(overflow) => {
                    // Nothing to send: record the refusal and move the fence.
                    let message = overflow.to_string();
                    let error = [Effect::HashSet {
                        key: refused_key.to_string(),
                        field: marker.clone(),
                        value: message.clone(),
                    }];
                    match self.invoke(fence, refused_key, "", &moves, &error).await? {
                        Answer::Moved => return Ok(None),
                        _ => Answer::Refused(0, message),
                    }
                }
            };
            match answer {
                Answer::Moved => return Ok(None),
                Answer::Applied(n) => applied += n,
                Answer::Refused(index, message) => {
                    let message = match index.checked_sub(1).and_then(|i| record.get(i)) {
                        Some(e) => format!("Redis refused {}: {message}", describe(&e.effect)),
                        None => message,
                    };
                    tracing::warn!(offset = first.offset, error = %message, "Redis refused a record's effects");
                    refused.push(Refused { record: first.record, message });
                }
            }
            at[first.partition] = first.offset;
        }
        let moves: Vec<(&str, i64, i64)> =
            fence.partitions.iter().zip(&at).map(|((field, last), now)| (field.as_str(), *now, *last)).collect();
        match self.invoke(fence, refused_key, "", &moves, &[]).await? {
            Answer::Moved => Ok(None),
            _ => Ok(Some((applied, refused))),
        }
    }

    async fn invoke(
        &mut self,
        fence: &Fence,
        refused_key: &str,
        marker: &str,
        moves: &[(&str, i64, i64)],
        effects: &[Effect],
    ) -> Result<Answer, redis::RedisError> {
        let script = self.script.clone();
        let mut invocation = script.key(&fence.key);
        invocation.key(refused_key).arg(marker).arg(moves.len());
        for (field, now, last) in moves {
            invocation.arg(*field).arg(*now).arg((*last).max(*now));
        }
        for effect in effects {
            match effect {
                Effect::HashIncr { key, field, delta } => invocation.arg("i").arg(key).arg(field).arg(delta),
                Effect::HashSet { key, field, value } => invocation.arg("s").arg(key).arg(field).arg(value),
            };
        }
        let connection = self.connection().await?;
        let answer: redis::Value = invocation.invoke_async(connection).await?;
        Answer::parse(answer)
    }
}

/// What the script answered.
enum Answer {
    /// A fence moved: nothing changed.
    Moved,
    /// This many effects applied.
    Applied(usize),
    /// Effect `.0` (1-based) refused with this error; nothing applied.
    Refused(usize, String),
}

impl Answer {
    fn parse(value: redis::Value) -> Result<Self, redis::RedisError> {
        let unexpected = |what: &str| {
            redis::RedisError::from((redis::ErrorKind::Client, "unexpected script answer", what.to_string()))
        };
        let redis::Value::Array(items) = value else { return Err(unexpected("not an array")) };
        let int = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(n)) => Some(*n),
            _ => None,
        };
        match int(items.first()) {
            Some(-1) => Ok(Self::Moved),
            Some(n) if n >= 0 => Ok(Self::Applied(n as usize)),
            Some(-2) => {
                let index = int(items.get(1)).unwrap_or(0).max(0) as usize;
                let message = match items.get(2) {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(redis::Value::SimpleString(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                Ok(Self::Refused(index, message))
            }
            _ => Err(unexpected("no status")),
        }
    }
}

/// The field recording a refusal of the record of `effect`.
fn refusal_field(fence: &Fence, effect: &RecordEffect) -> String {
    format!("{}:{}", fence.partitions[effect.partition].0, effect.offset)
}

/// An effect as a Redis command, for error messages.
fn describe(effect: &Effect) -> String {
    match effect {
        Effect::HashIncr { key, field, delta } => format!("HINCRBY {key} {field} {delta}"),
        Effect::HashSet { key, field, .. } => format!("HSET {key} {field}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(k: &str, f: &str, d: i64) -> Effect {
        Effect::HashIncr { key: k.into(), field: f.into(), delta: d }
    }

    #[test]
    fn increments_sum_and_sets_keep_the_last() {
        let set = |v: &str| Effect::HashSet { key: "k".into(), field: "f".into(), value: v.into() };
        let got = coalesce(&[incr("k", "a", 1), set("x"), incr("k", "b", 2), incr("k", "a", 5), set("y")]).unwrap();
        let want = [incr("k", "a", 6), set("y"), incr("k", "b", 2)];
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
    }

    #[test]
    fn a_sum_that_overflows_is_an_error_naming_the_field() {
        let got = coalesce(&[incr("k", "a", i64::MAX), incr("k", "b", 1), incr("k", "a", 1)]);
        assert_eq!(got, Err(Overflow { key: "k".into(), field: "a".into() }));
        assert!(coalesce(&[incr("k", "a", i64::MAX), incr("k", "a", -1), incr("k", "a", 1)]).is_ok());
    }
}
