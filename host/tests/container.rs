//! The host container, built and run for real: the image `make image`
//! builds, run as a user runs it (host network, read-only root,
//! pipeline.toml and the plugins folder mounted), against tansu and the real
//! Redis; and docker-compose.yml brought up whole with local stand-ins for
//! the broker and Redis images. `make test` starts the Docker engine and
//! builds the images first (scripts/container.sh prepare); where no engine
//! can be had, each test says that it skips.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::container::{CacheDir, Container, UID, image, inspect, output, run_command, serial};
use support::inputs::{
    Expected, Outputs, SHARED_REDIS, assert_exact, broker_hides_aborted_transactions, generated, keyed, load_lookups,
};
use support::kafka::{Tansu, consume, produce};
use support::model;
use support::process::HostEnv;
use support::workdir::{Workdir, dist, replace, sha256};
use support::{RedisPrefix, free_port, read_counters_at, repo_root};

/// A broker, lookups in the real Redis, and a pipeline folder with the
/// repository's pipeline.toml and the built plugins.
struct Setup {
    tansu: Tansu,
    lookups: RedisPrefix,
    counters: RedisPrefix,
    work: Workdir,
    cache: CacheDir,
}

impl Setup {
    async fn new(name: &str) -> Self {
        let tansu = Tansu::start();
        let lookups = RedisPrefix::new(&format!("{name}-lookups"));
        let counters = RedisPrefix::new(&format!("{name}-counters"));
        load_lookups(SHARED_REDIS, &lookups.0).await;
        let pipeline = std::fs::read_to_string(repo_root().join("pipeline.toml")).unwrap();
        let work = Workdir::new(name, &pipeline);
        Self { tansu, lookups, counters, work, cache: CacheDir::new(name) }
    }

    fn env(&self, group: &str) -> HostEnv {
        HostEnv::new(&self.tansu.brokers(), &self.lookups.0, &self.counters.0, group)
    }

    fn start(&self, image: &str, env: &HostEnv) -> Container {
        Container::start(image, env, &self.work.pipeline(), &self.work.dir.join("plugins"), &self.cache)
    }

