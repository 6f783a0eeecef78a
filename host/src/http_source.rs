//! HTTP sources (`[http_sources.NAME]`): an HTTP JSON API polled on an
//! interval, each object it returns produced to a topic, for the data that
//! third parties can only serve, not push.
//!
//! Each poll GETs the URL (with the cursor parameter set to the highest
//! value seen, `If-None-Match` and `If-Modified-Since` from the last
//! answer), takes the array of objects, skips those whose id was produced
//! before, produces the others (key: the `key` field, else the id) and
//! waits for the broker's acknowledgement, then remembers their ids and the
//! new cursor in Redis. A crash between the two produces those objects
//! again (at least once); a restart resumes from the cursor. A failed poll
//! (an error status, a timeout, an answer that is not JSON or has no array
//! where one is expected, Redis or the broker down) is logged, counted, and
//! tried again with backoff; it never stops the rest of the pipeline.

use crate::config::{HttpSourceConfig, PipelineConfig, redact};
use crate::delivery::Backoff;
use crate::kafka::Writer;
use crate::metrics::Metrics;
use crate::record::{Header, Produce};
use crate::redis::Polled;
use anyhow::{Context, bail};
use reqwest::StatusCode;
use reqwest::header::{ETAG, HeaderMap, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The header each produced record carries: the source's name.
pub const SOURCE_HEADER: &str = "sluice.http.source";

/// One HTTP source and what it keeps between polls.
pub struct HttpSource {
    name: String,
    config: HttpSourceConfig,
    client: reqwest::Client,
    writer: Writer,
    redis_url: String,
    /// Where its Redis keys live (`{prefix}http:{name}:...`).
    prefix: String,
    polled: Option<Polled>,
    /// The validators of the last answer, sent back to be told "not modified".
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    metrics: Arc<Metrics>,
}

/// What one poll did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Poll {
    /// Objects produced.
    pub produced: usize,
    /// Objects produced before, skipped.
    pub duplicates: usize,
    /// Objects without the id field, skipped.
    pub without_id: usize,
    /// The server answered 304 Not Modified.
    pub not_modified: bool,
}

/// The value at a dotted `path` of `value`.
fn at<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, field| v.get(field))
}

/// A scalar as text: a string as it is, a number or boolean as JSON.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        _ => None,
    }
}

/// The later of two cursor values: numbers by value, else text by order
/// (RFC 3339 times of one format sort as text).
fn later(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x > y,
        _ => text(a) > text(b),
    }
}

