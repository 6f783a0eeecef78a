//! Canaries: a candidate version of a stage run in shadow on a sample of the
//! stage's records, its outcomes compared with the live version's. What the
//! candidate does is never delivered.

use super::stage::{CallError, Stage};
use crate::bindings::{Message, Outcome};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Differences kept as examples, the latest first out. Default 10: enough
/// to see the pattern, small enough for the admin API.
const EXAMPLES: usize = 10;
/// Longest output value shown in an example, in characters.
const MAX_SHOWN: usize = 2000;

/// What a canary has seen so far.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CanaryStats {
    /// Records given to both versions.
    pub compared: u64,
    /// Records whose outcomes differ (including candidate failures).
    pub diffs: u64,
    /// Records the candidate failed on (trap, deadline, memory).
    pub failures: u64,
    /// The latest differences.
    pub examples: VecDeque<CanaryDiff>,
}

/// One record on which the candidate and the live version disagree.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryDiff {
    /// Source topic of the record.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// What the live version did.
    pub live: Value,
    /// What the candidate did.
    pub canary: Value,
}

/// What a candidate did with the sampled records of a batch.
pub(super) struct Shadow {
    /// The indices in the batch of the sampled records.
    picked: Vec<usize>,
    /// The candidate's outcome for each, described for comparison.
    outcomes: Vec<Value>,
    /// Whether the candidate's call failed (each outcome says how).
    failed: bool,
}

/// A candidate stage and its statistics.
pub(super) struct Canary {
    stage: Stage,
    sample: f64,
    stats: Arc<Mutex<CanaryStats>>,
}

impl Canary {
    pub(super) fn new(stage: Stage, sample: f64) -> Self {
        Self { stage, sample, stats: Arc::default() }
    }

    pub(super) fn stats(&self) -> Arc<Mutex<CanaryStats>> {
        self.stats.clone()
    }

    pub(super) fn stage(&self) -> &Stage {
        &self.stage
    }

    /// Same candidate bytes, config and sample.
    pub(super) fn same_as(&self, other: &Canary) -> bool {
        self.sample == other.sample && self.stage.spec().same_as(other.stage.spec())
    }

    /// Runs the candidate on the sampled records of `batch`, before the
    /// live version (so that a stateful candidate reads the state as the
    /// live version does, not with the live version's writes of the same
    /// records). A stateful candidate gets the whole batch, so that a
    /// sampled record sees the writes of the records before it; only the
    /// sampled ones are compared. `None`: nothing to compare.
    pub(super) fn run(&mut self, batch: &[Message]) -> Option<Shadow> {
        let picked: Vec<usize> = (0..batch.len()).filter(|&i| sampled(&batch[i], self.sample)).collect();
        if picked.is_empty() {
            return None;
        }
        let whole = self.stage.uses_state();
        let called = if whole {
            self.stage.call(batch)
        } else {
            self.stage.call(&picked.iter().map(|&i| batch[i].clone()).collect::<Vec<_>>())
        };
        let outcomes = match called {
            Ok(outcomes) if whole => picked.iter().map(|&i| describe(&outcomes[i])).collect(),
            Ok(outcomes) => outcomes.iter().map(describe).collect(),
            // The candidate's lookups or state could not be served: nothing compared.
            Err(CallError::Unavailable(_)) => return None,
            Err(CallError::Plugin { reason, message }) => {
                let failed = json!({ "failed": { "reason": reason.as_str(), "message": message } });
                return Some(Shadow { outcomes: vec![failed; picked.len()], picked, failed: true });
            }
        };
        Some(Shadow { picked, outcomes, failed: false })
    }

    /// Compares what the candidate did (`shadow`, from [`Canary::run`] on
    /// the same `batch`) with the live version's `live` outcomes.
    pub(super) fn compare(&mut self, batch: &[Message], live: &[Outcome], shadow: Shadow) {
        let Shadow { picked, outcomes, failed } = shadow;
        let mut stats = self.stats.lock().expect("canary lock");
        if failed {
            stats.failures += picked.len() as u64;
        }
        for (&i, candidate) in picked.iter().zip(outcomes) {
            stats.compared += 1;
            let current = describe(&live[i]);
            if current == candidate {
                continue;
            }
            stats.diffs += 1;
            if stats.examples.len() == EXAMPLES {
                stats.examples.pop_front();
            }
            let m = &batch[i];
            stats.examples.push_back(CanaryDiff {
                topic: m.topic.clone(),
                partition: m.partition,
                offset: m.offset,
                live: current,
                canary: candidate,
            });
        }
    }
}

/// Whether the record is in the sample: a hash of its coordinates, so the
/// same records are picked on every run and by every instance.
fn sampled(message: &Message, sample: f64) -> bool {
    if sample >= 1.0 {
        return true;
    }
    let mut x = (message.partition as u64) << 48 ^ message.offset as u64;
    for b in message.topic.bytes() {
        x = x.rotate_left(5) ^ u64::from(b);
    }
    // splitmix64's finaliser: every input bit affects every output bit.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x as f64) < sample * u64::MAX as f64
}

/// An outcome as shown in the admin API.
fn describe(outcome: &Outcome) -> Value {
    // Text as it is; anything else (a value in binary form for the next
    // stage) in hex, so that two values that differ never show alike.
    let text = |bytes: &[u8]| match std::str::from_utf8(bytes) {
        Ok(text) => text.chars().take(MAX_SHOWN).collect::<String>(),
        Err(_) => bytes.iter().take(MAX_SHOWN / 2).map(|b| format!("{b:02x}")).collect(),
    };
    match outcome {
        Outcome::Emit((outputs, effects)) => json!({
            "emit": outputs.iter().map(|o| json!({
                "route": o.route,
                "key": o.key.as_deref().map(text),
                "value": text(&o.value),
            })).collect::<Vec<_>>(),
            "effects": effects.len(),
        }),
        Outcome::Filtered => json!("filtered"),
        Outcome::Reject(e) => json!({ "reject": { "reason": e.reason, "message": e.message } }),
        Outcome::Retry(e) => json!({ "retry": { "reason": e.reason, "message": e.message } }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: i64) -> Message {
        Message {
            key: None,
            value: Vec::new(),
            headers: Vec::new(),
            topic: "orders".into(),
            partition: 0,
            offset,
            timestamp_ms: None,
        }
    }

    #[test]
    fn the_sample_is_close_to_its_share_and_stable() {
        let picked = (0..100_000).filter(|&o| sampled(&message(o), 0.1)).count();
        assert!((9_000..11_000).contains(&picked), "{picked} of 100000 sampled at 0.1");
        assert!((0..1000).all(|o| sampled(&message(o), 0.1) == sampled(&message(o), 0.1)));
        assert!((0..1000).all(|o| sampled(&message(o), 1.0)));
    }
}
