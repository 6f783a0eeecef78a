//! Redis: lookup tables for plugins, and the effects plugins return.

mod effects;
mod lookups;

pub use effects::{Fence, RecordEffect, RedisEffects, coalesce};
pub use lookups::{LOOKUP_TIMEOUT, Offline, RedisLookups};
