//! The SDK's side of `process-tables` (`sluice:plugin@0.6.0`): the records
//! of a batch read in place from the tables of bytes the host passed in,
//! and their results written into two more. The rows' layouts are in
//! `wit/plugin@0.6.0/plugin.wit`.

use crate::bindings::sluice::plugin0_6_0::tables as wit;
use crate::{Emit, Error, Headers, Record};
use std::borrow::Cow;
use std::cell::RefCell;

pub use wit::{Batch, Results};

/// Bytes per row of `batch.records`.
pub(crate) const RECORD_ROW: usize = 56;
/// Bytes per row of `batch.headers`.
pub(crate) const HEADER_ROW: usize = 16;
/// Bytes per row of `results.entries`.
const ENTRY_ROW: usize = 32;

/// The u32 at `at` in `row`.
fn word(row: &[u8], at: usize) -> u32 {
    row.get(at..at + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The s64 at `at` in `row`.
fn long(row: &[u8], at: usize) -> i64 {
    row.get(at..at + 8).map_or(0, |b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
}

/// The bytes of the span at `at` in `row`; none if it lies outside `bytes`
/// (the host never gives such a span).
fn slice<'a>(bytes: &'a [u8], row: &[u8], at: usize) -> &'a [u8] {
    let start = word(row, at) as usize;
    bytes.get(start..start.saturating_add(word(row, at + 4) as usize)).unwrap_or_default()
}

/// The text of the span at `at` in `row` (the host gives only UTF-8 where
/// the contract says text).
fn text<'a>(bytes: &'a [u8], row: &[u8], at: usize) -> &'a str {
    std::str::from_utf8(slice(bytes, row, at)).unwrap_or_default()
}

/// A header row's name and value.
pub(crate) fn header<'a>(bytes: &'a [u8], row: &[u8]) -> (&'a str, &'a [u8]) {
    (text(bytes, row, 0), slice(bytes, row, 8))
}

/// The records of `batch`, borrowing their bytes from it.
pub(crate) fn records(batch: &Batch) -> Vec<Record<'_>> {
    let bytes = batch.bytes.as_slice();
    batch
        .records
        .chunks_exact(RECORD_ROW)
        .zip(0..)
        .map(|(row, at)| {
            let flags = word(row, 36);
            let first = word(row, 24) as usize * HEADER_ROW;
            let len = word(row, 28) as usize * HEADER_ROW;
            let headers = batch.headers.get(first..first.saturating_add(len)).unwrap_or_default();
            Record {
                key: (flags & 1 != 0).then(|| Cow::Borrowed(slice(bytes, row, 0))),
                value: Cow::Borrowed(slice(bytes, row, 8)),
                headers: Headers::Packed { bytes, rows: headers },
                topic: Cow::Borrowed(text(bytes, row, 16)),
                partition: word(row, 32) as i32,
                offset: long(row, 40),
                timestamp_ms: (flags & 2 != 0).then(|| long(row, 48)),
                at,
                kept: RefCell::new(None),
            }
        })
        .collect()
}

/// The results of a batch, written one record at a time.
pub(crate) struct Packer {
    bytes: Vec<u8>,
    rows: Vec<u8>,
}

/// The bytes and rows that `result` takes in the results.
fn size(result: &Result<Emit, Error>) -> (usize, usize) {
    match result {
        Ok(Emit { failed: Some(e), .. }) | Err(e) => (e.reason.len() + e.message.len(), 1),
        Ok(emit) => {
            let mut bytes = 0;
            let mut rows = 1 + emit.outputs.len() + emit.effects.len();
            for o in &emit.outputs {
                let key = o.key.as_ref().and_then(|k| k.as_ref()).map_or(0, |k| k.len());
                bytes += o.route.as_ref().map_or(0, |r| r.len()) + key + o.value.len();
                bytes += o.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>();
                rows += o.headers.len();
            }
            for (key, field, change) in emit.written() {
                bytes += key.len() + field.len() + change.err().map_or(0, str::len);
            }
            (bytes, rows)
        }
    }
}

