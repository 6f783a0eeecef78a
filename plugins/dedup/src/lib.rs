//! `dedup`: drops an order whose `source` and `order_id` were already seen
//! within `window_ms` of it, by the orders' own timestamps (`ts`); every
//! other order goes on unchanged. What it has seen is the stage's keyed
//! state, so a restart, a rebalance or a replay neither forgets an order nor
//! drops one as a duplicate of itself.
//!
//! Input: canonical orders (after `normalize`), keyed so that copies of
//! one order share a partition (by order id, or by user). Config:
//! `window_ms` (default 600000, ten minutes) and `remember_ms`, how long
//! (wall-clock) an order id is kept at most (default one day).

use serde::Deserialize;
use sluice_sdk::{Config, Emit, Error, Record, Stage, state};
use std::time::{Duration, UNIX_EPOCH};

/// The stage.
pub struct Dedup {
    window_ms: i64,
    remember: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_window_ms")]
    window_ms: i64,
    #[serde(default = "default_remember_ms")]
    remember_ms: u64,
}

fn default_window_ms() -> i64 {
    600_000
}

fn default_remember_ms() -> u64 {
    86_400_000
}

/// What `dedup` reads of an order.
#[derive(Deserialize)]
struct Seen {
    order_id: String,
    source: String,
    ts: String,
}

impl Stage for Dedup {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.window_ms < 1 || settings.remember_ms < 1 {
            return Err("dedup config: window_ms and remember_ms must be positive".into());
        }
        Ok(Dedup { window_ms: settings.window_ms, remember: Duration::from_millis(settings.remember_ms) })
    }

    fn process(&mut self, record: &Record) -> Result<Emit, Error> {
        let order: Seen = record.json()?;
        let at = event_ms(&order.ts).ok_or_else(|| {
            Error::reject("invalid_timestamp", format!("order {} has no valid ts: {:?}", order.order_id, order.ts))
        })?;
        let key = format!("{}:{}", order.source, order.order_id);
        if let Some(first) = state::get_json::<i64>(record, &key)?
            && (at - first).abs() < self.window_ms
        {
            return Ok(Emit::filtered());
        }
        state::set_json(record, &key, &at, Some(self.remember))?;
        Ok(Emit::value(record.value().to_vec()))
    }
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn event_ms(ts: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339_weak(ts).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

sluice_sdk::stage!(Dedup);

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, ts: &str) -> Record<'static> {
        Record::from_value(format!(r#"{{"order_id":"{id}","source":"webshop","ts":"{ts}"}}"#).into_bytes())
    }

    #[test]
    fn a_copy_within_the_window_is_dropped_and_one_after_it_goes_on() {
        let mut dedup = Dedup::init(Config::new(r#"{"window_ms": 60000}"#)).unwrap();
        let passed = |d: &mut Dedup, r: &Record| !d.process(r).unwrap().outputs().is_empty();
        assert!(passed(&mut dedup, &order("o1", "2025-01-01T00:00:00Z")));
        assert!(!passed(&mut dedup, &order("o1", "2025-01-01T00:00:59.999Z")));
        assert!(passed(&mut dedup, &order("o2", "2025-01-01T00:00:30Z")));
        assert!(passed(&mut dedup, &order("o1", "2025-01-01T00:01:00Z")), "a full window later");
        let bad = dedup.process(&order("o3", "yesterday")).unwrap_err();
        assert_eq!(bad.reason(), "invalid_timestamp");
    }
}
