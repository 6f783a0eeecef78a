//! `sluice capture` against tansu: records of a live topic written to a
//! file that `sluice test --records` reads back exactly (keys, values that
//! are not JSON or not text, headers in order, coordinates), turned into a
//! golden test with `--bless` and checked with `--expect`.

mod support;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use support::kafka::Tansu;

fn sluice(args: &[&str], brokers: &str) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(support::repo_root())
        .env("KAFKA_BROKERS", brokers)
        .output()
        .unwrap();
    eprintln!("sluice {args:?}:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// A record as produced: key, value, headers (in order).
type Sent = (Option<Vec<u8>>, Vec<u8>, Vec<(&'static str, Vec<u8>)>);

async fn produce(brokers: &str, topic: &str, partition: i32, records: &[Sent]) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    for (key, value, headers) in records {
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header { key: name, value: Some(value) });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).partition(partition).payload(value).headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer.send(record, Timeout::After(Duration::from_secs(30))).await.map_err(|(e, _)| e).unwrap();
    }
}

fn read(path: &Path) -> Vec<sluice::record::Record> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let line: sluice::tools::records::RecordLine = serde_json::from_str(line).unwrap();
            line.into_record(i as i64).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn captured_records_come_back_exactly_and_become_a_golden_test() {
    let tansu = Tansu::start_with_partitions(2);
    let brokers = tansu.brokers();
    let order = |id: &str, cents: u64| format!(r#"{{"order_id":"{id}","total_cents":{cents}}}"#).into_bytes();
    let on_0: Vec<Sent> = vec![
        (Some(b"o-1".to_vec()), order("o-1", 25_000), vec![("trace", b"t-1".to_vec())]),
        // Headers out of order, a name twice, a value that is not text.
        (Some(b"o-2".to_vec()), order("o-2", 999), vec![("z", b"1".to_vec()), ("a", vec![0xff]), ("z", b"2".to_vec())]),
        // JSON that would not be written back the same, and no key.
        (None, br#"{"order_id": "o-3",  "total_cents": 30000}"#.to_vec(), vec![]),
    ];
    let on_1: Vec<Sent> = vec![
        (Some(vec![0x00, 0xfe]), b"{not json".to_vec(), vec![]),
        (Some(b"o-5".to_vec()), vec![0xc3, 0x28], vec![]),
        (Some(b"o-6".to_vec()), order("o-6", 40_000), vec![]),
    ];
    produce(&brokers, "orders", 0, &on_0).await;
    produce(&brokers, "orders", 1, &on_1).await;
    let work = std::env::temp_dir().join(format!("sluice-capture-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let file = work.join("orders.jsonl");
    let file_arg = file.to_str().unwrap();

    // Everything, by partition then offset, byte for byte.
    let out = sluice(&["capture", "orders", "-n", "100", "--out", file_arg], &brokers);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("6 records of `orders`"));
    let captured = read(&file);
    let sent: Vec<(i32, i64, &Sent)> = (on_0.iter().enumerate().map(|(i, r)| (0, i as i64, r)))
        .chain(on_1.iter().enumerate().map(|(i, r)| (1, i as i64, r)))
        .collect();
    assert_eq!(captured.len(), sent.len());
    for (record, (partition, offset, (key, value, headers))) in captured.iter().zip(&sent) {
        let at = format!("{partition}/{offset}");
        assert_eq!((record.topic.as_str(), record.partition, record.offset), ("orders", *partition, *offset), "{at}");
        assert_eq!(&record.key, key, "{at}");
        assert_eq!(record.value.as_deref(), Some(&value[..]), "{at}");
        let got: Vec<(&str, &[u8])> = record.headers.iter().map(|h| (h.name.as_str(), &h.value[..])).collect();
        let want: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, &v[..])).collect();
        assert_eq!(got, want, "{at}");
        assert!(record.timestamp_ms.is_some(), "{at}");
    }

    // -n, --partition and --offset pick the records.
    let part = work.join("part.jsonl");
    let out = sluice(
        &["capture", "orders", "-n", "1", "--partition", "1", "--offset", "1", "--out", part.to_str().unwrap()],
        &brokers,
    );
    assert!(out.status.success());
    let picked = read(&part);
    assert_eq!(picked.len(), 1);
    assert_eq!((picked[0].partition, picked[0].offset, picked[0].key.as_deref()), (1, 1, Some(&b"o-5"[..])));
    let out = sluice(&["capture", "orders", "-n", "1", "--partition", "7", "--out", file_arg], &brokers);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("topic `orders` has no partition 7 (it has 2)"));

    // The capture becomes a golden test: bless, then expect passes; a
    // changed record fails it.
    let expect = work.join("expected.jsonl");
    let test = |input: &Path, bless: bool| {
        let mut args = vec!["test", "plugins/dist/vip.wasm", "--records", "--input", input.to_str().unwrap()];
        args.extend(["--expect", expect.to_str().unwrap()]);
        if bless {
            args.push("--bless");
        }
        sluice(&args, &brokers)
    };
    assert!(test(&file, true).status.success());
    let golden = std::fs::read_to_string(&expect).unwrap();
    let lines: Vec<serde_json::Value> = golden.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // o-1, o-3 and o-6 are over 200.00 and go to `vip` as well; the value
    // that is not JSON and the one that is not text are dead letters.
    let vip: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["to"] == "vip").map(|l| &l["value"]["order_id"]).collect();
    assert_eq!(vip, ["o-1", "o-3", "o-6"]);
    assert_eq!(lines.iter().filter(|l| l.get("dead_letter").is_some()).count(), 2, "{golden}");
    let out = test(&file, false);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 6 records"));
    let changed = work.join("changed.jsonl");
    std::fs::write(&changed, std::fs::read_to_string(&file).unwrap().replace("25000", "2500")).unwrap();
    let out = test(&changed, false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
    let _ = std::fs::remove_dir_all(&work);
}
