//! The record file: one record per line, as a JSON object, that `sluice
//! capture` writes and `sluice test --records` reads.
//!
//! ```text
//! {"topic":"orders","partition":2,"offset":41,"timestamp_ms":1767225600000,"key":"o-41","value":{"order_id":"o-41"},"headers":{"source":"web"}}
//! ```
//!
//! The bytes of a record are kept exactly:
//! - the value is `value` (JSON) when writing it back as JSON gives the same
//!   bytes, else `value_text` when it is UTF-8, else `value_base64`; a Kafka
//!   null value is written as an empty `value_text` (a stage receives an
//!   empty value either way);
//! - the key is `key` when it is UTF-8, else `key_base64`;
//! - the headers are an object of name to value when their names are in
//!   order and none repeats, else an array of `[name, value]` pairs in
//!   their order; a value that is not UTF-8 is written as
//!   `{"base64": "..."}`.
//!
//! Only `value` (or `value_text` or `value_base64`) is required when
//! reading; `topic` defaults to `input`, `partition` to 0 and `offset` to
//! the line's position among the records.

use crate::record::{Header, Record};
use anyhow::bail;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A line of a record file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordLine {
    /// The topic it was read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Its partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Its offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Its timestamp, in milliseconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    /// The key, when it is text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's bytes, when they are not text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// The value as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The value as text, when it is not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_text: Option<String>,
    /// The value's bytes, when they are not text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// The headers.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

/// The headers of a record line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Headers {
    /// Name to value, when the names are in order and none repeats.
    Map(BTreeMap<String, HeaderValue>),
    /// `[name, value]` pairs in order.
    List(Vec<(String, HeaderValue)>),
}

impl Default for Headers {
    fn default() -> Self {
        Self::Map(BTreeMap::new())
    }
}

impl Headers {
    fn is_empty(&self) -> bool {
        match self {
            Self::Map(map) => map.is_empty(),
            Self::List(list) => list.is_empty(),
        }
    }
}

/// A header value: text, or bytes that are not.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    /// UTF-8 text.
    Text(String),
    /// Other bytes.
    Bytes {
        /// The bytes, in standard base64.
        base64: String,
    },
}

impl HeaderValue {
    fn of(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::Text(text.to_owned()),
            Err(_) => Self::Bytes { base64: BASE64.encode(bytes) },
        }
    }

    fn bytes(self, name: &str) -> anyhow::Result<Vec<u8>> {
        match self {
            Self::Text(text) => Ok(text.into_bytes()),
            Self::Bytes { base64 } => {
                BASE64.decode(base64).map_err(|e| anyhow::anyhow!("header `{name}`: bad base64: {e}"))
            }
        }
    }
}

impl RecordLine {
    /// The line for `record`, keeping its bytes exactly.
    pub fn of(record: &Record) -> Self {
        let mut line = Self {
            topic: Some(record.topic.clone()),
            partition: Some(record.partition),
            offset: Some(record.offset),
            timestamp_ms: record.timestamp_ms,
            ..Self::default()
        };
        match record.key.as_deref().map(std::str::from_utf8) {
            None => {}
            Some(Ok(key)) => line.key = Some(key.to_owned()),
            Some(Err(_)) => line.key_base64 = record.key.as_deref().map(|k| BASE64.encode(k)),
        }
        let value = record.value.as_deref().unwrap_or_default();
        let json = serde_json::from_slice::<Value>(value).ok().filter(|v| v.to_string().as_bytes() == value);
        match (json, std::str::from_utf8(value)) {
            (Some(json), _) => line.value = Some(json),
            (None, Ok(text)) => line.value_text = Some(text.to_owned()),
            (None, Err(_)) => line.value_base64 = Some(BASE64.encode(value)),
        }
        let pairs = record.headers.iter().map(|h| (h.name.clone(), HeaderValue::of(&h.value)));
        line.headers = if record.headers.windows(2).all(|w| w[0].name < w[1].name) {
            Headers::Map(pairs.collect())
        } else {
            Headers::List(pairs.collect())
        };
        line
    }