impl Packer {
    /// Results with exactly the room that `results` take: the buffers are
    /// allocated once, and handed to the host as they are (a buffer with
    /// room to spare is shrunk, which is another allocation).
    pub(crate) fn for_results(results: &[Result<Emit, Error>]) -> Self {
        let (bytes, rows) = results.iter().map(size).fold((0, 0), |(b, r), (db, dr)| (b + db, r + dr));
        Self { bytes: Vec::with_capacity(bytes), rows: Vec::with_capacity(rows * ENTRY_ROW) }
    }

    /// Appends `data` to the bytes: its span.
    fn span(&mut self, data: &[u8]) -> [u32; 2] {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        [start, data.len() as u32]
    }

    fn row(&mut self, head: [u8; 4], words: [u32; 7]) {
        self.rows.extend_from_slice(&head);
        for w in words {
            self.rows.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn outcome(&mut self, kind: u8, outputs: usize, effects: usize, error: Option<&Error>) {
        let ([rs, rl], [ms, ml]) = match error {
            Some(e) => (self.span(e.reason.as_bytes()), self.span(e.message.as_bytes())),
            None => ([0, 0], [0, 0]),
        };
        self.row([0, kind, 0, 0], [outputs as u32, effects as u32, rs, rl, ms, ml, 0]);
    }

    /// The next record's result.
    pub(crate) fn push(&mut self, result: Result<Emit, Error>) {
        let emit = match result {
            Ok(Emit { failed: Some(e), .. }) | Err(e) => {
                return self.outcome(if e.retry { 3 } else { 2 }, 0, 0, Some(&e));
            }
            Ok(emit) if emit.outputs.is_empty() && emit.effects.is_empty() => return self.outcome(1, 0, 0, None),
            Ok(emit) => emit,
        };
        self.outcome(0, emit.outputs.len(), emit.effects.len(), None);
        for o in &emit.outputs {
            // Outputs carry the input record's headers, before their own.
            let (flags, [rs, rl]) = match &o.route {
                Some(route) => (1 | 2, self.span(route.as_bytes())),
                None => (2, [0, 0]),
            };
            let (key, [ks, kl]) = match &o.key {
                None => (0, [0, 0]),
                Some(None) => (1, [0, 0]),
                Some(Some(key)) => (2, self.span(key)),
            };
            let [vs, vl] = self.span(&o.value);
            self.row([1, flags, key, 0], [rs, rl, ks, kl, vs, vl, o.headers.len() as u32]);
            for h in &o.headers {
                let ([ns, nl], [hs, hl]) = (self.span(h.name.as_bytes()), self.span(&h.value));
                self.row([2, 0, 0, 0], [ns, nl, hs, hl, 0, 0, 0]);
            }
        }
        for (key, field, change) in emit.written() {
            let ([ks, kl], [fs, fl]) = (self.span(key.as_bytes()), self.span(field.as_bytes()));
            match change {
                Ok(delta) => {
                    let (lo, hi) = (delta as u64 as u32, ((delta as u64) >> 32) as u32);
                    self.row([3, 0, 0, 0], [ks, kl, fs, fl, lo, hi, 0]);
                }
                Err(value) => {
                    let [vs, vl] = self.span(value.as_bytes());
                    self.row([4, 0, 0, 0], [ks, kl, fs, fl, vs, vl, 0]);
                }
            }
        }
    }

    /// The results, to return to the host.
    pub(crate) fn finish(self) -> Results {
        debug_assert_eq!(self.rows.len() % ENTRY_ROW, 0, "whole rows");
        Results { bytes: self.bytes, entries: self.rows }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(bytes: &mut Vec<u8>, data: &[u8]) -> [u32; 2] {
        let start = bytes.len() as u32;
        bytes.extend_from_slice(data);
        [start, data.len() as u32]
    }

    fn words(row: &mut Vec<u8>, words: &[u32]) {
        for w in words {
            row.extend_from_slice(&w.to_le_bytes());
        }
    }

    #[test]
    fn records_read_their_fields_in_place_from_the_tables() {
        let mut bytes = Vec::new();
        let topic = put(&mut bytes, b"orders");
        let (key, value) = (put(&mut bytes, b"k1"), put(&mut bytes, b"{\"a\":1}"));
        let mut headers = Vec::new();
        let (n1, v1) = (put(&mut bytes, b"trace"), put(&mut bytes, b"t1"));
        words(&mut headers, &[n1[0], n1[1], v1[0], v1[1]]);
        let (n2, v2) = (put(&mut bytes, "ü".as_bytes()), put(&mut bytes, b""));
        words(&mut headers, &[n2[0], n2[1], v2[0], v2[1]]);
        let empty = put(&mut bytes, b"");
        let mut records = Vec::new();
        words(&mut records, &[key[0], key[1], value[0], value[1], topic[0], topic[1], 0, 2]);
        words(&mut records, &[3, 1 | 2]);
        records.extend_from_slice(&41i64.to_le_bytes());
        records.extend_from_slice(&9i64.to_le_bytes());
        words(&mut records, &[0, 0, empty[0], empty[1], topic[0], topic[1], 2, 0]);
        words(&mut records, &[(-1i32) as u32, 0]);
        records.extend_from_slice(&42i64.to_le_bytes());
        records.extend_from_slice(&0i64.to_le_bytes());
        let batch = Batch { bytes, records, headers };
        let records = super::records(&batch);
        let [a, b] = records.as_slice() else { panic!("two records") };
        assert_eq!(
            (a.key(), a.value(), a.topic(), a.partition(), a.offset()),
            (Some(&b"k1"[..]), &b"{\"a\":1}"[..], "orders", 3, 41)
        );
        assert_eq!(a.headers().collect::<Vec<_>>(), [("trace", &b"t1"[..]), ("ü", &b""[..])]);
        assert_eq!((a.header("trace"), a.timestamp_ms(), a.at()), (Some(&b"t1"[..]), Some(9), 0));
        assert_eq!(
            (b.key(), b.value(), b.headers().count(), b.partition(), b.offset(), b.timestamp_ms(), b.at()),
            (None, &b""[..], 0, -1, 42, None, 1)
        );
        assert!(matches!(&a.value, Cow::Borrowed(_)), "borrowed, not copied");
    }

    #[test]
    fn results_hold_one_outcome_row_per_record_each_followed_by_what_it_announces() {
        let emit = Emit::value(b"v1".to_vec()).header("h", "x").and_value(b"v2".to_vec()).route("vip").no_key();
        let results = vec![
            Ok(emit.incr("user:1", "orders", -2).set("user:1", "last", "o1")),
            Ok(Emit::filtered()),
            Err(Error::reject("bad_order", "no id")),
            Err(Error::retry("busy", "later")),
            Ok(Emit::value(b"v3".to_vec()).key("own")),
        ];
        let mut packer = Packer::for_results(&results);
        let room = (packer.bytes.capacity(), packer.rows.capacity());
        for result in results {
            packer.push(result);
        }
        let Results { bytes, entries } = packer.finish();
        // Written into exactly the room it was given: nothing to grow or
        // shrink.
        assert_eq!((bytes.len(), entries.len()), room);
        assert_eq!((bytes.capacity(), entries.capacity()), room);
        assert_eq!(entries.len() % ENTRY_ROW, 0);
        let mut rows = Vec::new();
        for row in entries.chunks(ENTRY_ROW) {
            let t = |at: usize| text(&bytes, row, at);
            rows.push(match row[0] {
                0 => match row[1] {
                    0 => format!("emit {} {}", word(row, 4), word(row, 8)),
                    1 => "filtered".into(),
                    2 => format!("reject {} {}", t(12), t(20)),
                    _ => format!("retry {} {}", t(12), t(20)),
                },
                1 => {
                    let key = match row[2] {
                        0 => "inherit",
                        1 => "none",
                        _ => t(12),
                    };
                    let route = if row[1] & 1 != 0 { t(4) } else { "-" };
                    format!("output {route} {key} {} {} {}", t(20), row[1] & 2 != 0, word(row, 28))
                }
                2 => format!("header {}={}", t(4), t(12)),
                3 => format!("incr {} {} {}", t(4), t(12), long(row, 20)),
                _ => format!("set {} {} {}", t(4), t(12), t(20)),
            });
        }
        assert_eq!(
            rows,
            [
                "emit 2 2",
                "output - inherit v1 true 1",
                "header h=x",
                "output vip none v2 true 0",
                "incr user:1 orders -2",
                "set user:1 last o1",
                "filtered",
                "reject bad_order no id",
                "retry busy later",
                "emit 1 0",
                "output - own v3 true 0",
            ]
        );
    }
}
