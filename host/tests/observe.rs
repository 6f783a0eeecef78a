//! Seeing it work, against tansu, the real Redis and the sluice binary: HTTP
//! ingest with its errors and token, the sales report (JSON and terminal),
//! the metrics' values after a known workload, and the dashboard in a real
//! browser (Debian's Chromium driven by playwright-core), which asks for the
//! token before it shows anything.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::RedisPrefix;
use support::inputs::{Expected, SHARED_REDIS, example_values, generated, keyed, load_lookups};
use support::kafka::{Producer, Tansu, produce};
use support::model;
use support::process::{Host, HostEnv};

const TOKEN: &str = "s3cret-token";

/// Opens the dashboard of a host with a token in headless Chromium (Debian's,
/// driven by playwright-core), with every request off the host blocked:
/// first with no token (the page must ask for it), then a wrong one (refused,
/// asked again), then the right one, until its charts show data as orders
/// flow; then, in a fresh session, with the token in the link's fragment.
/// Saves a screenshot and prints a JSON summary. Run by `node
/// --input-type=module` in `dashboard/` (for playwright-core), with
/// `DASHBOARD_URL`, `DASHBOARD_OUT` and `DASHBOARD_TOKEN` set. Console
/// errors, page errors and failed requests are listed in `errors`, except
/// Chromium's note of each 401 or 403 the API answered, which are counted in
/// `refused`.
const DASHBOARD_WITH_TOKEN: &str = r##"
import { chromium } from "playwright-core";
const { DASHBOARD_URL: base, DASHBOARD_OUT: out, DASHBOARD_TOKEN: token } = process.env;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic"],
});
const errors = [], urls = [];
let refused = 0;
async function open(url) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1200 } });
  const page = await context.newPage();
  page.on("console", m => {
    if (m.type() !== "error") return;
    if (/status of 40[13]/.test(m.text())) refused++;
    else errors.push(`console: ${m.text()}`);
  });
  page.on("pageerror", e => errors.push(`page: ${e}`));
  page.on("requestfailed", r => errors.push(`request failed: ${r.url()}`));
  page.on("request", r => urls.push(r.url()));
  await page.route("**/*", route => route.request().url().startsWith(base) ? route.continue() : route.abort());
  await page.goto(url, { waitUntil: "load" });
  return page;
}
const state = () => ({
  href: location.href,
  stored: sessionStorage.getItem("sluice.token"),
  cookie: document.cookie,
  form: !document.getElementById("login").hidden,
  message: document.getElementById("login-message").textContent,
  asked: window.sluice.asked,
  stats: window.sluice.stats,
});
const wait = { timeout: 30000, polling: 100 };
const seen = {};
try {
  const page = await open(`${base}/`);
  await page.waitForFunction(() => !document.getElementById("login").hidden, null, wait);
  seen.asked = await page.evaluate(state);
  await page.fill("#login-token", "wrong-" + token);
  await page.press("#login-token", "Enter");
  await page.waitForFunction(() => window.sluice.asked >= 2 && !document.getElementById("login").hidden, null, wait);
  seen.wrong = await page.evaluate(state);
  await page.fill("#login-token", token);
  await page.click("#login button[type=submit]");
  await page.waitForFunction(() => {
    const s = window.sluice;
    if (s.stats < 3 || s.reports < 1 || s.pipelines < 1) return false;
    const c = s.charts;
    return c.throughput.data.datasets[0].data.some(v => v > 0) && c.category.data.labels.length > 0 &&
      c.products.data.labels.length > 0 && c.day.data.labels.length > 0 && c.store.data.labels.length > 0 &&
      c.latency.data.labels.length > 0;
  }, null, { timeout: 60000, polling: 250 });
  seen.entered = await page.evaluate(state);
  Object.assign(seen, await page.evaluate(() => {
    const c = window.sluice.charts;
    return {
      categories: c.category.data.labels,
      stages: [...document.querySelectorAll("#stages tr td:first-child")].map(td => td.textContent),
      max_in_per_s: Math.max(...c.throughput.data.datasets[0].data),
    };
  }));
  await page.screenshot({ path: `${out}/dashboard.png`, fullPage: true });
  const linked = await open(`${base}/#token=${encodeURIComponent(token)}`);
  await linked.waitForFunction(() => window.sluice.stats >= 2 && window.sluice.pipelines >= 1, null, wait);
  seen.fragment = await linked.evaluate(state);
} catch (e) {
  errors.push(String(e));
} finally {
  await browser.close();
}
const token_in_urls = urls.filter(u => u.includes(token));
console.log(JSON.stringify({ errors, refused, token_in_urls, ...seen }));
process.exit(errors.length ? 1 : 0);
"##;

fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A host with an admin token, on a broker of its own, with the lookups
/// loaded.
struct Observed {
    host: Host,
    env: HostEnv,
    _counters: RedisPrefix,
    _lookups: RedisPrefix,
    tansu: Tansu,
}

