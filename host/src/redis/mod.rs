//! Redis: lookup tables for plugins, and the effects plugins return.

mod effects;
mod lookups;

pub use effects::{Fence, RecordEffect, RedisEffects, coalesce};
pub use lookups::{LOOKUP_TIMEOUT, Offline, RedisLookups};

/// `url` with its password replaced by `***`, for logs, errors and the
/// admin API: a Redis URL may carry credentials (`redis://:secret@host`).
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Fails only for URLs that cannot have a password.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(a Redis URL that does not parse)".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_password_never_shows() {
        for (url, shown) in [
            ("redis://:s3cret@db:6379/2", "redis://:***@db:6379/2"),
            ("redis://app:s3cret@db", "redis://app:***@db"),
            ("rediss://app@db", "rediss://app@db"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis//:s3cret@db", "(a Redis URL that does not parse)"),
        ] {
            assert_eq!(super::redacted(url), shown);
        }
    }
}
