//! `[http_sources.NAME]`: an HTTP JSON API polled on an interval, each
//! object it returns produced to a topic.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::num::NonZeroU64;

/// An HTTP JSON API the host polls.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// The URL to GET (`http://` or `https://`).
    pub url: String,
    /// The topic each object is produced to.
    pub topic: String,
    /// How often to poll, in milliseconds. Default 10000.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: NonZeroU64,
    /// How long one request may take, in milliseconds. Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: NonZeroU64,
    /// Request headers (for a token, say `Authorization = "Bearer ${TOKEN}"`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The field holding the array of objects (`data.orders` nests).
    /// Default: the answer is the array.
    #[serde(default)]
    pub items: Option<String>,
    /// The field that identifies an object: one produced before is skipped.
    pub id: String,
    /// The field whose value is the record key. Default: `id`.
    #[serde(default)]
    pub key: Option<String>,
    /// A query parameter set to the highest value of a field seen so far,
    /// so that each request asks only for what is new; kept in Redis, so a
    /// restart resumes where it stopped.
    #[serde(default)]
    pub cursor: Option<CursorConfig>,
    /// How long an id is remembered, in seconds. Default 604800 (7 days).
    #[serde(default = "default_remember_s")]
    pub remember_s: u64,
}

/// The cursor of an HTTP source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorConfig {
    /// The query parameter, e.g. `since`.
    pub param: String,
    /// The field of each object it takes its value from, e.g. `updated_at`.
    pub field: String,
}

fn default_interval_ms() -> NonZeroU64 {
    NonZeroU64::new(10_000).expect("non-zero")
}

fn default_timeout_ms() -> NonZeroU64 {
    NonZeroU64::new(10_000).expect("non-zero")
}

fn default_remember_s() -> u64 {
    7 * 24 * 3600
}

impl HttpSourceConfig {
    /// What is wrong with the entry `[http_sources.{name}]`, if anything.
    pub fn check(&self, name: &str) -> Result<(), String> {
        let at = format!("http_sources.{name}");
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("`{at}`: a name must be letters, digits, `-` or `_`"));
        }
        match url::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => return Err(format!("`{at}.url`: `{}` is not http or https", url.scheme())),
            Err(e) => return Err(format!("`{at}.url` `{}` is not a URL: {e}", self.url)),
        }
        if self.topic.trim().is_empty() {
            return Err(format!("`{at}.topic` must not be empty"));
        }
        let fields = [("id", Some(&self.id)), ("key", self.key.as_ref()), ("items", self.items.as_ref())];
        let cursor = self.cursor.as_ref().map(|c| ("cursor.field", Some(&c.field)));
        for (what, field) in fields.into_iter().chain(cursor) {
            if let Some(field) = field
                && (field.is_empty() || field.split('.').any(str::is_empty))
            {
                return Err(format!("`{at}.{what}` `{field}` is not a field (like `id` or `data.orders`)"));
            }
        }
        if let Some(cursor) = &self.cursor
            && cursor.param.trim().is_empty()
        {
            return Err(format!("`{at}.cursor.param` must not be empty"));
        }
        for name in self.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("`{at}.headers`: `{name}` is not a header name"));
            }
        }
        Ok(())
    }
}
