//! The admin API is safe by default: beyond loopback it serves only with a
//! token, unless pipeline.toml says `admin.insecure = true`.

mod support;

use std::time::Duration;
use support::kafka::Tansu;
use support::process::{Host, HostEnv};
use support::workdir::Workdir;
use support::{RedisPrefix, free_port};

fn env(tansu: &Tansu, prefix: &RedisPrefix, group: &str) -> HostEnv {
    HostEnv::new(&tansu.brokers(), "", &prefix.0, group).set("SLUICE_HTTP_ADDR", &format!("0.0.0.0:{}", free_port()))
}

#[test]
fn beyond_loopback_without_a_token_it_refuses_to_start_and_says_why() {
    let tansu = Tansu::start();
    let prefix = RedisPrefix::new("exposure-refused");
    let mut host = Host::start(&env(&tansu, &prefix, "exposure-refused"));
    let status = host.wait_exit(Duration::from_secs(30));
    let log = host.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains("beyond loopback, with no token"), "{log}");
    assert!(log.contains("SLUICE_ADMIN_TOKEN") && log.contains("admin.insecure = true"), "{log}");
    assert!(host.get("/health").is_none(), "nothing listens");
}

#[test]
fn beyond_loopback_with_a_token_it_serves() {
    let tansu = Tansu::start();
    let prefix = RedisPrefix::new("exposure-token");
    let host = Host::start(&env(&tansu, &prefix, "exposure-token").set("SLUICE_ADMIN_TOKEN", "t0ken"));
    wait_health(&host);
}

#[test]
fn beyond_loopback_admin_insecure_serves_open_with_a_warning() {
    let tansu = Tansu::start();
    let prefix = RedisPrefix::new("exposure-insecure");
    let text = std::fs::read_to_string(support::repo_root().join("pipeline.toml")).unwrap();
    let work = Workdir::new("exposure-insecure", &text.replace("[admin]\n", "[admin]\ninsecure = true\n"));
    let env = env(&tansu, &prefix, "exposure-insecure").set("SLUICE_PLUGIN_DIR", &work.plugin_dir());
    let host = Host::start_with(&env, &work.pipeline());
    wait_health(&host);
    assert!(host.log_text().contains("listens beyond loopback with no token"), "{}", host.log_text());
}

fn wait_health(host: &Host) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while host.get("/health").map(|(code, _)| code) != Some(200) {
        assert!(std::time::Instant::now() < deadline, "no /health within 60 s:\n{}", host.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}