    async fn outputs(&self) -> Outputs {
        if broker_hides_aborted_transactions(&self.tansu).await { Outputs::ExactlyOnce } else { Outputs::AbortsVisible }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_check_turns_healthy_for_a_non_root_process_on_a_read_only_root() {
    let Some(image) = image() else { return };
    let _serial = serial().await;
    let setup = Setup::new("container-health").await;
    let container = setup.start(&image, &setup.env("container-health"));
    let took = container.wait_healthy(Duration::from_secs(120));
    eprintln!("healthy after {took:?}");

    // The process itself runs as the image's user, not only the config.
    let status = std::fs::read_to_string(format!("/proc/{}/status", container.pid())).unwrap();
    let uids: Vec<&str> = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().collect();
    let uid = UID.to_string();
    assert_eq!(uids, [uid.as_str(); 4], "real, effective, saved and file-system uid");
    assert_eq!(container.inspect("{{.HostConfig.ReadonlyRootfs}}"), "true");

    // The host fills the cache volume with the compiled plugins, one per
    // stage, while it loads them (the health check answers before that);
    // inside, the root is not writable and the volume is.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let compiled = loop {
        let compiled: Vec<PathBuf> =
            walk(&setup.cache.0).into_iter().filter(|p| p.extension().is_some_and(|e| e == "cwasm")).collect();
        if compiled.len() >= 4 || std::time::Instant::now() > deadline {
            break compiled;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(compiled.len(), 4, "compiled plugins in the cache volume: {compiled:?}");
    let write = |path: &str| output("docker", &["exec", &container.id, "touch", path]);
    let denied = write("/etc/sluice/written");
    assert!(!denied.status.success(), "the root filesystem took a write");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Read-only file system"), "{denied:?}");
    assert!(write("/var/lib/sluice/cache/written").status.success(), "the cache volume is writable");
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_flow_through_the_container_with_exact_counters() {
    let Some(image) = image() else { return };
    let _serial = serial().await;
    let setup = Setup::new("container-flow").await;
    let values = generated(20_000, 21, 0.02);
    let want = Expected::of(&values);
    produce(&setup.tansu.brokers(), "orders", &keyed(&values)).await;

    let container = setup.start(&image, &setup.env("container-flow"));
    container.wait_healthy(Duration::from_secs(120));
    let outputs = setup.outputs().await;
    assert_exact(&setup.tansu.brokers(), &want, SHARED_REDIS, &setup.counters.0, outputs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_copied_into_the_mounted_folder_is_live_without_a_restart() {
    let Some(image) = image() else { return };
    let _serial = serial().await;
    let setup = Setup::new("container-plugin").await;
    let container = setup.start(&image, &setup.env("container-plugin"));
    container.wait_healthy(Duration::from_secs(120));
    let (pid, started) = (container.pid(), container.inspect("{{.State.StartedAt}}"));
    let (v1, v2) = (dist("categorize.wasm"), dist("categorize-uncategorized.wasm"));

    let before = generated(300, 31, 0.0);
    produce(&setup.tansu.brokers(), "orders", &keyed(&before)).await;
    container.wait_records_in(300, Duration::from_secs(60));

    // As a user would: copy the new build over the old file in the folder.
    replace(&setup.work.plugin("categorize.wasm"), &v2);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, live) = container.get("/api/pipeline").unwrap();
        let live: serde_json::Value = serde_json::from_str(&live).unwrap();
        let stages = live["stages"].as_array().unwrap();
        let categorize = stages.iter().find(|s| s["name"] == "categorize").unwrap();
        if categorize["sha256"] == sha256(&v2) {
            break;
        }
        assert!(Instant::now() < deadline, "the new categorize is not live after 60 s: {categorize}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = generated(300, 32, 0.0);
    produce(&setup.tansu.brokers(), "orders", &keyed(&after)).await;
    let (want_before, want_after) = (Expected::of(&before), Expected::of(&after));
    let outputs = want_before.orders.len() + want_after.orders.len();
    let wait = Duration::from_secs(90);
    let records = consume(&setup.tansu.brokers(), "orders.enriched", outputs, wait, Duration::from_secs(2)).await;
    assert_eq!(records.len(), outputs);

    let ids_after: BTreeSet<&str> = want_after.orders.iter().map(|o| o.order_id.as_str()).collect();
    for r in &records {
        let lineage = &r.headers["sluice.lineage"];
        let version = lineage.split(',').find_map(|e| e.strip_prefix("categorize@")).unwrap();
        let want = if ids_after.contains(r.json()["order_id"].as_str().unwrap()) { &v2 } else { &v1 };
        assert_eq!(version, &sha256(want)[..12], "lineage {lineage}");
    }
    assert_eq!((container.pid(), container.inspect("{{.State.StartedAt}}")), (pid, started), "not restarted");
    assert_eq!(container.inspect("{{.RestartCount}}"), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_stop_commits_and_a_restart_repeats_nothing() {
    let Some(image) = image() else { return };
    let _serial = serial().await;
    let setup = Setup::new("container-stop").await;
    let values = generated(60_000, 41, 0.02);
    let want = Expected::of(&values);
    produce(&setup.tansu.brokers(), "orders", &keyed(&values)).await;
    let env = setup.env("container-stop").set("SLUICE_DELIVERY", "exactly-once").set("SLUICE_INSTANCE_ID", "one");

    let first = setup.start(&image, &env);
    first.wait_healthy(Duration::from_secs(120));
    first.wait_records_in(5_000, Duration::from_secs(60));
    let read = first.metric("sluice_records_in_total").unwrap();
    assert!(read < values.len() as f64, "stopped with records left to read ({read} read)");
    // Docker's default grace period.
    let grace = Duration::from_secs(10);
    let (took, code) = first.stop(grace);
    let done = first.logs();
    eprintln!("docker stop took {took:?}");
    assert_eq!(code, 0, "exit code after docker stop (137 = killed at the end of the grace period):\n{done}");
    assert!(took < grace, "stopped after {took:?}");

    // Offsets were committed with the outputs: the next instance goes on
    // where the first stopped, so the broker holds no repeat even where it
    // shows aborted transactions.
    let second = setup.start(&image, &env);
    second.wait_healthy(Duration::from_secs(120));
    assert_exact(&setup.tansu.brokers(), &want, SHARED_REDIS, &setup.counters.0, Outputs::ExactlyOnce).await;
}

/// docker-compose.yml with deploy/local/compose.yml, brought up and down.
struct Compose {
    project: String,
    env: Vec<(&'static str, String)>,
}

impl Compose {
    fn command(&self, args: &[&str]) -> std::process::Command {
        let root = repo_root();
        let mut command = std::process::Command::new("docker-compose");
        command
            .arg("--file")
            .arg(root.join("docker-compose.yml"))
            .arg("--file")
            .arg(root.join("deploy/local/compose.yml"))
            .args(["--project-name", &self.project])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    fn run(&self, args: &[&str]) -> String {
        run_command(&mut self.command(args))
    }

    /// Every record of `topic` (`sluice peek`, run in the stack's network
    /// with the host's environment), as its JSON value and its headers;
    /// waits for `count` of them.
    fn peek(&self, topic: &str, count: usize) -> Vec<(serde_json::Value, BTreeMap<String, String>)> {
        let count = (count + 1).to_string();
        let args = ["run", "--rm", "--no-deps", "-T", "sluice", "peek", topic, "--count", &count, "--wait", "20"];
        let mut records: Vec<(serde_json::Value, BTreeMap<String, String>)> = Vec::new();
        for line in self.run(&args).lines() {
            match line.strip_prefix("    ").and_then(|h| h.split_once(": ")) {
                Some((name, value)) => {
                    records.last_mut().unwrap().1.insert(name.to_string(), value.to_string());
                }
                None => {
                    let (_, value) = line.split_once(' ').and_then(|(_, rest)| rest.split_once(' ')).unwrap();
                    records.push((serde_json::from_str(value).unwrap_or_default(), BTreeMap::new()));
                }
            }
        }
        records
    }

    /// The container of a service.
    fn container(&self, service: &str) -> String {
        self.run(&["ps", "--quiet", service])
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.command(&["down", "--volumes", "--timeout", "10"]).output();
    }
}

/// A container's start or finish time, comparable as text (Docker trims
/// trailing zeros of the nanoseconds).
fn moment(id: &str, field: &str) -> String {
    let at = inspect(id, &format!("{{{{.State.{field}}}}}"));
    let (seconds, rest) = at.split_once('.').unwrap_or((at.trim_end_matches('Z'), "Z"));
    format!("{seconds}.{:0<9}Z", rest.trim_end_matches('Z'))
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_compose_up_brings_up_a_working_pipeline_in_order() {
    let Some(image) = image() else { return };
    let _serial = serial().await;
    let (admin, redis) = (free_port(), free_port());
    let orders = 3_000;
    let compose = Compose {
        project: format!("sluice-test-{}", std::process::id()),
        env: vec![
            ("SLUICE_IMAGE", image),
            ("SLUICE_ADMIN_PORT", admin.to_string()),
            ("SLUICE_LOCAL_REDIS_PORT", redis.to_string()),
            ("SLUICE_LOCAL_ORDERS", orders.to_string()),
            ("SLUICE_ADMIN_TOKEN", "compose-test-token".to_string()),
        ],
    };
    let started = Instant::now();
    compose.run(&["up", "--detach", "--no-build"]);
    eprintln!("docker-compose up returned after {:?}", started.elapsed());

    // The generator is the last to start; its records are the input.
    let generator = compose.container("generator");
    let deadline = Instant::now() + Duration::from_secs(120);
    while inspect(&generator, "{{.State.Status}}") != "exited" {
        assert!(Instant::now() < deadline, "the generator did not finish:\n{}", compose.run(&["logs"]));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(inspect(&generator, "{{.State.ExitCode}}"), "0", "{}", compose.run(&["logs", "generator"]));

    // Startup order: the one-shot containers finished, successfully, before
    // the host started, and the host was healthy before the generator ran.
    let sluice = compose.container("sluice");
    for service in ["topics", "lookups"] {
        let id = compose.container(service);
        assert_eq!(inspect(&id, "{{.State.ExitCode}}"), "0", "{service}: {}", compose.run(&["logs", service]));
        assert!(moment(&id, "FinishedAt") <= moment(&sluice, "StartedAt"), "{service} finished before sluice started");
    }
    for service in ["kafka", "redis"] {
        assert_eq!(inspect(&compose.container(service), "{{.State.Health.Status}}"), "healthy", "{service}");
    }
    assert!(moment(&compose.container("kafka"), "StartedAt") <= moment(&compose.container("topics"), "StartedAt"));
    assert!(moment(&compose.container("redis"), "StartedAt") <= moment(&compose.container("lookups"), "StartedAt"));
    assert!(moment(&sluice, "StartedAt") < moment(&generator, "StartedAt"));
    assert_eq!(inspect(&sluice, "{{.State.Health.Status}}"), "healthy");
    assert_eq!(inspect(&sluice, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    let health = support::process::request(admin, "GET", "/health").map(|(code, _)| code);
    assert_eq!(health, Some(200), "the admin API on the published port");

    // Every valid order once on orders.enriched, every invalid record on
    // orders.dlq with its reason (read inside the stack's network, where
    // the broker's advertised address resolves), and exact counters.
    let values = generated(orders, 1, 0.02);
    let want = Expected::of(&values);
    let enriched = compose.peek("orders.enriched", want.orders.len());
    let mut ids: Vec<String> =
        enriched.iter().map(|(value, _)| value["order_id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    let mut want_ids: Vec<String> = want.orders.iter().map(|o| o.order_id.clone()).collect();
    want_ids.sort();
    assert!(ids == want_ids, "orders.enriched: {} records for {} valid orders", ids.len(), want_ids.len());
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for (_, headers) in compose.peek("orders.dlq", want.dead_total()) {
        *reasons.entry(headers["sluice.error.reason"].clone()).or_default() += 1;
    }
    let want_reasons: BTreeMap<String, usize> = want.dead.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(reasons, want_reasons, "dead letters by reason");
    let counters = read_counters_at(&format!("redis://127.0.0.1:{redis}"), "sluice:").await;
    assert!(counters == model::counters(&want.orders), "Redis counters differ from the model's sums");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}
