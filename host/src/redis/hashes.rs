//! Whole Redis hashes and sets, read and written by the tools: the lookup
//! tables `sluice gen --load-lookups` writes, the counters `sluice report`
//! reads, the dead letters `sluice replay` has replayed.

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;

/// A connection to read and write whole hashes and sets.
pub struct Hashes {
    connection: MultiplexedConnection,
}

impl Hashes {
    /// Connects to `url`; the error names the URL without its password.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Self { connection: super::connect(url).await? })
    }

    /// `HGETALL key`: empty when there is no such hash.
    pub async fn get_all(&mut self, key: &str) -> anyhow::Result<BTreeMap<String, String>> {
        redis::cmd("HGETALL").arg(key).query_async(&mut self.connection).await.with_context(|| format!("HGETALL {key}"))
    }

    /// `HGET key field`, `None` when either is missing or Redis fails.
    pub async fn get(&mut self, key: &str, field: &str) -> Option<String> {
        redis::cmd("HGET").arg(key).arg(field).query_async(&mut self.connection).await.unwrap_or(None)
    }

    /// Whether `member` is in the set `key`.
    pub async fn is_member(&mut self, key: &str, member: &str) -> anyhow::Result<bool> {
        let mut command = redis::cmd("SISMEMBER");
        command.arg(key).arg(member);
        command.query_async(&mut self.connection).await.with_context(|| format!("SISMEMBER {key}"))
    }

    /// Adds `member` to the set `key`.
    pub async fn add_member(&mut self, key: &str, member: &str) -> anyhow::Result<()> {
        let mut command = redis::cmd("SADD");
        command.arg(key).arg(member);
        command.query_async::<()>(&mut self.connection).await.with_context(|| format!("SADD {key}"))
    }

    /// `HSET` of every (key, fields) in one pipeline; returns how many
    /// hashes were written.
    pub async fn set_all<'a>(
        &mut self,
        hashes: impl IntoIterator<Item = (String, Vec<(&'a String, &'a String)>)>,
    ) -> anyhow::Result<usize> {
        let mut pipe = redis::pipe();
        let mut written = 0;
        for (key, fields) in hashes {
            pipe.cmd("HSET").arg(key).arg(fields).ignore();
            written += 1;
        }
        pipe.query_async::<()>(&mut self.connection).await.context("HSET")?;
        Ok(written)
    }
}
