//! What an HTTP source remembers in Redis: the ids it produced (a sorted
//! set scored by when, so that old ones can be forgotten) and its cursor.

use anyhow::Context;
use redis::aio::MultiplexedConnection;

/// The memory of one HTTP source: `{prefix}http:{name}:seen` and
/// `{prefix}http:{name}:cursor`.
pub struct Polled {
    connection: MultiplexedConnection,
    seen: String,
    cursor: String,
}

impl Polled {
    /// Connects to `url` for the source `name`, its keys under `prefix`.
    pub async fn connect(url: &str, prefix: &str, name: &str) -> anyhow::Result<Self> {
        Ok(Self {
            connection: super::connect(url).await?,
            seen: format!("{prefix}http:{name}:seen"),
            cursor: format!("{prefix}http:{name}:cursor"),
        })
    }

    /// For each of `ids`, whether it was produced before.
    pub async fn seen(&mut self, ids: &[String]) -> anyhow::Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(&self.seen)
            .arg(ids)
            .query_async(&mut self.connection)
            .await
            .with_context(|| format!("ZMSCORE {}", self.seen))?;
        Ok(scores.iter().map(Option::is_some).collect())
    }

    /// Remembers `ids` as produced at `now_s` (seconds since the epoch) and
    /// forgets those produced before `forget_before_s`.
    pub async fn remember(&mut self, ids: &[String], now_s: u64, forget_before_s: u64) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        if !ids.is_empty() {
            let members: Vec<(u64, &String)> = ids.iter().map(|id| (now_s, id)).collect();
            pipe.cmd("ZADD").arg(&self.seen).arg(members).ignore();
        }
        pipe.cmd("ZREMRANGEBYSCORE").arg(&self.seen).arg("-inf").arg(format!("({forget_before_s}")).ignore();
        pipe.query_async::<()>(&mut self.connection).await.with_context(|| format!("ZADD {}", self.seen))
    }

    /// The cursor's last value, if any.
    pub async fn cursor(&mut self) -> anyhow::Result<Option<String>> {
        redis::cmd("GET")
            .arg(&self.cursor)
            .query_async(&mut self.connection)
            .await
            .with_context(|| format!("GET {}", self.cursor))
    }

    /// Keeps `value` as the cursor's last value.
    pub async fn set_cursor(&mut self, value: &str) -> anyhow::Result<()> {
        let mut command = redis::cmd("SET");
        command.arg(&self.cursor).arg(value);
        command.query_async::<()>(&mut self.connection).await.with_context(|| format!("SET {}", self.cursor))
    }
}
