//! Credentials never leave the host: a password in the Redis URL and a
//! secret in a stage's config show in no log line and no admin API answer,
//! while Redis is away and the host retries, reports the outage and answers
//! the sales report.

mod support;

use std::time::Duration;
use support::kafka::{Tansu, produce};
use support::process::{Host, HostEnv};
use support::workdir::Workdir;
use support::{RedisPrefix, free_port};

const PASSWORD: &str = "s3cret-pass";
const API_KEY: &str = "k-5ecret-api";

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_password_shows_in_no_log_line_and_no_answer() {
    let tansu = Tansu::start();
    let counters = RedisPrefix::new("secrets");
    // Nothing listens there: every Redis call fails and is retried.
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", free_port());
    // A stage whose config holds an API key.
    let audit = "[[stages]]\nname = \"audit\"\nplugin = \"${SLUICE_PLUGIN_DIR}/testguest.wasm\"\n\
                 config = { always = \"ok\", api_key = \"${AUDIT_API_KEY}\" }\n\n[[stages]]\nname = \"totals\"";
    let work = Workdir::new("secrets", &Workdir::default_pipeline().replace("[[stages]]\nname = \"totals\"", audit));
    let env = HostEnv::new(&tansu.brokers(), "", &counters.0, "secrets")
        .set("REDIS_URL", &url)
        .set("AUDIT_API_KEY", API_KEY)
        .set("SLUICE_PLUGIN_DIR", &work.plugin_dir());
    let host = Host::start_with(&env, &work.pipeline());
    produce(&tansu.brokers(), "orders", &[(None, b"{\"hello\":\"world\"}".to_vec())]).await;

    // A positive sign that the URL was about to be written: the retry of
    // the effects names Redis, with its password masked.
    host.wait_log(":***@127.0.0.1", Duration::from_secs(60));
    let mut answers = String::new();
    for path in ["/api/report", "/api/pipeline", "/api/stats", "/ready", "/metrics"] {
        let (code, body) = host.get(path).unwrap_or_else(|| panic!("{path}: no answer"));
        answers.push_str(&format!("{path} {code}: {body}\n"));
    }
    assert!(answers.contains("/api/report 5"), "the report fails while Redis is away:\n{answers}");
    assert!(answers.contains("\"api_key\":\"***\""), "the stage's config shows, masked:\n{answers}");
    for secret in [PASSWORD, API_KEY] {
        assert!(!answers.contains(secret), "an answer holds {secret}:\n{answers}");
        assert!(!host.log_text().contains(secret), "a log line holds {secret}:\n{}", host.log_text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_sasl_password_shows_in_no_log_line_and_no_answer() {
    const KAFKA_PASSWORD: &str = "k4fka-s3cret";
    let counters = RedisPrefix::new("secrets-kafka");
    // Nothing listens there: the broker is down the whole time.
    let port = free_port();
    let sasl = "\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\
                \"sasl.username\" = \"sluice\"\n\"sasl.password\" = \"${KAFKA_PASSWORD}\"\n";
    let text = Workdir::default_pipeline()
        .replacen("[kafka.consumer]\n", &format!("[kafka.consumer]\n{sasl}"), 1)
        .replacen("[redis]\n", &format!("[kafka.producer]\n{sasl}\n[redis]\n"), 1);
    let work = Workdir::new("secrets-kafka", &text);
    let env = HostEnv::new(&format!("127.0.0.1:{port}"), "", &counters.0, "secrets-kafka")
        .set("KAFKA_PASSWORD", KAFKA_PASSWORD)
        .set("SLUICE_PLUGIN_DIR", &work.plugin_dir());
    let host = Host::start_with(&env, &work.pipeline());

    // A positive sign that the client tried the broker with its settings.
    host.wait_log(&format!("127.0.0.1:{port}"), Duration::from_secs(60));
    let mut answers = String::new();
    for path in ["/api/pipeline", "/api/stats", "/api/report", "/ready", "/metrics"] {
        let (code, body) = host.get(path).unwrap_or_else(|| panic!("{path}: no answer"));
        answers.push_str(&format!("{path} {code}: {body}\n"));
    }
    assert!(answers.contains("/ready 503"), "not ready without a broker:\n{answers}");
    assert!(!answers.contains(KAFKA_PASSWORD), "an answer holds the password:\n{answers}");
    assert!(!host.log_text().contains(KAFKA_PASSWORD), "a log line holds the password:\n{}", host.log_text());
}
