//! The host's side of `process-packed` (`sluice:plugin@0.5.0`): a batch
//! packed into three lists, and the two lists of its results read in place
//! into the contract's outcomes.
//!
//! Every text and byte string the host keeps from the results is copied
//! out of their bytes once, and charged to the call's budget
//! (`limits.results_mib`) before it is: a span may point at bytes that
//! other spans point at too, and an output may inherit its input's key and
//! headers, so what the results make the host allocate is counted, not
//! the length of their lists. Results that break the contract (a span
//! outside the bytes, text that is not UTF-8, entries out of order, too
//! few or too many outcomes) fail the call with [`Malformed`], which names
//! the entry and the record.

use super::lift::{Budgeted, charge};
use crate::bindings::v0_5::{Batch, Entry, OutcomeKind, OutputKey, PackedEffect, PackedHeader, PackedMessage, Span};
use crate::bindings::{Effect, ErrorInfo, Header, Message, Outcome, Output};
use crate::engine::{PROCESS_PACKED_EXPORT, PROCESS_TABLES_EXPORT};
use std::fmt;
use wasmtime::component::{ComponentType, Lift};

/// The results of `process-packed`, lifted within the call's budget.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct Results {
    #[component(name = "bytes")]
    bytes: Budgeted<Vec<u8>>,
    #[component(name = "entries")]
    entries: Budgeted<Vec<Entry>>,
}

/// Results that break the contract: what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The export called: `process-packed` or `process-tables`.
    pub call: &'static str,
    /// What is wrong, and where.
    pub what: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} broke the contract: {}", self.call, self.what)
    }
}

impl std::error::Error for Malformed {}

/// Lists to pack batches into.
pub fn lists() -> Batch {
    Batch { bytes: Vec::new(), messages: Vec::new(), headers: Vec::new() }
}

/// Packs `messages` into `batch`, reusing the memory of its lists. Fails
/// if the batch's bytes do not fit the contract's 32-bit offsets.
pub fn pack(messages: &[Message], batch: &mut Batch) -> Result<(), Malformed> {
    batch.bytes.clear();
    batch.messages.clear();
    batch.headers.clear();
    let bytes = &mut batch.bytes;
    // Records of one batch nearly always share their topic: it is written
    // once for each run of records from the same topic.
    let mut topic: Option<(&str, Span)> = None;
    for m in messages {
        let key = m.key.as_deref().map(|key| put(bytes, key));
        let value = put(bytes, &m.value);
        let first = batch.headers.len() as u32;
        for h in &m.headers {
            let header = PackedHeader { name: put(bytes, h.name.as_bytes()), value: put(bytes, &h.value) };
            batch.headers.push(header);
        }
        let headers = Span { start: first, len: m.headers.len() as u32 };
        let topic = match topic {
            Some((name, span)) if name == m.topic => span,
            _ => {
                let span = put(bytes, m.topic.as_bytes());
                topic = Some((&m.topic, span));
                span
            }
        };
        let (partition, offset, timestamp_ms) = (m.partition, m.offset, m.timestamp_ms);
        batch.messages.push(PackedMessage { key, value, headers, topic, partition, offset, timestamp_ms });
    }
    if u32::try_from(batch.bytes.len()).is_err() || u32::try_from(batch.headers.len()).is_err() {
        let what = format!("a batch of {} bytes is too large to pass packed (at most 4 GiB)", batch.bytes.len());
        return Err(Malformed { call: PROCESS_PACKED_EXPORT, what });
    }
    Ok(())
}

/// Appends `data` to `bytes`: its span.
pub(super) fn put(bytes: &mut Vec<u8>, data: &[u8]) -> Span {
    let start = bytes.len() as u32;
    bytes.extend_from_slice(data);
    Span { start, len: data.len() as u32 }
}

/// The outcomes the results give `inputs`, one per input and in order.
pub fn unpack(inputs: &[Message], results: Results) -> wasmtime::Result<Vec<Outcome>> {
    read(&results.bytes.0, Entries::Typed(&results.entries.0), inputs)
}

