//! `process-tables`: the batch's rows read into messages, each command run
//! as in 0.4.0, and the outcomes written as rows; plus the commands that
//! break the contract of 0.6.0's tables.

use crate::bindings::sluice::plugin0_1_0::types::{Message, Outcome};
pub use crate::bindings::sluice::plugin0_6_0::tables::{Batch, Results};

const RECORD_ROW: usize = 56;
const HEADER_ROW: usize = 16;

fn word(row: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(row[at..at + 4].try_into().expect("four bytes"))
}

fn long(row: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(row[at..at + 8].try_into().expect("eight bytes"))
}

fn slice<'a>(bytes: &'a [u8], row: &[u8], at: usize) -> &'a [u8] {
    let start = word(row, at) as usize;
    &bytes[start..start + word(row, at + 4) as usize]
}

fn text(bytes: &[u8], row: &[u8], at: usize) -> String {
    String::from_utf8_lossy(slice(bytes, row, at)).into_owned()
}

/// Record row `row` of the batch, copied out.
fn message(batch: &Batch, row: &[u8]) -> Message {
    let bytes = &batch.bytes;
    let (first, count) = (word(row, 24) as usize, word(row, 28) as usize);
    let headers = batch.headers[first * HEADER_ROW..(first + count) * HEADER_ROW]
        .chunks(HEADER_ROW)
        .map(|h| crate::Header { name: text(bytes, h, 0), value: slice(bytes, h, 8).to_vec() })
        .collect();
    let flags = word(row, 36);
    Message {
        key: (flags & 1 != 0).then(|| slice(bytes, row, 0).to_vec()),
        value: slice(bytes, row, 8).to_vec(),
        headers,
        topic: text(bytes, row, 16),
        partition: word(row, 32) as i32,
        offset: long(row, 40),
        timestamp_ms: (flags & 2 != 0).then(|| long(row, 48)),
    }
}

#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
    rows: Vec<u8>,
}

impl Writer {
    fn put(&mut self, data: &[u8]) -> [u32; 2] {
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

    fn error(&mut self, kind: u8, reason: &[u8], message: &[u8]) {
        let ([rs, rl], [ms, ml]) = (self.put(reason), self.put(message));
        self.row([0, kind, 0, 0], [0, 0, rs, rl, ms, ml, 0]);
    }

    fn write(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Filtered => self.row([0, 1, 0, 0], [0; 7]),
            Outcome::Reject(e) => self.error(2, e.reason.as_bytes(), e.message.as_bytes()),
            Outcome::Retry(e) => self.error(3, e.reason.as_bytes(), e.message.as_bytes()),
            Outcome::Emit((outputs, effects)) => {
                self.row([0, 0, 0, 0], [outputs.len() as u32, effects.len() as u32, 0, 0, 0, 0, 0]);
                for o in outputs {
                    let (flags, [rs, rl]) = match o.route {
                        Some(route) => (1, self.put(route.as_bytes())),
                        None => (0, [0, 0]),
                    };
                    let (key, [ks, kl]) = match o.key {
                        Some(key) => (2, self.put(&key)),
                        None => (1, [0, 0]),
                    };
                    let [vs, vl] = self.put(&o.value);
                    self.row([1, flags, key, 0], [rs, rl, ks, kl, vs, vl, o.headers.len() as u32]);
                    for h in o.headers {
                        let ([ns, nl], [hs, hl]) = (self.put(h.name.as_bytes()), self.put(&h.value));
                        self.row([2, 0, 0, 0], [ns, nl, hs, hl, 0, 0, 0]);
                    }
                }
                for e in effects {
                    match e {
                        crate::Effect::HashIncr((k, f, d)) => {
                            let ([ks, kl], [fs, fl]) = (self.put(k.as_bytes()), self.put(f.as_bytes()));
                            self.row([3, 0, 0, 0], [ks, kl, fs, fl, d as u64 as u32, ((d as u64) >> 32) as u32, 0]);
                        }
                        crate::Effect::HashSet((k, f, v)) => {
                            let ([ks, kl], [fs, fl]) = (self.put(k.as_bytes()), self.put(f.as_bytes()));
                            let [vs, vl] = self.put(v.as_bytes());
                            self.row([4, 0, 0, 0], [ks, kl, fs, fl, vs, vl, 0]);
                        }
                    }
                }
            }
        }
    }
}

pub fn process(batch: Batch) -> Results {
    let mut w = Writer::default();
    for row in batch.records.chunks(RECORD_ROW) {
        let command = slice(&batch.bytes, row, 8);
        if command == b"ok" {
            // The record as it came, read and written in place: the
            // boundary alone.
            w.row([0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]);
            let [vs, vl] = w.put(command);
            w.row([1, 2, 0, 0], [0, 0, 0, 0, vs, vl, 0]);
            continue;
        }
        match command {
            b"bad-kind" => w.row([9, 0, 0, 0], [0; 7]),
            b"torn-rows" => {
                w.row([0, 1, 0, 0], [0; 7]);
                w.rows.truncate(w.rows.len() - 5);
            }
            b"bad-span" => {
                w.row([0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]);
                w.row([1, 2, 0, 0], [0, 0, 0, 0, u32::MAX - 4, 8, 0]);
            }
            _ => w.write(crate::run(&message(&batch, row))),
        }
    }
    Results { bytes: w.bytes, entries: w.rows }
}
