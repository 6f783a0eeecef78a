//! Redis, and the only code that talks to it: the rows of lookup tables,
//! the effects plugins return, what HTTP sources remember, and whole hashes
//! for the tools.

mod effects;
mod hashes;
mod lookups;
mod polled;
mod state;

pub use effects::{Applied, Fence, Overflow, RecordEffect, RedisEffects, Refused, coalesce};
pub use hashes::Hashes;
pub use lookups::{LOOKUP_TIMEOUT, RedisLookups, RedisRows};
pub use polled::Polled;
pub use state::{RedisState, STATE_TIMEOUT, StateApplied};

use anyhow::Context;
use redis::aio::MultiplexedConnection;

/// A connection to `url` for the tools and the HTTP sources; the error
/// names the URL without its password.
async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let shown = crate::config::redact::url(url);
    let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {shown}"))?;
    client.get_multiplexed_async_connection().await.with_context(|| format!("cannot connect to Redis at {shown}"))
}