async fn start(name: &str) -> Observed {
    let tansu = Tansu::start_with_partitions(1);
    let (lookups, counters) =
        (RedisPrefix::new(&format!("{name}-lookups")), RedisPrefix::new(&format!("{name}-counters")));
    load_lookups(SHARED_REDIS, &lookups.0).await;
    let env = HostEnv::new(&tansu.brokers(), &lookups.0, &counters.0, name).set("SLUICE_ADMIN_TOKEN", TOKEN);
    let mut host = Host::start(&env);
    host.wait_ready(Duration::from_secs(60));
    Observed { host, env, _counters: counters, _lookups: lookups, tansu }
}

/// The bearer token header.
fn auth() -> [(&'static str, String); 1] {
    [("Authorization", format!("Bearer {TOKEN}"))]
}

/// POSTs `body` as JSON, as the endpoints that change something require;
/// the answer's code and JSON body.
fn post(host: &Host, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
    let (code, body) = host.send("POST", path, &all, body);
    (code, serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{code} `{body}`: {e}")))
}

/// The shared examples, through Kafka; once they are all read, what the
/// pipeline must have made of them.
async fn examples_through(tansu: &Tansu, host: &Host) -> Expected {
    let values = example_values();
    produce(&tansu.brokers(), "orders", &keyed(&values)).await;
    host.wait_records_in(values.len() as u64, Duration::from_secs(60));
    Expected::of(&values)
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_and_the_data_endpoints_refuse_what_they_must_and_say_why() {
    let Observed { host, .. } = &start("observe-refusals").await;
    let order = br#"{"order_id":"x","product_id":"P-100","quantity":1,"timestamp":"2025-03-10T10:00:00Z"}"#;

    // Refused: no token, a wrong token, a topic not open for ingest, bodies
    // that are not JSON objects, a body over the limit, a wrong method.
    let error = |(code, body): (u16, Value)| (code, body["error"].as_str().unwrap_or_default().to_string());
    let (code, why) = error(post(host, "/api/ingest/orders", &[], order));
    assert_eq!(code, 401, "{why}");
    assert!(why.contains("Authorization: Bearer"));
    assert_eq!(error(post(host, "/api/ingest/orders", &[("Authorization", "Bearer nope".to_string())], order)).0, 403);
    assert_eq!(error(post(host, "/api/reload", &[], b"")).0, 401, "reload needs the token too");
    assert_eq!(error(post(host, "/api/promote/categorize", &[], b"")).0, 401, "and promote");
    assert_eq!(host.json("GET", "/api/pipeline").0, 401, "reads of the pipeline's data need it too");
    assert_eq!(host.json_with_token("GET", "/api/pipeline", TOKEN).0, 200);
    let (code, why) = error(post(host, "/api/ingest/orders.enriched", &auth(), order));
    assert_eq!(code, 404);
    assert!(why.contains("`orders.enriched` is not open for ingest (allowed: orders)"), "{why}");
    let (code, why) = error(post(host, "/api/ingest/orders", &auth(), b"{\"order_id\": "));
    assert_eq!(code, 400);
    assert!(why.starts_with("the body is not JSON: EOF while parsing"), "{why}");
    let (code, why) = error(post(host, "/api/ingest/orders", &auth(), b"[{\"a\":1}, 2]"));
    assert_eq!((code, why.as_str()), (400, "element 1 of the array is not a JSON object"));
    assert_eq!(error(post(host, "/api/ingest/orders", &auth(), b"[]")).0, 400);
    assert_eq!(error(post(host, "/api/ingest/orders", &auth(), b"\"just text\"")).0, 400);
    let huge = format!("[{}]", vec![std::str::from_utf8(order).unwrap(); 15_000].join(","));
    assert!(huge.len() > 1 << 20);
    let (code, why) = error(post(host, "/api/ingest/orders", &auth(), huge.as_bytes()));
    assert_eq!((code, why.as_str()), (413, "the body is larger than admin.ingest_max_bytes"));
    assert_eq!(host.json("GET", "/api/ingest/orders").0, 405);
    assert_eq!(host.metric("sluice_records_in_total"), Some(0.0), "nothing refused was produced");
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_the_report_and_the_metrics_account_for_a_known_workload() {
    let Observed { host, env, tansu, .. } = &start("observe-workload").await;
    // The known workload: the shared examples. JSON objects through ingest
    // (the first alone, the rest as one array), everything else via Kafka.
    let values = example_values();
    let (objects, others): (Vec<&String>, Vec<&String>) =
        values.iter().partition(|v| serde_json::from_str::<Value>(v).is_ok_and(|v| v.is_object()));
    let (code, one) = post(host, "/api/ingest/orders", &auth(), objects[0].as_bytes());
    assert_eq!(code, 200, "{one}");
    assert_eq!(one, json!({"topic": "orders", "records": [{"partition": 0, "offset": 0}]}));
    let array = format!("[{}]", objects[1..].iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",\n"));
    let (code, many) = post(host, "/api/ingest/orders", &auth(), array.as_bytes());
    assert_eq!(code, 200, "{many}");
    let offsets: Vec<i64> = many["records"].as_array().unwrap().iter().map(|r| r["offset"].as_i64().unwrap()).collect();
    assert_eq!(offsets, (1..objects.len() as i64).collect::<Vec<_>>(), "one record per element, in order");
    let others: Vec<String> = others.into_iter().cloned().collect();
    produce(&tansu.brokers(), "orders", &keyed(&others)).await;
    let mut inputs: Vec<String> = objects.iter().map(|s| s.to_string()).collect();
    inputs.extend(others);
    host.wait_records_in(inputs.len() as u64, Duration::from_secs(60));
    let want = Expected::of(&inputs);
    let counters_want = model::counters(&want.orders);

    // The report, as JSON: the model's sums, ranked.
    let (code, report) = host.json_with_token("GET", "/api/report", TOKEN);
    assert_eq!(code, 200, "{report}");
    let totals = &counters_want["totals"];
    assert_eq!(report["orders"], totals["orders"]);
    assert_eq!(report["items"], totals["items"]);
    assert_eq!(report["revenue_cents"], totals["revenue_cents"]);
    let ranking = |name: &str| -> BTreeMap<String, i64> {
        report[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["key"].as_str().unwrap().into(), e["value"].as_i64().unwrap()))
            .collect()
    };
    assert_eq!(ranking("by_category"), counters_want["revenue:category"]);
    assert_eq!(ranking("by_store"), counters_want["revenue:store"]);
    assert_eq!(ranking("by_day"), counters_want["revenue:day"]);
    let by_category: Vec<i64> =
        report["by_category"].as_array().unwrap().iter().map(|e| e["value"].as_i64().unwrap()).collect();
    assert!(by_category.windows(2).all(|w| w[0] >= w[1]), "largest first: {by_category:?}");
    let top = &report["top_customers"][0];
    let spend = &counters_want["spend:user"];
    assert_eq!(top["value"].as_i64(), spend.values().max().copied());
    assert_eq!(top["orders"].as_i64(), counters_want["orders:user"].get(top["key"].as_str().unwrap()).copied());
    assert!(top["name"].is_string(), "customers are named from the user table: {top}");

    // The same report from the command line, as JSON and as a table.
    let report_cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("report")
            .arg(support::repo_root().join("pipeline.toml"))
            .args(args)
            .env_clear()
            .envs(&env.vars)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(serde_json::from_str::<Value>(&report_cli(&["--json"])).unwrap(), report);
    let table = report_cli(&[]);
    eprintln!("{table}");
    let money = sluice::tools::report::money;
    assert!(table.contains(&format!("orders {}", totals["orders"])), "{table}");
    assert!(table.contains(&format!("revenue {}", money(totals["revenue_cents"]))), "{table}");
    for (category, cents) in &counters_want["revenue:category"] {
        let line = table
            .lines()
            .find(|l| l.trim_start().starts_with(category.as_str()))
            .unwrap_or_else(|| panic!("{category}: {table}"));
        assert!(line.trim_end().ends_with(&money(*cents)), "{line}");
    }

    // Metrics after the workload: the values, not only the names.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (_, body) = host.get("/metrics").unwrap();
        if metric(&body, "sluice_consumer_lag{topic=\"orders\",partition=\"0\"}") == Some(0.0)
            || Instant::now() > deadline
        {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let m = |series: &str| metric(&body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"));
    let (valid, dead) = (want.orders.len() as f64, want.dead_total() as f64);
    assert_eq!(m("sluice_consumer_lag{topic=\"orders\",partition=\"0\"}"), 0.0, "everything read is processed");
    assert_eq!(m("sluice_topic_records_in_total{topic=\"orders\"}"), inputs.len() as f64);
    assert_eq!(m("sluice_topic_records_out_total{topic=\"orders.enriched\"}"), valid);
    assert_eq!(m("sluice_topic_records_out_total{topic=\"orders.dlq\"}"), dead);
    assert_eq!(m("sluice_filtered_total"), want.filtered as f64);
    assert_eq!(m("sluice_records_completed_total") + dead + m("sluice_filtered_total"), m("sluice_records_in_total"));
    let batches = m("sluice_batches_total");
    assert_eq!(m("sluice_batch_records_count"), batches);
    assert_eq!(m("sluice_batch_records_sum"), inputs.len() as f64);
    assert_eq!(m("sluice_batch_records_bucket{le=\"+Inf\"}"), batches);
    assert_eq!(m("sluice_stage_call_seconds_count{stage=\"normalize\"}"), batches, "one call per batch");
    assert!(m("sluice_stage_call_seconds_sum{stage=\"normalize\"}") > 0.0);
    assert!(m("sluice_stage_memory_bytes{stage=\"enrich\"}") >= 65536.0, "at least a page of linear memory");
    assert_eq!(m("sluice_errors_total{peer=\"redis\"}"), 0.0);
    assert_eq!(m("sluice_reloads_total{result=\"rejected\"}"), 0.0);
    assert_eq!(m("sluice_pipeline_generation"), 1.0);
    let mut reasons: BTreeMap<String, f64> = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("sluice_dead_letters_total{")) {
        let reason = line.split("reason=\"").nth(1).unwrap().split('"').next().unwrap();
        *reasons.entry(reason.to_string()).or_default() += line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    }
    let want_reasons: BTreeMap<String, f64> = want.dead.iter().map(|(k, v)| (k.to_string(), *v as f64)).collect();
    assert_eq!(reasons, want_reasons);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_asks_for_the_token_and_charts_the_orders_as_they_flow() {
    let Observed { mut host, tansu, .. } = start("observe-dashboard").await;
    let want = examples_through(&tansu, &host).await;
    let counters_want = model::counters(&want.orders);

    // The dashboard in a real browser while orders flow: it asks for the
    // token, and takes it from a link's fragment.
    let flowing = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn({
        let (flowing, brokers) = (flowing.clone(), tansu.brokers());
        async move {
            let producer = Producer::new(&brokers);
            for (seed, chunk) in (0..).zip(generated(60_000, 3, 0.01).chunks(200)) {
                if !flowing.load(Ordering::SeqCst) || seed > 250 {
                    break;
                }
                producer.send("orders", &keyed(chunk)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let out = support::repo_root().join("target/test-output/dashboard");
    std::fs::create_dir_all(&out).unwrap();
    let _ = std::fs::remove_file(out.join("dashboard.png"));
    let base = format!("http://127.0.0.1:{}", host.http_port);
    let browser = tokio::task::spawn_blocking({
        let (url, out) = (base.clone(), out.clone());
        move || {
            Command::new("node")
                .args(["--input-type=module", "--eval", DASHBOARD_WITH_TOKEN])
                .env("DASHBOARD_URL", url)
                .env("DASHBOARD_OUT", out)
                .env("DASHBOARD_TOKEN", TOKEN)
                .current_dir(support::repo_root().join("dashboard"))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    flowing.store(false, Ordering::SeqCst);
    load.await.unwrap();
    let stdout = String::from_utf8_lossy(&browser.stdout);
    assert!(browser.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&browser.stderr));
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("dashboard: {seen}");
    assert_eq!(seen["errors"], json!([]));
    // First the token form and no data; a wrong token is refused, said so
    // and asked for again; the right one is kept for the session only.
    let (asked, wrong, entered) = (&seen["asked"], &seen["wrong"], &seen["entered"]);
    assert_eq!((&asked["form"], &asked["stats"], &asked["stored"]), (&json!(true), &json!(0), &Value::Null), "{seen}");
    assert!(asked["message"].as_str().unwrap().contains("admin token"), "{seen}");
    assert!(seen["refused"].as_u64().unwrap() > 0, "the API refused the page before the token: {seen}");
    assert_eq!((&wrong["form"], &wrong["stored"]), (&json!(true), &Value::Null), "{seen}");
    assert!(wrong["message"].as_str().unwrap().contains("wrong admin token"), "{seen}");
    assert_eq!((&entered["form"], &entered["stored"], &entered["cookie"]), (&json!(false), &json!(TOKEN), &json!("")));
    assert_eq!(entered["href"], format!("{base}/"));
    // From a link's fragment: kept, gone from the address, never asked.
    let fragment = &seen["fragment"];
    assert_eq!((&fragment["href"], &fragment["stored"]), (&json!(format!("{base}/")), &json!(TOKEN)), "{seen}");
    assert_eq!((&fragment["form"], &fragment["asked"]), (&json!(false), &json!(0)), "{seen}");
    assert_eq!(seen["token_in_urls"], json!([]), "no request carried the token in its URL");
    assert_eq!(seen["stages"], json!(["normalize", "enrich", "categorize", "totals"]));
    assert!(seen["max_in_per_s"].as_f64().unwrap() > 0.0);
    let categories = seen["categories"].as_array().unwrap();
    for category in counters_want["revenue:category"].keys() {
        assert!(categories.contains(&json!(category)), "{category} charted: {seen}");
    }
    let screenshot = std::fs::metadata(out.join("dashboard.png")).unwrap();
    assert!(screenshot.len() > 20_000, "a screenshot with content: {} bytes", screenshot.len());
    assert!(host.terminate().success());
}
