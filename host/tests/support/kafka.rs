//! A real tansu broker per test, and a producer and consumer to talk to it.

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tansu_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return path.into();
    }
    let out = Command::new("bash").arg(super::repo_root().join("scripts/tansu.sh")).output().unwrap();
    assert!(out.status.success(), "scripts/tansu.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A tansu broker with in-memory storage on its own port.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
}

impl Tansu {
    /// Starts a broker with the default pipeline's topics.
    pub fn start() -> Self {
        Self::start_with_partitions(3)
    }

    /// Starts a broker with the default pipeline's topics, `orders` and
    /// `orders.enriched` having `partitions` partitions.
    pub fn start_with_partitions(partitions: u32) -> Self {
        let tansu = Self::start_on(super::free_port());
        tansu.create_topic("orders", partitions);
        tansu.create_topic("orders.enriched", partitions);
        tansu.create_topic("orders.dlq", 1);
        tansu
    }

    /// Starts a broker on `port`, with no topics.
    pub fn start_on(port: u16) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(std::env::temp_dir().join(format!("tansu-{port}.log"))).unwrap();
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child: Some(child), port }
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(tansu_bin())
            .args(["topic", "create", name, "--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "creating topic {name} failed");
    }

    /// Sends a signal to the broker process (e.g. STOP, CONT).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A consumed record.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

impl Consumed {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).unwrap()
    }
}

/// Produces `values` (key, value) to `topic` and waits for every ack.
pub async fn produce(brokers: &str, topic: &str, records: &[(Option<String>, Vec<u8>)]) {
    Producer::new(brokers).send(topic, records).await;
}

/// A producer kept across sends (creating one costs a metadata round trip).
pub struct Producer(FutureProducer);

impl Producer {
    pub fn new(brokers: &str) -> Self {
        Self(ClientConfig::new().set("bootstrap.servers", brokers).set("enable.idempotence", "true").create().unwrap())
    }

    /// Produces `records` (key, value) to `topic` and waits for every ack.
    pub async fn send(&self, topic: &str, records: &[(Option<String>, Vec<u8>)]) {
        let sends = records.iter().map(|(key, value)| {
            let mut record = FutureRecord::to(topic).payload(value);
            if let Some(key) = key {
                record = record.key(key);
            }
            self.0.send(record, Timeout::After(Duration::from_secs(30)))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e).unwrap();
        }
    }
}

/// Reads `topic` from the beginning until `expect` records arrived and then
/// nothing more for `linger` (to catch any extra record), or fails after
/// `timeout`.
pub async fn consume(brokers: &str, topic: &str, expect: usize, timeout: Duration, linger: Duration) -> Vec<Consumed> {
    let out = consume_with(brokers, topic, expect, timeout, linger, "read_committed", |_| true).await;
    assert!(out.len() >= expect, "{topic}: got {} records, expected {expect} within {timeout:?}", out.len());
    out
}

/// [`consume`] with an explicit `isolation.level`, counting towards
/// `expect` only the records for which `counts` is true (say, the first of
/// each order where repeats are allowed): a reader that counted repeats
/// could stop before the last distinct record arrived. Returns what it read
/// by the timeout even when that is short, for the caller to name what is
/// missing.
pub async fn consume_with(
    brokers: &str,
    topic: &str,
    expect: usize,
    timeout: Duration,
    linger: Duration,
    isolation: &str,
    mut counts: impl FnMut(&Consumed) -> bool,
) -> Vec<Consumed> {
    let group = format!("test-reader-{}-{}", std::process::id(), super::free_port());
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("isolation.level", isolation)
        // Not librdkafka's 1 s pause each time its queue has been full.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut until = deadline;
    let (mut counted, mut seen) = (0, 0);
    loop {
        // Once `expect` records are in, wait until the topic is quiet for `linger`.
        if counted >= expect && out.len() != seen {
            seen = out.len();
            until = tokio::time::Instant::now() + linger;
        }
        let consumed = match tokio::time::timeout_at(until, consumer.recv()).await {
            Ok(Ok(m)) => Consumed {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                partition: m.partition(),
                offset: m.offset(),
            },
            Ok(Err(e)) => panic!("consuming {topic}: {e}"),
            Err(_) => break,
        };
        counted += usize::from(counts(&consumed));
        out.push(consumed);
    }
    if counted < expect {
        eprintln!("{topic}: got {counted} of {expect} records within {timeout:?} ({} read)", out.len());
    }
    out
}

/// The offsets `group` has committed on `topic`, summed over its
/// partitions (a partition with no commit counts 0): on a topic written
/// from offset 0, the number of records a new member of the group will not
/// read again.
pub fn committed(brokers: &str, group: &str, topic: &str) -> i64 {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    let mut list = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        list.add_partition(topic, p.id());
    }
    let committed = consumer.committed_offsets(list, timeout).unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(n) => n,
            _ => 0,
        })
        .sum()
}

/// Produces one record with `headers` to `topic` and waits for its ack.
pub async fn produce_with_headers(brokers: &str, topic: &str, key: &str, value: &[u8], headers: &[(&str, &str)]) {
    use rdkafka::message::{Header, OwnedHeaders};
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header { key: name, value: Some(*value) });
    }
    let record = FutureRecord::to(topic).key(key).payload(value).headers(owned);
    producer.send(record, Timeout::After(Duration::from_secs(30))).await.map_err(|(e, _)| e).unwrap();
}