/// The entries of results: 0.5.0's, lifted, or 0.6.0's rows of bytes
/// (whole rows), read one at a time.
pub(super) enum Entries<'a> {
    Typed(&'a [Entry]),
    Rows(&'a [u8]),
}

impl Entries<'_> {
    /// The export that returned them.
    fn call(&self) -> &'static str {
        match self {
            Self::Typed(_) => PROCESS_PACKED_EXPORT,
            Self::Rows(_) => PROCESS_TABLES_EXPORT,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Typed(entries) => entries.len(),
            Self::Rows(rows) => rows.len() / super::tables::ENTRY_ROW,
        }
    }

    /// Entry `at` (below `len`), or what is wrong with its row.
    fn get(&self, at: usize) -> Result<Entry, String> {
        match self {
            Self::Typed(entries) => Ok(entries[at]),
            Self::Rows(rows) => super::tables::entry(rows, at),
        }
    }
}

/// The outcomes that results of these `bytes` and `entries` give `inputs`.
pub(super) fn read(bytes: &[u8], entries: Entries<'_>, inputs: &[Message]) -> wasmtime::Result<Vec<Outcome>> {
    Reader { bytes, entries, next: 0 }.outcomes(inputs)
}

/// Reads the results' entries in order.
struct Reader<'a> {
    bytes: &'a [u8],
    entries: Entries<'a>,
    next: usize,
}

/// What an entry is, for messages.
fn kind(entry: &Entry) -> &'static str {
    match entry {
        Entry::Outcome(_) => "an outcome",
        Entry::Output(_) => "an output",
        Entry::Header(_) => "a header",
        Entry::Effect(_) => "an effect",
    }
}

impl<'a> Reader<'a> {
    fn malformed(&self, what: String) -> wasmtime::Error {
        wasmtime::Error::new(Malformed { call: self.entries.call(), what })
    }

    /// The next entry, which must be `what` of record `record`.
    fn entry(&mut self, what: &str, record: usize) -> wasmtime::Result<Entry> {
        let at = self.next;
        if at >= self.entries.len() {
            return Err(self.malformed(format!(
                "the results end after {at} entries, where {what} of record {record} was announced"
            )));
        }
        let entry = self.entries.get(at).map_err(|unreadable| {
            self.malformed(format!("entry {at} is {unreadable}, where {what} of record {record} belongs"))
        })?;
        self.next += 1;
        Ok(entry)
    }

    fn wrong(&self, found: &Entry, what: &str, record: usize) -> wasmtime::Error {
        self.malformed(format!("entry {} is {}, where {what} of record {record} belongs", self.next - 1, kind(found)))
    }

    /// The bytes of `span`, copied and charged to the budget.
    fn bytes(&self, span: Span, what: &str, record: usize) -> wasmtime::Result<Vec<u8>> {
        let start = span.start as usize;
        let end = start + span.len as usize;
        let Some(bytes) = self.bytes.get(start..end) else {
            return Err(self.malformed(format!(
                "entry {}: {what} of record {record} is bytes {start}..{end}, outside the results' {} bytes",
                self.next - 1,
                self.bytes.len()
            )));
        };
        charge(bytes.len())?;
        Ok(bytes.to_vec())
    }

    /// The text of `span`, copied and charged to the budget.
    fn text(&self, span: Span, what: &str, record: usize) -> wasmtime::Result<String> {
        let bytes = self.bytes(span, what, record)?;
        String::from_utf8(bytes).map_err(|e| {
            self.malformed(format!(
                "entry {}: {what} of record {record} is not UTF-8 (at byte {})",
                self.next - 1,
                e.utf8_error().valid_up_to()
            ))
        })
    }