impl HttpSource {
    /// The source `name` of the pipeline `config`.
    pub fn new(name: &str, config: &PipelineConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let source = config.http_sources[name].clone();
        let mut headers = HeaderMap::new();
        for (header, value) in &source.headers {
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("http_sources.{name}.headers.{header}: not a header value"))?;
            headers.insert(HeaderName::from_bytes(header.as_bytes())?, value);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(source.timeout_ms.get()))
            .default_headers(headers)
            .build()
            .context("cannot create the HTTP client")?;
        let prefix = config.redis.fence_prefix.strip_suffix("fence:").unwrap_or(&config.redis.fence_prefix).to_string();
        Ok(Self {
            name: name.to_string(),
            config: source,
            client,
            writer: Writer::for_pipeline(config).context("cannot create the Kafka producer")?,
            redis_url: config.redis.url.clone(),
            prefix,
            polled: None,
            etag: None,
            last_modified: None,
            metrics,
        })
    }

    /// Polls every `interval_ms` until `stop` turns true; after a failure,
    /// again after a backoff that doubles up to the interval (and at least
    /// to 5 s).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.config.interval_ms.get());
        let mut backoff = Backoff::new();
        loop {
            let wait = match self.poll().await {
                Ok(poll) => {
                    backoff = Backoff::new();
                    self.metrics.record_http_poll(&self.name, &poll);
                    if poll.produced > 0 || poll.duplicates > 0 {
                        tracing::debug!(source = %self.name, ?poll, "polled");
                    }
                    interval
                }
                Err(e) => {
                    self.metrics.record_http_poll_error(&self.name);
                    let delay = backoff.next_delay().min(interval.max(crate::delivery::MAX_BACKOFF));
                    tracing::warn!(
                        source = %self.name, url = %redact::url(&self.config.url), error = format!("{e:#}"),
                        retry_in_ms = delay.as_millis() as u64, "HTTP source poll failed"
                    );
                    delay
                }
            };
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The Redis memory, connected when first needed and again after a
    /// failure.
    async fn polled(&mut self) -> anyhow::Result<&mut Polled> {
        if self.polled.is_none() {
            self.polled = Some(Polled::connect(&self.redis_url, &self.prefix, &self.name).await?);
        }
        Ok(self.polled.as_mut().expect("connected above"))
    }

    /// One poll; a failure drops the Redis connection, to be made again.
    pub async fn poll(&mut self) -> anyhow::Result<Poll> {
        let result = self.poll_once().await;
        if result.is_err() {
            self.polled = None;
        }
        result
    }

    async fn poll_once(&mut self) -> anyhow::Result<Poll> {
        let mut url = url::Url::parse(&self.config.url)?;
        if let Some(cursor) = self.config.cursor.clone()
            && let Some(value) = self.polled().await?.cursor().await?
        {
            let others: Vec<(String, String)> =
                url.query_pairs().filter(|(k, _)| *k != cursor.param).map(|(k, v)| (k.into(), v.into())).collect();
            url.query_pairs_mut().clear().extend_pairs(others).append_pair(&cursor.param, &value);
        }
        let mut request = self.client.get(url.clone());
        if let Some(etag) = &self.etag {
            request = request.header(IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = &self.last_modified {
            request = request.header(IF_MODIFIED_SINCE, modified.clone());
        }
        let shown = redact::url(url.as_str());
        let answer = request.send().await.with_context(|| format!("GET {shown}"))?;
        if answer.status() == StatusCode::NOT_MODIFIED {
            return Ok(Poll { not_modified: true, ..Poll::default() });
        }
        if !answer.status().is_success() {
            bail!("GET {shown}: HTTP {}", answer.status());
        }
        let (etag, modified) = (answer.headers().get(ETAG).cloned(), answer.headers().get(LAST_MODIFIED).cloned());
        let body = answer.bytes().await.with_context(|| format!("GET {shown}: reading the answer"))?;
        let body: Value =
            serde_json::from_slice(&body).with_context(|| format!("GET {shown}: the answer is not JSON"))?;
        let items = match &self.config.items {
            Some(path) => at(&body, path),
            None => Some(&body),
        };
        let Some(Value::Array(items)) = items else {
            let path = self.config.items.as_deref().map_or("the answer".to_string(), |p| format!("`{p}`"));
            bail!("GET {shown}: {path} is not an array of objects");
        };
        let done = self.produce(items).await?;
        // Only once what it described is produced and remembered: a
        // failure before asks again with the old validators.
        (self.etag, self.last_modified) = (etag, modified);
        Ok(done)
    }

    /// Produces the objects of `items` not produced before, then remembers
    /// them and the cursor.
    async fn produce(&mut self, items: &[Value]) -> anyhow::Result<Poll> {
        let mut done = Poll::default();
        let mut ids = Vec::with_capacity(items.len());
        let mut objects = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match at(item, &self.config.id).and_then(text) {
                Some(id) if !ids.contains(&id) => {
                    ids.push(id);
                    objects.push(item);
                }
                Some(_) => done.duplicates += 1,
                None => {
                    done.without_id += 1;
                    tracing::warn!(source = %self.name, item = i, id = %self.config.id, "an object without its id field is skipped");
                }
            }
        }
        let seen = self.polled().await?.seen(&ids).await?;
        let mut records = Vec::new();
        let mut new_ids = Vec::new();
        let key_field = self.config.key.clone().unwrap_or_else(|| self.config.id.clone());
        for ((id, object), seen) in ids.into_iter().zip(objects.iter()).zip(seen) {
            if seen {
                done.duplicates += 1;
                continue;
            }
            let key = at(object, &key_field).and_then(text).unwrap_or_else(|| id.clone());
            records.push(Produce {
                topic: Arc::from(self.config.topic.as_str()),
                key: Some(key.into_bytes()),
                value: serde_json::to_vec(object)?,
                headers: vec![Header { name: SOURCE_HEADER.into(), value: self.name.clone().into_bytes() }],
            });
            new_ids.push(id);
        }
        self.writer.write_records(&records).await.with_context(|| format!("producing to `{}`", self.config.topic))?;
        done.produced = records.len();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let remember = self.config.remember_s;
        self.polled().await?.remember(&new_ids, now, now.saturating_sub(remember)).await?;
        if let Some(cursor) = &self.config.cursor {
            let values = objects.iter().filter_map(|o| at(o, &cursor.field)).filter(|v| text(v).is_some());
            let highest = values.reduce(|a, b| if later(b, a) { b } else { a });
            if let Some(highest) = highest.and_then(text) {
                self.polled().await?.set_cursor(&highest).await?;
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_nested_field_and_scalars_as_text() {
        let v = json!({"data": {"orders": [1]}, "id": 7, "name": "x", "ok": true, "o": {}});
        assert_eq!(at(&v, "data.orders"), Some(&json!([1])));
        assert_eq!(at(&v, "data.none"), None);
        assert_eq!(text(&v["id"]).as_deref(), Some("7"));
        assert_eq!(text(&v["name"]).as_deref(), Some("x"));
        assert_eq!(text(&v["ok"]).as_deref(), Some("true"));
        assert_eq!(text(&v["o"]), None);
    }

    #[test]
    fn the_cursor_takes_the_highest_number_or_the_latest_text() {
        assert!(later(&json!(10), &json!(9)), "10 after 9, though not as text");
        assert!(later(&json!("2026-01-02T00:00:00Z"), &json!("2026-01-01T23:59:59Z")));
        assert!(!later(&json!(3), &json!(3)));
    }
}
