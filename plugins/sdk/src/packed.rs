//! The SDK's side of `process-packed` (`sluice:plugin@0.5.0`): the records
//! of a batch read in place from the three lists the host passed in, and
//! their results written into two.

use crate::bindings::sluice::plugin0_5_0::packed as wit;
use crate::{Emit, Error, Headers, Record};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};

pub(crate) use wit::Header as PackedHeader;
pub use wit::{Batch, Results};

std::thread_local! {
    /// The bytes and entries of the last results: the next are given as
    /// much room, so that they are allocated once.
    static LAST: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// The bytes of `span`; none if it lies outside `bytes` (the host never
/// gives such a span).
fn slice(bytes: &[u8], span: wit::Span) -> &[u8] {
    let start = span.start as usize;
    bytes.get(start..start.saturating_add(span.len as usize)).unwrap_or_default()
}

/// The text of `span` (the host gives only UTF-8 where the contract says
/// text).
fn text(bytes: &[u8], span: wit::Span) -> &str {
    std::str::from_utf8(slice(bytes, span)).unwrap_or_default()
}

/// A header's name and value.
pub(crate) fn header<'a>(bytes: &'a [u8], header: &wit::Header) -> (&'a str, &'a [u8]) {
    (text(bytes, header.name), slice(bytes, header.value))
}

/// The records of `batch`, borrowing their bytes from it.
pub(crate) fn records(batch: &Batch) -> Vec<Record<'_>> {
    let bytes = batch.bytes.as_slice();
    batch
        .messages
        .iter()
        .zip(0..)
        .map(|(m, at)| {
            let first = m.headers.start as usize;
            let headers = batch.headers.get(first..first.saturating_add(m.headers.len as usize)).unwrap_or_default();
            Record {
                key: m.key.map(|key| Cow::Borrowed(slice(bytes, key))),
                value: Cow::Borrowed(slice(bytes, m.value)),
                headers: Headers::Packed { bytes, headers },
                topic: Cow::Borrowed(text(bytes, m.topic)),
                partition: m.partition,
                offset: m.offset,
                timestamp_ms: m.timestamp_ms,
                at,
                kept: RefCell::new(None),
            }
        })
        .collect()
}

/// The results of a batch, written one record at a time.
pub(crate) struct Packer {
    bytes: Vec<u8>,
    entries: Vec<wit::Entry>,
}

const NOTHING: wit::Span = wit::Span { start: 0, len: 0 };

impl Packer {
    /// Results with as much room as the last ones took, and a quarter more.
    pub(crate) fn new() -> Self {
        let (bytes, entries) = LAST.with(Cell::get);
        Self { bytes: Vec::with_capacity(bytes + bytes / 4), entries: Vec::with_capacity(entries + entries / 4) }
    }

    fn span(&mut self, data: &[u8]) -> wit::Span {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        wit::Span { start, len: data.len() as u32 }
    }

    fn outcome(&mut self, kind: wit::OutcomeKind, outputs: usize, effects: usize, error: Option<&Error>) {
        let (reason, message) = match error {
            Some(e) => (self.span(e.reason.as_bytes()), self.span(e.message.as_bytes())),
            None => (NOTHING, NOTHING),
        };
        let outcome = wit::Outcome { kind, outputs: outputs as u32, effects: effects as u32, reason, message };
        self.entries.push(wit::Entry::Outcome(outcome));
    }

    /// The next record's result.
    pub(crate) fn push(&mut self, result: Result<Emit, Error>) {
        let emit = match result {
            Ok(Emit { failed: Some(e), .. }) | Err(e) => {
                let kind = if e.retry { wit::OutcomeKind::Retry } else { wit::OutcomeKind::Reject };
                return self.outcome(kind, 0, 0, Some(&e));
            }
            Ok(emit) if emit.outputs.is_empty() && emit.effects.is_empty() => {
                return self.outcome(wit::OutcomeKind::Filtered, 0, 0, None);
            }
            Ok(emit) => emit,
        };
        self.outcome(wit::OutcomeKind::Emit, emit.outputs.len(), emit.effects.len(), None);
        for o in &emit.outputs {
            let route = o.route.as_ref().map(|route| self.span(route.as_bytes()));
            let key = match &o.key {
                None => wit::OutputKey::Inherit,
                Some(None) => wit::OutputKey::None,
                Some(Some(key)) => wit::OutputKey::Bytes(self.span(key)),
            };
            let value = self.span(&o.value);
            let headers = o.headers.len() as u32;
            self.entries.push(wit::Entry::Output(wit::Output { route, key, value, inherit_headers: true, headers }));
            for h in &o.headers {
                let header = wit::Header { name: self.span(h.name.as_bytes()), value: self.span(&h.value) };
                self.entries.push(wit::Entry::Header(header));
            }
        }
        for (key, field, change) in emit.written() {
            let (key, field) = (self.span(key.as_bytes()), self.span(field.as_bytes()));
            let effect = match change {
                Ok(delta) => wit::Effect::HashIncr((key, field, delta)),
                Err(value) => wit::Effect::HashSet((key, field, self.span(value.as_bytes()))),
            };
            self.entries.push(wit::Entry::Effect(effect));
        }
    }