    fn outcomes(mut self, inputs: &[Message]) -> wasmtime::Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(inputs.len());
        for (record, input) in inputs.iter().enumerate() {
            let outcome = match self.entry("the outcome", record)? {
                Entry::Outcome(outcome) => outcome,
                other => return Err(self.wrong(&other, "the outcome", record)),
            };
            let error = |reader: &Self| -> wasmtime::Result<ErrorInfo> {
                let reason = reader.text(outcome.reason, "the reason code", record)?;
                let message = reader.text(outcome.message, "the message", record)?;
                Ok(ErrorInfo { reason, message })
            };
            outcomes.push(match outcome.kind {
                OutcomeKind::Filtered => Outcome::Filtered,
                OutcomeKind::Reject => Outcome::Reject(error(&self)?),
                OutcomeKind::Retry => Outcome::Retry(error(&self)?),
                OutcomeKind::Emit => self.emit(input, record, outcome.outputs, outcome.effects)?,
            });
        }
        if self.next < self.entries.len() {
            return Err(self.malformed(format!(
                "the results hold {} entries after the outcome of the last of {} records",
                self.entries.len() - self.next,
                inputs.len()
            )));
        }
        Ok(outcomes)
    }

    fn emit(&mut self, input: &Message, record: usize, outputs: u32, effects: u32) -> wasmtime::Result<Outcome> {
        // The counts are the plugin's: room for no more than the entries
        // that are there.
        let left = self.entries.len() - self.next;
        let mut emitted = Vec::with_capacity((outputs as usize).min(left));
        for _ in 0..outputs {
            let output = match self.entry("an output", record)? {
                Entry::Output(output) => output,
                other => return Err(self.wrong(&other, "an output", record)),
            };
            let route = match output.route {
                Some(route) => Some(self.text(route, "the route of an output", record)?),
                None => None,
            };
            let key = match output.key {
                OutputKey::Inherit => match &input.key {
                    Some(key) => {
                        charge(key.len())?;
                        Some(key.clone())
                    }
                    None => None,
                },
                OutputKey::None => None,
                OutputKey::Bytes(key) => Some(self.bytes(key, "the key of an output", record)?),
            };
            let value = self.bytes(output.value, "the value of an output", record)?;
            let left = self.entries.len() - self.next;
            let own = (output.headers as usize).min(left);
            let mut headers = Vec::with_capacity(if output.inherit_headers { input.headers.len() + own } else { own });
            if output.inherit_headers {
                charge(input.headers.iter().map(|h| h.name.len() + h.value.len()).sum())?;
                headers.extend(input.headers.iter().cloned());
            }
            for _ in 0..output.headers {
                let header = match self.entry("a header", record)? {
                    Entry::Header(header) => header,
                    other => return Err(self.wrong(&other, "a header", record)),
                };
                let name = self.text(header.name, "the name of a header", record)?;
                let value = self.bytes(header.value, "the value of a header", record)?;
                headers.push(Header { name, value });
            }
            emitted.push(Output { route, key, value, headers });
        }
        let left = self.entries.len() - self.next;
        let mut caused = Vec::with_capacity((effects as usize).min(left));
        for _ in 0..effects {
            let effect = match self.entry("an effect", record)? {
                Entry::Effect(effect) => effect,
                other => return Err(self.wrong(&other, "an effect", record)),
            };
            caused.push(match effect {
                PackedEffect::HashIncr((key, field, delta)) => Effect::HashIncr((
                    self.text(key, "the key of an effect", record)?,
                    self.text(field, "the field of an effect", record)?,
                    delta,
                )),
                PackedEffect::HashSet((key, field, value)) => Effect::HashSet((
                    self.text(key, "the key of an effect", record)?,
                    self.text(field, "the field of an effect", record)?,
                    self.text(value, "the value of an effect", record)?,
                )),
            });
        }
        Ok(Outcome::Emit((emitted, caused)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::lift::{OverBudget, within};

    fn message(key: Option<&str>, value: &str, headers: &[(&str, &str)], topic: &str) -> Message {
        Message {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.as_bytes().to_vec(),
            headers: headers
                .iter()
                .map(|(n, v)| Header { name: n.to_string(), value: v.as_bytes().to_vec() })
                .collect(),
            topic: topic.into(),
            partition: 2,
            offset: 40,
            timestamp_ms: Some(7),
        }
    }

    fn span(bytes: &[u8], span: Span) -> &[u8] {
        &bytes[span.start as usize..(span.start + span.len) as usize]
    }

    #[test]
    fn a_packed_batch_holds_every_field_and_a_topic_once_per_run_of_records() {
        let messages = [
            message(Some("k1"), "v1", &[("h", "x"), ("i", "")], "orders"),
            message(None, "", &[], "orders"),
            message(Some(""), "v3", &[("j", "y")], "returns"),
        ];
        let mut batch = lists();
        // Packed twice into the same lists: the second packing starts afresh.
        pack(&messages[..1], &mut batch).unwrap();
        pack(&messages, &mut batch).unwrap();
        assert_eq!(batch.messages.len(), 3);
        for (m, packed) in messages.iter().zip(&batch.messages) {
            assert_eq!(packed.key.map(|k| span(&batch.bytes, k).to_vec()), m.key);
            assert_eq!(span(&batch.bytes, packed.value), m.value);
            assert_eq!(span(&batch.bytes, packed.topic), m.topic.as_bytes());
            let (first, len) = (packed.headers.start as usize, packed.headers.len as usize);
            let headers: Vec<Header> = batch.headers[first..first + len]
                .iter()
                .map(|h| Header {
                    name: String::from_utf8(span(&batch.bytes, h.name).to_vec()).unwrap(),
                    value: span(&batch.bytes, h.value).to_vec(),
                })
                .collect();
            assert_eq!(headers, m.headers);
            assert_eq!((packed.partition, packed.offset, packed.timestamp_ms), (2, 40, Some(7)));
        }
        let (a, b) = (batch.messages[0].topic, batch.messages[1].topic);
        assert_eq!((a.start, a.len), (b.start, b.len), "one topic, written once");
        assert_eq!(batch.bytes.windows(6).filter(|w| w == b"orders").count(), 1);
    }

    /// Results written as a component would: text and bytes appended to
    /// `bytes`, entries in order.
    #[derive(Default)]
    struct Written {
        bytes: Vec<u8>,
        entries: Vec<Entry>,
    }

    impl Written {
        fn put(&mut self, data: &str) -> Span {
            put(&mut self.bytes, data.as_bytes())
        }

        fn outcome(&mut self, kind: OutcomeKind, outputs: u32, effects: u32, error: (&str, &str)) -> &mut Self {
            let (reason, message) = (self.put(error.0), self.put(error.1));
            let outcome =
                crate::bindings::v0_5::sluice::plugin0_5_0::packed::Outcome { kind, outputs, effects, reason, message };
            self.entries.push(Entry::Outcome(outcome));
            self
        }

        fn output(
            &mut self,
            route: Option<&str>,
            key: OutputKey,
            value: &str,
            inherit: bool,
            headers: u32,
        ) -> &mut Self {
            let route = route.map(|r| self.put(r));
            let value = self.put(value);
            let output = crate::bindings::v0_5::sluice::plugin0_5_0::packed::Output {
                route,
                key,
                value,
                inherit_headers: inherit,
                headers,
            };
            self.entries.push(Entry::Output(output));
            self
        }

        fn header(&mut self, name: &str, value: &str) -> &mut Self {
            let header = PackedHeader { name: self.put(name), value: self.put(value) };
            self.entries.push(Entry::Header(header));
            self
        }

        fn incr(&mut self, key: &str, field: &str, delta: i64) -> &mut Self {
            let effect = PackedEffect::HashIncr((self.put(key), self.put(field), delta));
            self.entries.push(Entry::Effect(effect));
            self
        }

        fn set(&mut self, key: &str, field: &str, value: &str) -> &mut Self {
            let effect = PackedEffect::HashSet((self.put(key), self.put(field), self.put(value)));
            self.entries.push(Entry::Effect(effect));
            self
        }

        fn unpack(&self, inputs: &[Message]) -> wasmtime::Result<Vec<Outcome>> {
            let results = Results { bytes: Budgeted(self.bytes.clone()), entries: Budgeted(self.entries.clone()) };
            unpack(inputs, results)
        }
    }

    fn header(name: &str, value: &str) -> Header {
        Header { name: name.into(), value: value.as_bytes().to_vec() }
    }

    #[test]
    fn results_become_one_outcome_per_record_with_the_inputs_key_and_headers_where_inherited() {
        let inputs = [
            message(Some("k"), "a", &[("trace", "1")], "orders"),
            message(None, "b", &[], "orders"),
            message(Some("k3"), "c", &[], "orders"),
            message(Some("k4"), "d", &[], "orders"),
        ];
        let mut w = Written::default();
        w.outcome(OutcomeKind::Emit, 3, 2, ("", ""))
            .output(None, OutputKey::Inherit, "A", true, 1)
            .header("x", "y")
            .output(Some("vip"), OutputKey::Bytes(Span { start: 0, len: 0 }), "A2", false, 0)
            .output(None, OutputKey::None, "A3", true, 0)
            .incr("user:1", "orders", -3)
            .set("user:1", "last", "ü");
        // A key of its own, written after the fact.
        let key = w.put("own");
        let Entry::Output(second) = &mut w.entries[3] else { panic!("the second output") };
        second.key = OutputKey::Bytes(key);
        w.outcome(OutcomeKind::Filtered, 0, 0, ("", ""))
            .outcome(OutcomeKind::Reject, 0, 0, ("bad_order", "no id"))
            .outcome(OutcomeKind::Retry, 0, 0, ("busy", "later"));
        let outcomes = w.unpack(&inputs).unwrap();
        let output = |route: Option<&str>, key: Option<&str>, value: &str, headers: Vec<Header>| Output {
            route: route.map(String::from),
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.as_bytes().to_vec(),
            headers,
        };
        assert_eq!(
            outcomes,
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
        let inputs: Vec<Message> = (0..inputs).map(|_| message(Some("k"), "v", &[], "t")).collect();
        let error = w.unpack(&inputs).unwrap_err();
        error.downcast_ref::<Malformed>().unwrap_or_else(|| panic!("not malformed: {error:#}")).what.clone()
    }

    #[test]
    fn results_that_break_the_contract_are_refused_naming_the_entry_and_the_record() {
        let emit = |w: &mut Written| {
            w.outcome(OutcomeKind::Emit, 1, 0, ("", "")).output(None, OutputKey::Inherit, "v", true, 0);
        };
        let mut w = Written::default();
        emit(&mut w);
        assert_eq!(malformed(&w, 2), "the results end after 2 entries, where the outcome of record 1 was announced");

        let mut w = Written::default();
        emit(&mut w);
        emit(&mut w);
        assert_eq!(malformed(&w, 1), "the results hold 2 entries after the outcome of the last of 1 records");

        let mut w = Written::default();
        w.outcome(OutcomeKind::Emit, 2, 0, ("", "")).output(None, OutputKey::Inherit, "v", true, 0);
        w.outcome(OutcomeKind::Filtered, 0, 0, ("", ""));
        assert_eq!(malformed(&w, 2), "entry 2 is an outcome, where an output of record 0 belongs");

        let mut w = Written::default();
        w.outcome(OutcomeKind::Emit, 1, 0, ("", "")).output(None, OutputKey::Inherit, "v", true, 0);
        let Entry::Output(output) = &mut w.entries[1] else { panic!("an output") };
        output.value = Span { start: 2, len: 10 };
        assert_eq!(
            malformed(&w, 1),
            "entry 1: the value of an output of record 0 is bytes 2..12, outside the results' 1 bytes"
        );

        let mut w = Written::default();
        w.bytes.extend_from_slice(b"\xff\xfe");
        w.outcome(OutcomeKind::Emit, 0, 1, ("", "")).incr("user:1", "n", 1);
        let Entry::Effect(PackedEffect::HashIncr((key, ..))) = &mut w.entries[1] else { panic!("an effect") };
        *key = Span { start: 0, len: 2 };
        assert_eq!(malformed(&w, 1), "entry 1: the key of an effect of record 0 is not UTF-8 (at byte 0)");

        let mut w = Written::default();
        w.outcome(OutcomeKind::Emit, 1, u32::MAX, ("", "")).output(None, OutputKey::Inherit, "v", true, u32::MAX);
        assert_eq!(malformed(&w, 1), "the results end after 2 entries, where a header of record 0 was announced");
    }

    #[test]
    fn what_outputs_inherit_from_their_input_is_charged_to_the_budget() {
        // One megabyte of key, inherited by a thousand outputs of a few
        // bytes each: a gigabyte for the host, from a few kilobytes of
        // results.
        let inputs = [message(Some(&"k".repeat(1 << 20)), "v", &[], "t")];
        let mut w = Written::default();
        w.outcome(OutcomeKind::Emit, 1000, 0, ("", ""));
        for _ in 0..1000 {
            w.output(None, OutputKey::Inherit, "v", true, 0);
        }
        let error = within(64 << 20, || w.unpack(&inputs)).unwrap_err();
        assert!(error.downcast_ref::<OverBudget>().is_some(), "{error:#}");
        let outcomes = within(2000 << 20, || w.unpack(&inputs)).unwrap();
        assert!(matches!(&outcomes[0], Outcome::Emit((outputs, _)) if outputs.len() == 1000));
    }
}
