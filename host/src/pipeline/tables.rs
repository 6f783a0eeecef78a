//! The host's side of `process-tables` (`sluice:plugin@0.6.0`): a batch
//! written as three lists of bytes (its bytes, a row per record, a row per
//! header), and the two of its results read in place into the contract's
//! outcomes. The rows' layouts are in `wit/plugin@0.6.0/plugin.wit`.
//!
//! The entries of the results mean what 0.5.0's do: each row is read into
//! 0.5.0's [`Entry`] and the rest is [`super::packed`]'s, with the same
//! budget and the same [`Malformed`] errors, plus those of a row that
//! cannot be read (a table that is not whole rows, an unknown kind).

use super::lift::Budgeted;
use super::packed::{Entries, Malformed, put};
use crate::bindings::v0_5::sluice::plugin0_5_0::packed as v5;
use crate::bindings::v0_5::{Entry, OutcomeKind, OutputKey, PackedEffect, PackedHeader, Span};
use crate::bindings::v0_6::Batch;
use crate::bindings::{Message, Outcome};
use crate::engine::PROCESS_TABLES_EXPORT;
use wasmtime::component::{ComponentType, Lift};

/// Bytes per row of `batch.records`.
pub const RECORD_ROW: usize = 56;
/// Bytes per row of `batch.headers`.
pub const HEADER_ROW: usize = 16;
/// Bytes per row of `results.entries`.
pub const ENTRY_ROW: usize = 32;

/// `flags` of a record row: the record has a key.
const HAS_KEY: u32 = 1;
/// `flags` of a record row: the record has a timestamp.
const HAS_TIMESTAMP: u32 = 2;

/// Byte 0 of an entry row: what it is.
const OUTCOME: u8 = 0;
const OUTPUT: u8 = 1;
const HEADER: u8 = 2;
const HASH_INCR: u8 = 3;
const HASH_SET: u8 = 4;

/// Byte 1 of an output row: its flags.
const HAS_ROUTE: u8 = 1;
const INHERITS_HEADERS: u8 = 2;

/// The results of `process-tables`, lifted within the call's budget.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct Results {
    #[component(name = "bytes")]
    bytes: Budgeted<Vec<u8>>,
    #[component(name = "entries")]
    entries: Budgeted<Vec<u8>>,
}

/// Lists to write batches into.
pub fn lists() -> Batch {
    Batch { bytes: Vec::new(), records: Vec::new(), headers: Vec::new() }
}

/// Writes `messages` into `batch`, reusing the memory of its lists. Fails
/// if the batch's bytes do not fit the contract's 32-bit offsets.
pub fn pack(messages: &[Message], batch: &mut Batch) -> Result<(), Malformed> {
    batch.bytes.clear();
    batch.records.clear();
    batch.headers.clear();
    batch.records.reserve(messages.len() * RECORD_ROW);
    let bytes = &mut batch.bytes;
    // Records of one batch nearly always share their topic: it is written
    // once for each run of records from the same topic.
    let mut topic: Option<(&str, Span)> = None;
    let mut headers = 0u32;
    for m in messages {
        let key = m.key.as_deref().map(|key| put(bytes, key));
        let value = put(bytes, &m.value);
        for h in &m.headers {
            let (name, value) = (put(bytes, h.name.as_bytes()), put(bytes, &h.value));
            words(&mut batch.headers, &[name.start, name.len, value.start, value.len]);
        }
        let topic = match topic {
            Some((name, span)) if name == m.topic => span,
            _ => {
                let span = put(bytes, m.topic.as_bytes());
                topic = Some((&m.topic, span));
                span
            }
        };
        let flags = if key.is_some() { HAS_KEY } else { 0 } | if m.timestamp_ms.is_some() { HAS_TIMESTAMP } else { 0 };
        let key = key.unwrap_or(Span { start: 0, len: 0 });
        let count = m.headers.len() as u32;
        let row = &mut batch.records;
        words(row, &[key.start, key.len, value.start, value.len, topic.start, topic.len, headers, count]);
        row.extend_from_slice(&m.partition.to_le_bytes());
        row.extend_from_slice(&flags.to_le_bytes());
        row.extend_from_slice(&m.offset.to_le_bytes());
        row.extend_from_slice(&m.timestamp_ms.unwrap_or(0).to_le_bytes());
        headers = headers.wrapping_add(count);
    }
    if u32::try_from(batch.bytes.len()).is_err() || u32::try_from(batch.headers.len() / HEADER_ROW).is_err() {
        let what = format!("a batch of {} bytes is too large to pass in tables (at most 4 GiB)", batch.bytes.len());
        return Err(Malformed { call: PROCESS_TABLES_EXPORT, what });
    }
    Ok(())
}

fn words(row: &mut Vec<u8>, words: &[u32]) {
    for word in words {
        row.extend_from_slice(&word.to_le_bytes());
    }
}

