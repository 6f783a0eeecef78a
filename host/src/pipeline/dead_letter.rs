//! Dead letters: a record that could not be processed, as received, with
//! headers saying why (`sluice.error.*`), where it came from
//! (`sluice.source.*`) and which stages and pipeline generation handled it
//! (`sluice.lineage`, `sluice.generation`).

use super::reason::Reason;
use crate::bindings::ErrorInfo;
use crate::record::{Header, Produce, Record};
use std::sync::Arc;

/// Header naming the `stage@version` of every stage a record went through.
pub const LINEAGE_HEADER: &str = "sluice.lineage";
/// Header giving the generation of the pipeline that produced a record.
pub const GENERATION_HEADER: &str = "sluice.generation";
/// Header of a dead letter whose value was cut to fit `message.max.bytes`:
/// the original value's length in bytes.
pub const TRUNCATED_HEADER: &str = "sluice.error.truncated";
/// The `sluice.error.stage` of a record the host rejects before any stage
/// sees it (`record_too_large`).
pub const SOURCE_STAGE: &str = "source";

/// Bytes a record takes beyond its key, value and headers, counted towards
/// `message.max.bytes` (the record's and its batch's framing), with room to
/// spare.
const RECORD_OVERHEAD: usize = 256;

/// The size of a record as the producer counts it, framing included.
pub(super) fn record_size(produce: &Produce) -> usize {
    let headers: usize = produce.headers.iter().map(|h| h.name.len() + h.value.len() + 8).sum();
    produce.key.as_ref().map_or(0, Vec::len) + produce.value.len() + headers + RECORD_OVERHEAD
}

/// A record that could not be processed.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The index of the input record in its batch.
    pub origin: usize,
    /// The stage that gave up on it.
    pub stage: Arc<str>,
    /// Why.
    pub reason: Reason,
    /// What went wrong (the `sluice.error.message` header).
    pub message: String,
    /// The dead-letter record: the input as received plus error headers.
    pub record: Produce,
}

/// What the dead letters of one chain generation carry: their topic, the
/// chain's stages and lineage, its generation and the largest record the
/// producer writes. A batch's result keeps it, so that a record rejected
/// after the batch ran (Redis refused its effects) gets the dead letter of
/// the chain that processed it, whatever is live by then.
#[derive(Debug, Clone)]
pub struct Letters {
    pub(super) topic: Arc<str>,
    pub(super) stages: Vec<Arc<str>>,
    /// `lineage[i]`: the lineage header of a record that went through
    /// stages `0..=i`.
    pub(super) lineage: Vec<Vec<u8>>,
    pub(super) generation: u64,
    /// The largest record the producer writes (`message.max.bytes`).
    pub(super) max_record_bytes: usize,
}

impl Letters {
    /// The dead letter of `record` (at `origin` in its batch), rejected by
    /// the stage at `index` (`None`: by the host, before any stage).
    pub(super) fn letter(&self, record: &Record, origin: usize, index: Option<usize>, info: &ErrorInfo) -> DeadLetter {
        let stage = match index {
            Some(i) => self.stages[i].clone(),
            None => Arc::from(SOURCE_STAGE),
        };
        let mut dead = dead_letter_record(&self.topic, record, &stage, info);
        if let Some(i) = index {
            dead.headers.push(Header { name: LINEAGE_HEADER.into(), value: self.lineage[i].clone() });
        }
        let generation = self.generation.to_string().into_bytes();
        dead.headers.push(Header { name: GENERATION_HEADER.into(), value: generation });
        truncate_to_fit(&mut dead, self.max_record_bytes);
        DeadLetter { origin, stage, reason: Reason::of(&info.reason), message: info.message.clone(), record: dead }
    }
}

/// The dead-letter record of `record`: key, value and headers as received,
/// plus the `sluice.error.*` and `sluice.source.*` headers.
fn dead_letter_record(topic: &Arc<str>, record: &Record, stage: &str, info: &ErrorInfo) -> Produce {
    let mut headers = record.headers.clone();
    let mut add = |name: &str, value: String| headers.push(Header { name: name.into(), value: value.into_bytes() });
    add("sluice.error.stage", stage.to_string());
    add("sluice.error.reason", info.reason.clone());
    add("sluice.error.message", info.message.clone());
    add("sluice.source.topic", record.topic.clone());
    add("sluice.source.partition", record.partition.to_string());
    add("sluice.source.offset", record.offset.to_string());
    Produce { topic: topic.clone(), key: record.key.clone(), value: record.value.clone().unwrap_or_default(), headers }
}