    /// The results, to return to the host.
    pub(crate) fn finish(self) -> Results {
        LAST.with(|last| last.set((self.bytes.len(), self.entries.len())));
        Results { bytes: self.bytes, entries: self.entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(bytes: &mut Vec<u8>, data: &[u8]) -> wit::Span {
        let start = bytes.len() as u32;
        bytes.extend_from_slice(data);
        wit::Span { start, len: data.len() as u32 }
    }

    fn span(bytes: &[u8], span: wit::Span) -> &[u8] {
        slice(bytes, span)
    }

    #[test]
    fn records_read_their_fields_in_place_from_the_batch() {
        let mut bytes = Vec::new();
        let topic = put(&mut bytes, b"orders");
        let first = wit::Message {
            key: Some(put(&mut bytes, b"k1")),
            value: put(&mut bytes, b"{\"a\":1}"),
            headers: wit::Span { start: 0, len: 2 },
            topic,
            partition: 3,
            offset: 41,
            timestamp_ms: Some(9),
        };
        let headers = vec![
            wit::Header { name: put(&mut bytes, b"trace"), value: put(&mut bytes, b"t1") },
            wit::Header { name: put(&mut bytes, "ü".as_bytes()), value: put(&mut bytes, b"") },
        ];
        let second = wit::Message {
            key: None,
            value: put(&mut bytes, b""),
            headers: wit::Span { start: 2, len: 0 },
            topic,
            partition: 3,
            offset: 42,
            timestamp_ms: None,
        };
        let batch = Batch { bytes, messages: vec![first, second], headers };
        let records = records(&batch);
        let [a, b] = records.as_slice() else { panic!("two records") };
        assert_eq!(
            (a.key(), a.value(), a.topic(), a.partition(), a.offset()),
            (Some(&b"k1"[..]), &b"{\"a\":1}"[..], "orders", 3, 41)
        );
        assert_eq!(a.headers().collect::<Vec<_>>(), [("trace", &b"t1"[..]), ("ü", &b""[..])]);
        assert_eq!((a.header("trace"), a.timestamp_ms(), a.at()), (Some(&b"t1"[..]), Some(9), 0));
        assert_eq!((b.key(), b.value(), b.headers().count(), b.offset(), b.at()), (None, &b""[..], 0, 42, 1));
        assert!(matches!(&a.value, Cow::Borrowed(_)), "borrowed, not copied");
    }

    #[test]
    fn results_hold_one_outcome_per_record_each_followed_by_what_it_announces() {
        let mut packer = Packer::new();
        let emit = Emit::value(b"v1".to_vec()).header("h", "x").and_value(b"v2".to_vec()).route("vip").no_key();
        packer.push(Ok(emit.incr("user:1", "orders", 2).set("user:1", "last", "o1")));
        packer.push(Ok(Emit::filtered()));
        packer.push(Err(Error::reject("bad_order", "no id")));
        packer.push(Err(Error::retry("busy", "later")));
        packer.push(Ok(Emit::value(b"v3".to_vec()).key("own")));
        let Results { bytes, entries } = packer.finish();
        let text = |s: wit::Span| std::str::from_utf8(span(&bytes, s)).unwrap();
        let mut kinds = Vec::new();
        for entry in &entries {
            kinds.push(match entry {
                wit::Entry::Outcome(o) => match o.kind {
                    wit::OutcomeKind::Emit => format!("emit {} {}", o.outputs, o.effects),
                    wit::OutcomeKind::Filtered => "filtered".into(),
                    wit::OutcomeKind::Reject => format!("reject {} {}", text(o.reason), text(o.message)),
                    wit::OutcomeKind::Retry => format!("retry {} {}", text(o.reason), text(o.message)),
                },
                wit::Entry::Output(o) => {
                    let key = match o.key {
                        wit::OutputKey::Inherit => "inherit".to_string(),
                        wit::OutputKey::None => "none".to_string(),
                        wit::OutputKey::Bytes(k) => text(k).to_string(),
                    };
                    let route = o.route.map_or("-", text);
                    format!("output {route} {key} {} {} {}", text(o.value), o.inherit_headers, o.headers)
                }
                wit::Entry::Header(h) => format!("header {}={}", text(h.name), text(h.value)),
                wit::Entry::Effect(wit::Effect::HashIncr((k, f, d))) => format!("incr {} {} {d}", text(*k), text(*f)),
                wit::Entry::Effect(wit::Effect::HashSet((k, f, v))) => {
                    format!("set {} {} {}", text(*k), text(*f), text(*v))
                }
            });
        }
        assert_eq!(
            kinds,
            [
                "emit 2 2",
                "output - inherit v1 true 1",
                "header h=x",
                "output vip none v2 true 0",
                "incr user:1 orders 2",
                "set user:1 last o1",
                "filtered",
                "reject bad_order no id",
                "retry busy later",
                "emit 1 0",
                "output - own v3 true 0",
            ]
        );
        // The next results start with as much room.
        let next = Packer::new();
        assert!(next.bytes.capacity() >= bytes.len() && next.entries.capacity() >= entries.len());
    }
}
