//! The records the host moves, owned by the host: a record as read, a
//! header, a record to produce, a Redis effect, and a batch that knows its
//! per-partition offset spans.
//!
//! This module depends on nothing else in Sluice. The plugin contract's
//! types (`bindings`) are converted to and from these at the stage
//! boundary, in `pipeline`, so that `kafka` and `redis` never see them.

use std::sync::Arc;

/// A record header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header name.
    pub name: String,
    /// The header value.
    pub value: Vec<u8>,
}

/// A record as read from a source topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record key.
    pub key: Option<Vec<u8>>,
    /// The record value; `None` for a Kafka null value.
    pub value: Option<Vec<u8>>,
    /// The record headers.
    pub headers: Vec<Header>,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Record timestamp, if any.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// The bytes of its key, value and headers.
    pub fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len) + headers
    }
}

/// A record to write to a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produce {
    /// Destination topic.
    pub topic: Arc<str>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Vec<u8>,
    /// Headers.
    pub headers: Vec<Header>,
}

/// Rows for PostgreSQL tables (`[tables.NAME]`): an output routed to them,
/// one row in each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The `[tables.NAME]` names.
    pub tables: Arc<[Arc<str>]>,
    /// The output's key.
    pub key: Option<Vec<u8>>,
    /// The output's value.
    pub value: Vec<u8>,
}

/// A change to a Redis hash that a record causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `HINCRBY key field delta`.
    HashIncr {
        /// The hash.
        key: String,
        /// The field.
        field: String,
        /// What to add.
        delta: i64,
    },
    /// `HSET key field value`.
    HashSet {
        /// The hash.
        key: String,
        /// The field.
        field: String,
        /// The new value.
        value: String,
    },
}

impl Effect {
    /// The hash it changes.
    pub fn key(&self) -> &str {
        match self {
            Self::HashIncr { key, .. } | Self::HashSet { key, .. } => key,
        }
    }

    /// The field it changes.
    pub fn field(&self) -> &str {
        match self {
            Self::HashIncr { field, .. } | Self::HashSet { field, .. } => field,
        }
    }
}

/// The records of one partition in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset of its first record in the batch.
    pub first: i64,
    /// The offset of its last record in the batch.
    pub last: i64,
}

/// Records taken together through the chain, in the order read (so in
/// offset order within each partition), with their per-partition spans.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    records: Vec<Record>,
    spans: Vec<Span>,
    /// `span_of[i]`: the index in `spans` of record `i`'s partition.
    span_of: Vec<usize>,
    /// How many times the source had moved a partition back when the
    /// batch's records were taken (see [`Batch::with_seeks`]).
    seeks: u64,
}

impl Batch {
    /// A batch of `records`; its spans are computed here, once.
    pub fn new(records: Vec<Record>) -> Self {
        let mut spans: Vec<Span> = Vec::new();
        let mut span_of = Vec::with_capacity(records.len());
        for r in &records {
            let at = match spans.iter().position(|s| s.partition == r.partition && s.topic == r.topic) {
                Some(at) => at,
                None => {
                    spans.push(Span {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        first: r.offset,
                        last: r.offset,
                    });
                    spans.len() - 1
                }
            };
            let span = &mut spans[at];
            span.first = span.first.min(r.offset);
            span.last = span.last.max(r.offset);
            span_of.push(at);
        }
        Self { records, spans, span_of, seeks: 0 }
    }

    /// The batch, noting that its records were taken after the source's
    /// `seeks`th move of a partition back (a rewind): a later rewind of the
    /// batch knows which moves came after it.
    pub fn with_seeks(mut self, seeks: u64) -> Self {
        self.seeks = seeks;
        self
    }

    /// See [`Batch::with_seeks`].
    pub fn seeks(&self) -> u64 {
        self.seeks
    }

    /// Its records.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// One span per partition, in the order each partition first appears.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// The index in [`Batch::spans`] of record `index`'s partition.
    pub fn span_of(&self, index: usize) -> usize {
        self.span_of[index]
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, partition: i32, offset: i64) -> Record {
        Record {
            key: None,
            value: None,
            headers: Vec::new(),
            topic: topic.into(),
            partition,
            offset,
            timestamp_ms: None,
        }
    }

    #[test]
    fn a_batch_knows_each_partitions_first_and_last_offset() {
        let batch = Batch::new(vec![
            record("orders", 1, 10),
            record("orders", 0, 4),
            record("orders", 1, 11),
            record("returns", 1, 7),
            record("orders", 1, 15),
        ]);
        let spans: Vec<_> = batch.spans().iter().map(|s| (s.topic.as_str(), s.partition, s.first, s.last)).collect();
        assert_eq!(spans, [("orders", 1, 10, 15), ("orders", 0, 4, 4), ("returns", 1, 7, 7)]);
        let span_of: Vec<_> = (0..batch.len()).map(|i| batch.span_of(i)).collect();
        assert_eq!(span_of, [0, 1, 0, 2, 0]);
    }

    #[test]
    fn an_empty_batch_has_no_spans() {
        let batch = Batch::new(Vec::new());
        assert!(batch.is_empty() && batch.spans().is_empty());
    }
}
