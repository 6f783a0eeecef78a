//! Table outputs against tansu, the real Redis and the real PostgreSQL
//! (127.0.0.1:5432, database `test`), each test in a schema of its own:
//! examples/warehouse.toml's tables agree with the topics, the Redis
//! counters and the independent model after SIGKILLs and a PostgreSQL
//! restart, and a row PostgreSQL refuses dead-letters its record and only
//! that record.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};
use support::RedisPrefix;
use support::inputs::{Expected, Outputs, SHARED_REDIS, assert_exact, generated, keyed, load_lookups};
use support::kafka::{Tansu, produce};
use support::model;
use support::process::{Host, HostEnv};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// One test at a time: one of them restarts the PostgreSQL server.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

async fn connect() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// A schema of the test's own, dropped with everything in it at the end.
struct Schema(String);

impl Schema {
    async fn new(name: &str) -> Self {
        let name = format!("sluice_{name}_{}", std::process::id());
        connect()
            .await
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Self(name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let _ = connect().await.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await;
                // The fences of this schema's tables.
                let _ = connect()
                    .await
                    .execute("DELETE FROM sluice_fences WHERE target LIKE $1", &[&format!("\"{name}\".%")])
                    .await;
            });
        })
        .join();
    }
}

/// Restarts the machine's PostgreSQL server and waits until it answers.
fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql").unwrap().next().unwrap().unwrap().file_name();
    let version = version.to_str().unwrap();
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"])
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctlcluster restart failed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect("127.0.0.1:5432").is_err() {
        assert!(Instant::now() < deadline, "PostgreSQL did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `query` (one bigint) until it gives `want` or `timeout` passes;
/// the last value.
async fn wait_count(client: &tokio_postgres::Client, query: &str, want: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let got: i64 = client.query_one(query, &[]).await.unwrap().get(0);
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn total(order: &model::Summary) -> i64 {
    order.items.iter().map(|(_, _, unit, q)| unit * q).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn warehouse_tables_agree_with_topics_and_counters_after_sigkills_and_a_postgres_restart() {
    let _serial = serial().await;
    let tansu = Tansu::start();
    let (lookups, counters) = (RedisPrefix::new("wh-lookups"), RedisPrefix::new("wh-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let schema = Schema::new("warehouse").await;
    let values = generated(120_000, 21, 0.02);
    let want = Expected::of(&values);
    produce(&tansu.brokers(), "orders", &keyed(&values)).await;

    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "warehouse")
        .set("SLUICE_DELIVERY", "exactly-once")
        .set("SLUICE_INSTANCE_ID", "one")
        .set("SLUICE_BATCH_SIZE", "200")
        .set("DATABASE_URL", PG_URL)
        .set("SLUICE_PG_SCHEMA", &schema.0);
    let pipeline = support::repo_root().join("examples/warehouse.toml");
    for (i, moment) in [700, 1_900, 1_300].into_iter().enumerate() {
        let mut host = Host::start_with(&env, &pipeline);
        host.wait_ready(Duration::from_secs(90));
        std::thread::sleep(Duration::from_millis(moment));
        assert!(host.is_running(), "run {i} ended early:\n{}", host.log_text());
        host.kill();
    }
    let mut host = Host::start_with(&env, &pipeline);
    host.wait_ready(Duration::from_secs(90));
    // Mid-stream: once a batch is through, with more to come.
    host.wait_records_in(1, Duration::from_secs(60));
    restart_postgres();
    assert_exact(&tansu.brokers(), &want, SHARED_REDIS, &counters.0, Outputs::AbortsVisible).await;

    let pg = connect().await;
    let (orders, daily) = (format!("{}.orders", schema.0), format!("{}.daily_revenue", schema.0));
    let rows = want.orders.len() as i64;
    let count = wait_count(&pg, &format!("SELECT count(*) FROM {orders}"), rows, Duration::from_secs(60)).await;
    assert_eq!(count, rows, "rows in {orders}");
    let ids: BTreeSet<String> =
        pg.query(&format!("SELECT order_id FROM {orders}"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let want_ids: BTreeSet<String> = want.orders.iter().map(|o| o.order_id.clone()).collect();
    assert!(ids == want_ids, "the order ids in {orders} are the valid orders");
    // Every row holds its order: the total column, and the document.
    let totals: BTreeMap<String, i64> = pg
        .query(
            &format!("SELECT order_id, total_cents FROM {orders} WHERE (doc->>'total_cents')::bigint = total_cents"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want_totals: BTreeMap<String, i64> = want.orders.iter().map(|o| (o.order_id.clone(), total(o))).collect();
    assert!(totals == want_totals, "total_cents and the jsonb document of every row are its order's");

    // The daily sums were added once per order, whatever was replayed.
    let days: BTreeMap<String, (i64, i64)> = pg
        .query(&format!("SELECT day::text, orders, revenue_cents FROM {daily}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut want_days: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for o in &want.orders {
        let day = want_days.entry(o.day.clone()).or_default();
        day.0 += 1;
        day.1 += total(o);
    }
    assert_eq!(days, want_days, "{daily}: orders and revenue per day");
    let redis_days = &model::counters(&want.orders)["revenue:day"];
    assert!(days.iter().all(|(day, (_, cents))| redis_days.get(day) == Some(cents)), "the same as Redis's revenue:day");

    let errors = host.metric("sluice_errors_total{peer=\"postgres\"}").unwrap_or(0.0);
    eprintln!(
        "PostgreSQL errors waited out: {errors}; rows skipped behind the fence in the last run: {:?}",
        host.metric("sluice_table_rows_skipped_total")
    );
    assert!(host.terminate().success(), "{}", host.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_postgres_refuses_dead_letters_its_record_and_only_it() {
    let _serial = serial().await;
    let tansu = Tansu::start();
    let (lookups, counters) = (RedisPrefix::new("refuse-lookups"), RedisPrefix::new("refuse-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let schema = Schema::new("refuse").await;
    let values = generated(4_000, 22, 0.02);
    let mut want = Expected::of(&values);
    // The table takes orders under the 90th percentile of totals; the rest
    // break its CHECK constraint.
    let mut totals: Vec<i64> = want.orders.iter().map(total).collect();
    totals.sort_unstable();
    let limit = totals[totals.len() * 9 / 10];
    let table = format!("{}.small", schema.0);
    connect()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {table} (order_id text PRIMARY KEY, total_cents bigint CONSTRAINT under_limit CHECK \
             (total_cents < {limit}), doc jsonb, raw text)"
        ))
        .await
        .unwrap();
    let (kept, refused): (Vec<model::Summary>, Vec<model::Summary>) =
        want.orders.drain(..).partition(|o| total(o) < limit);
    assert!(!refused.is_empty() && !kept.is_empty());
    want.orders = kept;
    want.dead.insert("row_refused", refused.len());

    // The order also as a document, parsed (`jsonb`) and as it is (`text`).
    let documents = "columns.doc = { field = \"$value\", type = \"jsonb\" }\n\
                     columns.raw = { field = \"$value\", type = \"text\" }\n";
    let (dir, pipeline) = table_pipeline_at("refuse", &table, PG_URL, documents);
    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "refuse").set("SLUICE_DELIVERY", "at-least-once");
    let mut host = Host::start_with(&env, &pipeline);
    host.wait_ready(Duration::from_secs(90));
    produce(&tansu.brokers(), "orders", &keyed(&values)).await;

    // Outputs, dead letters and counters: the refused orders are dead
    // letters only, counted nowhere.
    assert_exact(&tansu.brokers(), &want, SHARED_REDIS, &counters.0, Outputs::ExactlyOnce).await;
    let pg = connect().await;
    let ids: BTreeSet<String> =
        pg.query(&format!("SELECT order_id FROM {table}"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let want_ids: BTreeSet<String> = want.orders.iter().map(|o| o.order_id.clone()).collect();
    assert!(ids == want_ids, "{table} holds every order under the limit and no other");
    // Each row's documents are its output's bytes: as they are in `text`,
    // and parsed in `jsonb`. The refused rows were written record by
    // record, the others in batches: both ways.
    let outputs = support::kafka::consume(
        &tansu.brokers(),
        "orders.enriched",
        want.orders.len(),
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let outputs: BTreeMap<String, String> = outputs
        .iter()
        .map(|r| {
            let order: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            (order["order_id"].as_str().unwrap().to_string(), String::from_utf8(r.value.clone()).unwrap())
        })
        .collect();
    let rows: BTreeMap<String, String> = pg
        .query(&format!("SELECT order_id, raw FROM {table} WHERE doc = raw::jsonb"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        rows == outputs,
        "the documents of {table} are the outputs' bytes ({} rows, {} outputs)",
        rows.len(),
        outputs.len()
    );
    let dlq = support::kafka::consume(
        &tansu.brokers(),
        "orders.dlq",
        want.dead_total(),
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let letter = dlq.iter().find(|r| r.headers["sluice.error.reason"] == "row_refused").unwrap();
    let message = &letter.headers["sluice.error.message"];
    assert!(
        message.starts_with("table `small`: new row for relation \"small\" violates check constraint \"under_limit\""),
        "{message}"
    );
    assert_eq!(letter.headers["sluice.error.stage"], "totals");
    assert!(host.terminate().success(), "{}", host.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_travel_over_verified_tls_and_a_server_whose_certificate_cannot_be_verified_gets_none() {
    let _serial = serial().await;
    let pg = connect().await;
    let ssl: String = pg.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(ssl, "on", "the test needs the PostgreSQL server at 127.0.0.1:5432 to accept TLS");
    let cert: String = pg.query_one("SHOW ssl_cert_file", &[]).await.unwrap().get(0);
    let tansu = Tansu::start();
    let (lookups, counters) = (RedisPrefix::new("pgtls-lookups"), RedisPrefix::new("pgtls-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let schema = Schema::new("pgtls").await;
    let table = format!("{}.small", schema.0);
    pg.batch_execute(&format!("CREATE TABLE {table} (order_id text PRIMARY KEY, total_cents bigint)")).await.unwrap();

    // Not verifiable: the server's certificate is self-signed, so the
    // built-in roots do not vouch for it. Nothing is written; the host
    // waits, counting the failures, and says why.
    let unverified = "postgres://postgres@localhost:5432/test?sslmode=require";
    let (dir, pipeline) = table_pipeline_at("pgtls-bad", &table, unverified, "");
    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "pgtls-bad");
    let mut host = Host::start_with(&env, &pipeline);
    host.wait_ready(Duration::from_secs(90));
    let values = generated(1_000, 24, 0.0);
    produce(&tansu.brokers(), "orders", &keyed(&values)).await;
    host.wait_log("invalid peer certificate", Duration::from_secs(60));
    let errors = r#"sluice_errors_total{peer="postgres"}"#;
    assert!(host.metric(errors).unwrap_or(0.0) >= 1.0, "{}", host.log_text());
    let rows: i64 = pg.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "no row goes to a server that was not verified");
    host.kill();
    let _ = std::fs::remove_dir_all(&dir);

    // Verified against the server's own certificate as the root, host
    // name included: every order arrives, over TLS.
    let app = format!("sluice-tls-{}", std::process::id());
    let verified = format!(
        "postgres://postgres@localhost:5432/test?sslmode=verify-full&sslrootcert={cert}&application_name={app}"
    );
    let (dir, pipeline) = table_pipeline_at("pgtls", &table, &verified, "");
    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "pgtls-good");
    let mut host = Host::start_with(&env, &pipeline);
    host.wait_ready(Duration::from_secs(90));
    let want = Expected::of(&values).orders.len() as i64;
    let got = wait_count(&pg, &format!("SELECT count(*) FROM {table}"), want, Duration::from_secs(90)).await;
    assert_eq!(got, want, "{}", host.log_text());
    let (tls, connections): (bool, i64) = {
        let row = pg
            .query_one(
                "SELECT coalesce(bool_and(s.ssl), false), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a \
                 USING (pid) WHERE a.application_name = $1",
                &[&app],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(connections >= 1 && tls, "the host's {connections} connection(s) must all use TLS");
    assert!(host.terminate().success(), "{}", host.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The default pipeline whose output also goes to `table` (created by the
/// test: `order_id` and `total_cents`), in a folder of its own; the folder
/// and the pipeline file.
fn table_pipeline(name: &str, table: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    table_pipeline_at(name, table, PG_URL, "")
}

/// [`table_pipeline`] with the table on the server at `url`, and the
/// `columns.*` lines of `more` columns.
fn table_pipeline_at(name: &str, table: &str, url: &str, more: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let text = std::fs::read_to_string(support::repo_root().join("pipeline.toml")).unwrap();
    let plugins = support::repo_root().join("plugins/dist");
    let text = text.replace("${SLUICE_PLUGIN_DIR:-plugins/dist}", plugins.to_str().unwrap()).replacen(
        "[output]\ntopic = \"orders.enriched\"\n",
        &format!(
            "[output]\ntopic = \"orders.enriched\"\ntables = [\"small\"]\n\n[tables.small]\nurl = \"{url}\"\n\
             table = \"{table}\"\nkey = [\"order_id\"]\ncreate = false\n\
             columns.order_id = {{ field = \"order_id\", type = \"text\" }}\n\
             columns.total_cents = {{ field = \"total_cents\", type = \"bigint\" }}\n{more}"
        ),
        1,
    );
    assert!(text.contains("[tables.small]"));
    let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(&pipeline, text).unwrap();
    (dir, pipeline)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_fence_past_the_end_of_its_partition_stops_the_host_and_says_how_to_reset() {
    let _serial = serial().await;
    let tansu = Tansu::start();
    let (lookups, counters) = (RedisPrefix::new("pgfence-lookups"), RedisPrefix::new("pgfence-counters"));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let schema = Schema::new("pgfence").await;
    let table = format!("{}.small", schema.0);
    let pg = connect().await;
    pg.batch_execute(&format!("CREATE TABLE {table} (order_id text PRIMARY KEY, total_cents bigint)")).await.unwrap();
    // The fences a topic of the same name left before it was recreated.
    let target = format!("\"{}\".\"small\"", schema.0);
    pg.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS sluice_fences (target text NOT NULL, topic text NOT NULL, partition integer NOT \
         NULL, last_offset bigint NOT NULL, PRIMARY KEY (target, topic, partition)); INSERT INTO sluice_fences \
         SELECT '{target}', 'orders', p, 500 FROM generate_series(0, 2) AS p"
    ))
    .await
    .unwrap();
    let (dir, pipeline) = table_pipeline("pgfence", &table);
    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, "pgfence");
    let mut host = Host::start_with(&env, &pipeline);
    host.wait_ready(Duration::from_secs(90));
    // The end offsets are known a few seconds after the assignment: keep
    // orders coming until the host gives up.
    let values = generated(30, 23, 0.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    while host.is_running() {
        assert!(Instant::now() < deadline, "still running:\n{}", host.log_text());
        produce(&tansu.brokers(), "orders", &keyed(&values[sent % values.len()..][..1])).await;
        sent += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = host.log_text();
    assert!(log.contains("the table rows fence of topic `orders` partition"), "{log}");
    assert!(log.contains("is at offset 500, past the partition's end"), "{log}");
    let reset = format!("DELETE FROM sluice_fences WHERE target IN ('{target}') AND topic = 'orders' AND partition = ");
    assert!(log.contains(&reset), "{log}");
    let rows: i64 = pg.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "nothing written");
    let _ = std::fs::remove_dir_all(&dir);
}
