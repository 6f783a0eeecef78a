//! Redis: lookup tables for plugins, and the effects plugins return.

mod effects;
mod lookups;

pub use effects::{Applied, Fence, Overflow, RecordEffect, RedisEffects, Refused, coalesce};
pub use lookups::{LOOKUP_TIMEOUT, Offline, RedisLookups};
