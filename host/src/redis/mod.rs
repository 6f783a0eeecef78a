//! Redis, and the only code that talks to it: the rows of lookup tables,
//! the effects plugins return, what HTTP sources remember, and whole hashes
//! for the tools.

mod effects;
mod hashes;
mod lookups;
mod polled;

pub use effects::{Applied, Fence, Overflow, RecordEffect, RedisEffects, Refused, coalesce};
pub use hashes::Hashes;
pub use lookups::{LOOKUP_TIMEOUT, RedisLookups, RedisRows};
pub use polled::Polled;
