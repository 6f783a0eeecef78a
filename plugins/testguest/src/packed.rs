//! `process-packed`: the batch read into messages, each command run as in
//! 0.4.0, and the outcomes packed; plus the commands that break the packed
//! contract.

use crate::bindings::sluice::plugin0_1_0::types::{Message, Outcome};
pub use crate::bindings::sluice::plugin0_5_0::packed::{Batch, Results};
use crate::bindings::sluice::plugin0_5_0::packed::{
    Effect, Entry, Header, Message as Packed0, Outcome as Packed, OutcomeKind, Output, OutputKey, Span,
};

fn slice(bytes: &[u8], span: Span) -> &[u8] {
    &bytes[span.start as usize..(span.start + span.len) as usize]
}

fn text(bytes: &[u8], span: Span) -> String {
    String::from_utf8_lossy(slice(bytes, span)).into_owned()
}

/// A message of the batch, copied out.
fn message(batch: &Batch, m: &Packed0) -> Message {
    let bytes = &batch.bytes;
    let first = m.headers.start as usize;
    let headers = batch.headers[first..first + m.headers.len as usize]
        .iter()
        .map(|h| crate::Header { name: text(bytes, h.name), value: slice(bytes, h.value).to_vec() })
        .collect();
    Message {
        key: m.key.map(|k| slice(bytes, k).to_vec()),
        value: slice(bytes, m.value).to_vec(),
        headers,
        topic: text(bytes, m.topic),
        partition: m.partition,
        offset: m.offset,
        timestamp_ms: m.timestamp_ms,
    }
}

#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

impl Writer {
    fn put(&mut self, data: &[u8]) -> Span {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        Span { start, len: data.len() as u32 }
    }

    fn outcome(&mut self, kind: OutcomeKind, outputs: u32, effects: u32, reason: Span, message: Span) {
        self.entries.push(Entry::Outcome(Packed { kind, outputs, effects, reason, message }));
    }

    fn output(&mut self, key: OutputKey, value: &[u8], inherit_headers: bool) {
        let value = self.put(value);
        self.entries.push(Entry::Output(Output { route: None, key, value, inherit_headers, headers: 0 }));
    }

    fn write(&mut self, outcome: Outcome) {
        let none = Span { start: 0, len: 0 };
        match outcome {
            Outcome::Filtered => self.outcome(OutcomeKind::Filtered, 0, 0, none, none),
            Outcome::Reject(e) => {
                let (reason, message) = (self.put(e.reason.as_bytes()), self.put(e.message.as_bytes()));
                self.outcome(OutcomeKind::Reject, 0, 0, reason, message);
            }
            Outcome::Retry(e) => {
                let (reason, message) = (self.put(e.reason.as_bytes()), self.put(e.message.as_bytes()));
                self.outcome(OutcomeKind::Retry, 0, 0, reason, message);
            }
            Outcome::Emit((outputs, effects)) => {
                self.outcome(OutcomeKind::Emit, outputs.len() as u32, effects.len() as u32, none, none);
                for o in outputs {
                    let route = o.route.map(|r| self.put(r.as_bytes()));
                    let key = match o.key {
                        Some(key) => OutputKey::Bytes(self.put(&key)),
                        None => OutputKey::None,
                    };
                    let value = self.put(&o.value);
                    let headers = o.headers.len() as u32;
                    self.entries.push(Entry::Output(Output { route, key, value, inherit_headers: false, headers }));
                    for h in o.headers {
                        let header = Header { name: self.put(h.name.as_bytes()), value: self.put(&h.value) };
                        self.entries.push(Entry::Header(header));
                    }
                }
                for e in effects {
                    let effect = match e {
                        crate::Effect::HashIncr((k, f, d)) => {
                            Effect::HashIncr((self.put(k.as_bytes()), self.put(f.as_bytes()), d))
                        }
                        crate::Effect::HashSet((k, f, v)) => {
                            Effect::HashSet((self.put(k.as_bytes()), self.put(f.as_bytes()), self.put(v.as_bytes())))
                        }
                    };
                    self.entries.push(Entry::Effect(effect));
                }
            }
        }
    }
}

pub fn process(batch: Batch) -> Results {
    let mut w = Writer::default();
    let none = Span { start: 0, len: 0 };
    for m in &batch.messages {
        let command = slice(&batch.bytes, m.value);
        if command == b"ok" {
            // The record as it came, read and written in place: the
            // boundary alone.
            w.outcome(OutcomeKind::Emit, 1, 0, none, none);
            w.output(OutputKey::Inherit, command, true);
            continue;
        }
        let command = String::from_utf8_lossy(command).into_owned();
        let (verb, arg) = command.split_once(' ').unwrap_or((command.as_str(), ""));
        match verb {
            "bad-span" => {
                w.outcome(OutcomeKind::Emit, 1, 0, none, none);
                let value = Span { start: u32::MAX - 4, len: 8 };
                w.entries.push(Entry::Output(Output {
                    route: None,
                    key: OutputKey::Inherit,
                    value,
                    inherit_headers: true,
                    headers: 0,
                }));
            }
            "bad-utf8" => {
                let (reason, message) = (w.put(b"bad_\xff"), w.put(b"a reason code that is not UTF-8"));
                w.outcome(OutcomeKind::Reject, 0, 0, reason, message);
            }
            "no-outcome" => {}
            "inherit" => {
                let n: u32 = arg.parse().unwrap_or(1);
                w.outcome(OutcomeKind::Emit, n, 0, none, none);
                for _ in 0..n {
                    w.output(OutputKey::Inherit, b"i", true);
                }
            }
            _ => w.write(crate::run(&message(&batch, m))),
        }
    }
    Results { bytes: w.bytes, entries: w.entries }
}