/// Cuts the value of a dead letter that would be too large to write (an
/// input near the limit, plus the error headers), so that the record is
/// dead-lettered rather than wedging the pipeline, and says so in a header.
fn truncate_to_fit(dead: &mut Produce, max: usize) {
    let size = record_size(dead);
    if size <= max {
        return;
    }
    let original = dead.value.len();
    let header = Header { name: TRUNCATED_HEADER.into(), value: original.to_string().into_bytes() };
    let room = original.saturating_sub(size - max + header.name.len() + header.value.len() + 8);
    dead.value.truncate(room);
    dead.headers.push(header);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(max_record_bytes: usize) -> Letters {
        Letters {
            topic: "dlq".into(),
            stages: vec!["a".into(), "b".into()],
            lineage: vec![b"a@1".to_vec(), b"a@1,b@2".to_vec()],
            generation: 7,
            max_record_bytes,
        }
    }

    fn record(value: &[u8]) -> Record {
        let headers = vec![Header { name: "trace".into(), value: b"t1".to_vec() }];
        let (topic, partition, offset) = ("orders".into(), 3, 42);
        Record {
            key: Some(b"k".to_vec()),
            value: Some(value.to_vec()),
            headers,
            topic,
            partition,
            offset,
            timestamp_ms: None,
        }
    }

    fn header<'a>(dead: &'a DeadLetter, name: &str) -> &'a [u8] {
        &dead.record.headers.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no {name}")).value
    }

    #[test]
    fn a_dead_letter_is_the_record_as_received_with_why_where_and_which_stages() {
        let info = ErrorInfo { reason: "missing_field".into(), message: "no user".into() };
        let dead = letters(1 << 20).letter(&record(b"{}"), 5, Some(1), &info);
        assert_eq!(
            (dead.origin, &*dead.stage, dead.reason.as_str(), dead.message.as_str()),
            (5, "b", "missing_field", "no user")
        );
        assert_eq!(
            (&*dead.record.topic, dead.record.key.as_deref(), &dead.record.value[..]),
            ("dlq", Some(&b"k"[..]), &b"{}"[..])
        );
        let names: Vec<&str> = dead.record.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "trace",
                "sluice.error.stage",
                "sluice.error.reason",
                "sluice.error.message",
                "sluice.source.topic",
                "sluice.source.partition",
                "sluice.source.offset",
                LINEAGE_HEADER,
                GENERATION_HEADER
            ]
        );
        assert_eq!(header(&dead, "sluice.source.partition"), b"3");
        assert_eq!(header(&dead, "sluice.source.offset"), b"42");
        assert_eq!(header(&dead, LINEAGE_HEADER), b"a@1,b@2");
        assert_eq!(header(&dead, GENERATION_HEADER), b"7");
    }

    #[test]
    fn the_host_rejects_as_the_source_stage_without_a_lineage() {
        let info = ErrorInfo { reason: "record_too_large".into(), message: "big".into() };
        let dead = letters(1 << 20).letter(&record(b"{}"), 0, None, &info);
        assert_eq!(&*dead.stage, SOURCE_STAGE);
        assert!(dead.record.headers.iter().all(|h| h.name != LINEAGE_HEADER));
    }

    #[test]
    fn a_dead_letter_too_large_to_write_is_cut_to_fit_and_says_so() {
        let info = ErrorInfo { reason: "plugin_trap".into(), message: "boom".into() };
        let dead = letters(2000).letter(&record(&[b'x'; 5000]), 0, Some(0), &info);
        assert!(record_size(&dead.record) <= 2000, "{} bytes", record_size(&dead.record));
        assert!(dead.record.value.len() > 1000, "as much of the value as fits is kept");
        assert_eq!(header(&dead, TRUNCATED_HEADER), b"5000");
    }
}
