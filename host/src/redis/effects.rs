//! Applying the Redis effects of a batch: coalesced, in one atomic pipeline.

use crate::bindings::Effect;
use std::collections::HashMap;

/// Sums increments of the same hash field and keeps the last set of each,
/// in first-seen order, so a batch costs one command per distinct field.
pub fn coalesce(effects: Vec<Effect>) -> Vec<Effect> {
    let mut index: HashMap<(String, String, bool), usize> = HashMap::new();
    let mut out: Vec<Effect> = Vec::new();
    for effect in effects {
        let (key, field, is_incr) = match &effect {
            Effect::HashIncr((k, f, _)) => (k.clone(), f.clone(), true),
            Effect::HashSet((k, f, _)) => (k.clone(), f.clone(), false),
        };
        match index.get(&(key.clone(), field.clone(), is_incr)) {
            Some(&i) => match (&mut out[i], effect) {
                (Effect::HashIncr((_, _, total)), Effect::HashIncr((_, _, delta))) => {
                    *total += delta
                }
                (slot, set) => *slot = set,
            },
            None => {
                index.insert((key, field, is_incr), out.len());
                out.push(effect);
            }
        }
    }
    out
}

/// Writes effects to Redis over a multiplexed connection, reconnecting
/// after an error.
pub struct RedisEffects {
    client: redis::Client,
    connection: Option<redis::aio::MultiplexedConnection>,
}

impl RedisEffects {
    /// Effects for the Redis at `url`. Connects lazily.
    pub fn new(url: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: None,
        })
    }

    /// Applies `effects` (already coalesced) in one MULTI/EXEC pipeline: all
    /// of a batch's effects land, or none do.
    pub async fn apply(&mut self, effects: &[Effect]) -> Result<(), redis::RedisError> {
        if effects.is_empty() {
            return Ok(());
        }
        if self.connection.is_none() {
            self.connection = Some(self.client.get_multiplexed_async_connection().await?);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for effect in effects {
            match effect {
                Effect::HashIncr((key, field, delta)) => {
                    pipe.cmd("HINCRBY").arg(key).arg(field).arg(*delta).ignore()
                }
                Effect::HashSet((key, field, value)) => {
                    pipe.cmd("HSET").arg(key).arg(field).arg(value).ignore()
                }
            };
        }
        let connection = self.connection.as_mut().expect("connected above");
        let result = pipe.query_async::<()>(connection).await;
        if result.is_err() {
            self.connection = None;
        }
        result
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
        let got = coalesce(vec![
            incr("k", "a", 1),
            set("x"),
            incr("k", "b", 2),
            incr("k", "a", 5),
            set("y"),
        ]);
        let want = [incr("k", "a", 6), set("y"), incr("k", "b", 2)];
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
    }
}