/// The outcomes the results give `inputs`, one per input and in order.
pub fn unpack(inputs: &[Message], results: Results) -> wasmtime::Result<Vec<Outcome>> {
    let rows = &results.entries.0;
    if !rows.len().is_multiple_of(ENTRY_ROW) {
        let what = format!("the entries are {} bytes, not a whole number of {ENTRY_ROW}-byte rows", rows.len());
        return Err(wasmtime::Error::new(Malformed { call: PROCESS_TABLES_EXPORT, what }));
    }
    super::packed::read(&results.bytes.0, Entries::Rows(rows), inputs)
}

/// Entry row `at` of `rows` (whole rows, `at` within them), as 0.5.0's
/// entry; an error says what is wrong with it.
pub(super) fn entry(rows: &[u8], at: usize) -> Result<Entry, String> {
    let row = &rows[at * ENTRY_ROW..(at + 1) * ENTRY_ROW];
    let word = |i: usize| u32::from_le_bytes(row[4 + 4 * i..8 + 4 * i].try_into().expect("four bytes"));
    let span = |i: usize| Span { start: word(i), len: word(i + 1) };
    let (kind, sub) = (row[0], row[1]);
    Ok(match kind {
        OUTCOME => {
            let kind = match sub {
                0 => OutcomeKind::Emit,
                1 => OutcomeKind::Filtered,
                2 => OutcomeKind::Reject,
                3 => OutcomeKind::Retry,
                other => return Err(format!("an outcome of unknown kind {other}")),
            };
            Entry::Outcome(v5::Outcome { kind, outputs: word(0), effects: word(1), reason: span(2), message: span(4) })
        }
        OUTPUT => {
            if sub & !(HAS_ROUTE | INHERITS_HEADERS) != 0 {
                return Err(format!("an output with unknown flags {sub:#04x}"));
            }
            let key = match row[2] {
                0 => OutputKey::Inherit,
                1 => OutputKey::None,
                2 => OutputKey::Bytes(span(2)),
                other => return Err(format!("an output whose key is of unknown kind {other}")),
            };
            Entry::Output(v5::Output {
                route: (sub & HAS_ROUTE != 0).then(|| span(0)),
                key,
                value: span(4),
                inherit_headers: sub & INHERITS_HEADERS != 0,
                headers: word(6),
            })
        }
        HEADER => Entry::Header(PackedHeader { name: span(0), value: span(2) }),
        HASH_INCR => {
            let delta = i64::from_le_bytes(row[20..28].try_into().expect("eight bytes"));
            Entry::Effect(PackedEffect::HashIncr((span(0), span(2), delta)))
        }
        HASH_SET => Entry::Effect(PackedEffect::HashSet((span(0), span(2), span(4)))),
        other => return Err(format!("a row of unknown kind {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::{Effect, ErrorInfo, Header, Output};
    use crate::pipeline::lift::{OverBudget, within};

    fn message(
        key: Option<&str>,
        value: &str,
        headers: &[(&str, &str)],
        topic: &str,
        timestamp: Option<i64>,
    ) -> Message {
        Message {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.as_bytes().to_vec(),
            headers: headers
                .iter()
                .map(|(n, v)| Header { name: n.to_string(), value: v.as_bytes().to_vec() })
                .collect(),
            topic: topic.into(),
            partition: -2,
            offset: 1 << 40,
            timestamp_ms: timestamp,
        }
    }

    fn u32_at(row: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(row[at..at + 4].try_into().unwrap())
    }

    fn i64_at(row: &[u8], at: usize) -> i64 {
        i64::from_le_bytes(row[at..at + 8].try_into().unwrap())
    }

    fn span_at<'a>(bytes: &'a [u8], row: &[u8], at: usize) -> &'a [u8] {
        let (start, len) = (u32_at(row, at) as usize, u32_at(row, at + 4) as usize);
        &bytes[start..start + len]
    }

    #[test]
    fn a_batch_in_tables_holds_every_field_at_the_documented_place() {
        let messages = [
            message(Some("k1"), "v1", &[("h", "x"), ("i", "")], "orders", Some(-7)),
            message(None, "", &[], "orders", None),
            message(Some(""), "v3", &[("j", "ü")], "returns", Some(0)),
        ];
        let mut batch = lists();
        // Written twice into the same lists: the second starts afresh.
        pack(&messages[..1], &mut batch).unwrap();
        pack(&messages, &mut batch).unwrap();
        assert_eq!((batch.records.len(), batch.headers.len()), (3 * RECORD_ROW, 3 * HEADER_ROW));
        let mut first_header = 0;
        for (m, row) in messages.iter().zip(batch.records.chunks(RECORD_ROW)) {
            let flags = u32_at(row, 36);
            assert_eq!(flags & HAS_KEY != 0, m.key.is_some());
            if m.key.is_some() {
                assert_eq!(span_at(&batch.bytes, row, 0), m.key.as_deref().unwrap());
            } else {
                assert_eq!((u32_at(row, 0), u32_at(row, 4)), (0, 0));
            }
            assert_eq!(span_at(&batch.bytes, row, 8), m.value);
            assert_eq!(span_at(&batch.bytes, row, 16), m.topic.as_bytes());
            assert_eq!((u32_at(row, 24), u32_at(row, 28)), (first_header, m.headers.len() as u32));
            for (i, h) in m.headers.iter().enumerate() {
                let at = (first_header as usize + i) * HEADER_ROW;
                let header = &batch.headers[at..at + HEADER_ROW];
                assert_eq!(span_at(&batch.bytes, header, 0), h.name.as_bytes());
                assert_eq!(span_at(&batch.bytes, header, 8), h.value);
            }
            first_header += m.headers.len() as u32;
            assert_eq!(i32::from_le_bytes(row[32..36].try_into().unwrap()), -2);
            assert_eq!(i64_at(row, 40), 1 << 40);
            assert_eq!(flags & HAS_TIMESTAMP != 0, m.timestamp_ms.is_some());
            assert_eq!(i64_at(row, 48), m.timestamp_ms.unwrap_or(0));
        }
        assert_eq!(batch.bytes.windows(6).filter(|w| w == b"orders").count(), 1, "one topic, written once");
    }

    /// Results written as a component would: text and bytes appended to
    /// `bytes`, rows in order.
    #[derive(Default)]
    struct Written {
        bytes: Vec<u8>,
        rows: Vec<u8>,
    }

    impl Written {
        fn put(&mut self, data: &str) -> [u32; 2] {
            let span = put(&mut self.bytes, data.as_bytes());
            [span.start, span.len]
        }

        fn row(&mut self, head: [u8; 4], w: [u32; 7]) -> &mut Self {
            self.rows.extend_from_slice(&head);
            words(&mut self.rows, &w);
            self
        }

        fn outcome(&mut self, kind: u8, outputs: u32, effects: u32, error: (&str, &str)) -> &mut Self {
            let ([rs, rl], [ms, ml]) = (self.put(error.0), self.put(error.1));
            self.row([OUTCOME, kind, 0, 0], [outputs, effects, rs, rl, ms, ml, 0])
        }

        fn output(&mut self, route: Option<&str>, key: (u8, &str), value: &str, flags: u8, headers: u32) -> &mut Self {
            let [rs, rl] = route.map_or([0, 0], |r| self.put(r));
            let [ks, kl] = self.put(key.1);
            let [vs, vl] = self.put(value);
            let flags = flags | if route.is_some() { HAS_ROUTE } else { 0 };
            self.row([OUTPUT, flags, key.0, 0], [rs, rl, ks, kl, vs, vl, headers])
        }

        fn header(&mut self, name: &str, value: &str) -> &mut Self {
            let ([ns, nl], [vs, vl]) = (self.put(name), self.put(value));
            self.row([HEADER, 0, 0, 0], [ns, nl, vs, vl, 0, 0, 0])
        }

        fn incr(&mut self, key: &str, field: &str, delta: i64) -> &mut Self {
            let ([ks, kl], [fs, fl]) = (self.put(key), self.put(field));
            let d = delta.to_le_bytes();
            let (lo, hi) =
                (u32::from_le_bytes(d[..4].try_into().unwrap()), u32::from_le_bytes(d[4..].try_into().unwrap()));
            self.row([HASH_INCR, 0, 0, 0], [ks, kl, fs, fl, lo, hi, 0])
        }

        fn set(&mut self, key: &str, field: &str, value: &str) -> &mut Self {
            let ([ks, kl], [fs, fl], [vs, vl]) = (self.put(key), self.put(field), self.put(value));
            self.row([HASH_SET, 0, 0, 0], [ks, kl, fs, fl, vs, vl, 0])
        }

        fn unpack(&self, inputs: &[Message]) -> wasmtime::Result<Vec<Outcome>> {
            unpack(inputs, Results { bytes: Budgeted(self.bytes.clone()), entries: Budgeted(self.rows.clone()) })
        }
    }

    fn header(name: &str, value: &str) -> Header {
        Header { name: name.into(), value: value.as_bytes().to_vec() }
    }

    #[test]
    fn rows_become_one_outcome_per_record_with_the_inputs_key_and_headers_where_inherited() {
        let inputs = [
            message(Some("k"), "a", &[("trace", "1")], "orders", None),
            message(None, "b", &[], "orders", None),
            message(Some("k3"), "c", &[], "orders", None),
            message(Some("k4"), "d", &[], "orders", None),
        ];
        let mut w = Written::default();
        w.outcome(0, 3, 2, ("", ""))
            .output(None, (0, ""), "A", INHERITS_HEADERS, 1)
            .header("x", "y")
            .output(Some("vip"), (2, "own"), "A2", 0, 0)
            .output(None, (1, ""), "A3", INHERITS_HEADERS, 0)
            .incr("user:1", "orders", -3)
            .set("user:1", "last", "ü")
            .outcome(1, 0, 0, ("", ""))
            .outcome(2, 0, 0, ("bad_order", "no id"))
            .outcome(3, 0, 0, ("busy", "later"));
        let output = |route: Option<&str>, key: Option<&str>, value: &str, headers: Vec<Header>| Output {
            route: route.map(String::from),
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.as_bytes().to_vec(),
            headers,
        };
        assert_eq!(
            w.unpack(&inputs).unwrap(),
            [
                Outcome::Emit((
                    vec![
                        output(None, Some("k"), "A", vec![header("trace", "1"), header("x", "y")]),
                        output(Some("vip"), Some("own"), "A2", vec![]),
                        output(None, None, "A3", vec![header("trace", "1")]),
                    ],
                    vec![
                        Effect::HashIncr(("user:1".into(), "orders".into(), -3)),
                        Effect::HashSet(("user:1".into(), "last".into(), "ü".into())),
                    ]
                )),
                Outcome::Filtered,
                Outcome::Reject(ErrorInfo { reason: "bad_order".into(), message: "no id".into() }),
                Outcome::Retry(ErrorInfo { reason: "busy".into(), message: "later".into() }),
            ]
        );
    }

    fn malformed(w: &Written, inputs: usize) -> String {
        let inputs: Vec<Message> = (0..inputs).map(|_| message(Some("k"), "v", &[], "t", None)).collect();
        let error = w.unpack(&inputs).unwrap_err();
        error.downcast_ref::<Malformed>().unwrap_or_else(|| panic!("not malformed: {error:#}")).what.clone()
    }

    #[test]
    fn rows_that_break_the_contract_are_refused_naming_the_row_and_the_record() {
        let mut w = Written::default();
        w.outcome(0, 1, 0, ("", "")).output(None, (0, ""), "v", 0, 0);
        w.rows.push(0);
        assert_eq!(malformed(&w, 1), "the entries are 65 bytes, not a whole number of 32-byte rows");

        let mut w = Written::default();
        w.outcome(9, 0, 0, ("", ""));
        assert_eq!(malformed(&w, 1), "entry 0 is an outcome of unknown kind 9, where the outcome of record 0 belongs");

        let mut w = Written::default();
        w.outcome(0, 1, 0, ("", "")).output(None, (0, ""), "v", 0x80, 0);
        assert_eq!(
            malformed(&w, 1),
            "entry 1 is an output with unknown flags 0x80, where an output of record 0 belongs"
        );

        let mut w = Written::default();
        w.outcome(0, 1, 0, ("", "")).output(None, (7, ""), "v", 0, 0);
        assert_eq!(
            malformed(&w, 1),
            "entry 1 is an output whose key is of unknown kind 7, where an output of record 0 belongs"
        );

        let mut w = Written::default();
        w.outcome(1, 0, 0, ("", "")).row([5, 0, 0, 0], [0; 7]);
        assert_eq!(malformed(&w, 2), "entry 1 is a row of unknown kind 5, where the outcome of record 1 belongs");

        let mut w = Written::default();
        w.outcome(0, 0, 1, ("", "")).incr("user:1", "n", 1);
        w.rows[ENTRY_ROW + 4..ENTRY_ROW + 8].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(
            malformed(&w, 1),
            "entry 1: the key of an effect of record 0 is bytes 100..106, outside the results' 7 bytes"
        );

        let mut w = Written::default();
        w.outcome(0, 1, 0, ("", "")).output(None, (0, ""), "v", 0, 0);
        assert_eq!(malformed(&w, 2), "the results end after 2 entries, where the outcome of record 1 was announced");
    }

    #[test]
    fn what_outputs_inherit_from_their_input_is_charged_to_the_budget() {
        let inputs = [message(Some(&"k".repeat(1 << 20)), "v", &[], "t", None)];
        let mut w = Written::default();
        w.outcome(0, 1000, 0, ("", ""));
        for _ in 0..1000 {
            w.output(None, (0, ""), "v", INHERITS_HEADERS, 0);
        }
        let error = within(64 << 20, || w.unpack(&inputs)).unwrap_err();
        assert!(error.downcast_ref::<OverBudget>().is_some(), "{error:#}");
        let outcomes = within(2000 << 20, || w.unpack(&inputs)).unwrap();
        assert!(matches!(&outcomes[0], Outcome::Emit((outputs, _)) if outputs.len() == 1000));
    }
}