    /// The record of this line; `position` is its index among the records
    /// read, its offset when the line has none.
    pub fn into_record(self, position: i64) -> anyhow::Result<Record> {
        let value = match (self.value, self.value_text, self.value_base64) {
            (Some(value), None, None) => value.to_string().into_bytes(),
            (None, Some(text), None) => text.into_bytes(),
            (None, None, Some(base64)) => {
                BASE64.decode(base64).map_err(|e| anyhow::anyhow!("`value_base64`: bad base64: {e}"))?
            }
            _ => bail!("give exactly one of `value` (JSON), `value_text` and `value_base64`"),
        };
        let key = match (self.key, self.key_base64) {
            (None, None) => None,
            (Some(key), None) => Some(key.into_bytes()),
            (None, Some(base64)) => {
                Some(BASE64.decode(base64).map_err(|e| anyhow::anyhow!("`key_base64`: bad base64: {e}"))?)
            }
            (Some(_), Some(_)) => bail!("give at most one of `key` and `key_base64`"),
        };
        let pairs: Vec<(String, HeaderValue)> = match self.headers {
            Headers::Map(map) => map.into_iter().collect(),
            Headers::List(list) => list,
        };
        let mut headers = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            let value = value.bytes(&name)?;
            headers.push(Header { name, value });
        }
        Ok(Record {
            key,
            value: Some(value),
            headers,
            topic: self.topic.unwrap_or_else(|| "input".into()),
            partition: self.partition.unwrap_or(0),
            offset: self.offset.unwrap_or(position),
            timestamp_ms: self.timestamp_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])]) -> Record {
        Record {
            key: key.map(<[u8]>::to_vec),
            value: Some(value.to_vec()),
            headers: headers.iter().map(|(n, v)| Header { name: n.to_string(), value: v.to_vec() }).collect(),
            topic: "orders".into(),
            partition: 3,
            offset: 41,
            timestamp_ms: Some(1_767_225_600_000),
        }
    }

    fn round_trip(record: &Record) -> (String, Record) {
        let text = serde_json::to_string(&RecordLine::of(record)).unwrap();
        let line: RecordLine = serde_json::from_str(&text).unwrap();
        (text, line.into_record(0).unwrap())
    }

    #[test]
    fn compact_json_is_kept_as_json_and_comes_back_byte_for_byte() {
        let r = record(Some(b"o-41"), br#"{"order_id":"o-41","total":12.5}"#, &[("source", b"web")]);
        let (text, back) = round_trip(&r);
        assert_eq!(back, r);
        assert!(text.contains(r#""value":{"order_id":"o-41","total":12.5}"#), "{text}");
        assert!(text.contains(r#""headers":{"source":"web"}"#), "{text}");
    }

    #[test]
    fn json_that_would_not_come_back_the_same_is_kept_as_text() {
        // Spacing always changes when re-written.
        for value in [&br#"{"b": 1, "a": 2}"#[..], b"not json"] {
            let r = record(None, value, &[]);
            let (text, back) = round_trip(&r);
            assert_eq!(back, r, "{text}");
            assert!(text.contains("value_text"), "{text}");
        }
        // Key order and number spelling may or may not (serde_json's
        // features decide); the bytes come back either way.
        for value in [&br#"{"z":1,"a":2}"#[..], b"1.0e3", b"12.50"] {
            let r = record(None, value, &[]);
            let (text, back) = round_trip(&r);
            assert_eq!(back, r, "{text}");
        }
    }

    #[test]
    fn bytes_that_are_not_text_are_kept_in_base64() {
        let r = record(Some(&[0xff, 0x00]), &[0xc3, 0x28, 0x01], &[("bin", &[0xfe]), ("text", b"ok")]);
        let (text, back) = round_trip(&r);
        assert_eq!(back, r);
        assert!(text.contains("key_base64") && text.contains("value_base64"), "{text}");
        assert!(text.contains(r#""bin":{"base64":"/g=="}"#), "{text}");
    }

    #[test]
    fn headers_out_of_order_or_repeated_keep_their_order_as_pairs() {
        let r = record(None, b"{}", &[("z", b"1"), ("a", b"2"), ("z", b"3")]);
        let (text, back) = round_trip(&r);
        assert_eq!(back, r);
        assert!(text.contains(r#""headers":[["z","1"],["a","2"],["z","3"]]"#), "{text}");
        let r = record(None, b"{}", &[("z", b"1"), ("a", b"2")]);
        assert_eq!(round_trip(&r).1, r);
    }

    #[test]
    fn a_line_with_two_values_or_none_is_refused() {
        let two: RecordLine = serde_json::from_str(r#"{"value":{},"value_text":"x"}"#).unwrap();
        let err = two.into_record(0).unwrap_err().to_string();
        assert!(err.contains("exactly one of `value`"), "{err}");
        let none: RecordLine = serde_json::from_str(r#"{"key":"k"}"#).unwrap();
        assert!(none.into_record(0).is_err());
    }
}
