//! The sandbox holds: a purpose-built guest (plugins/testguest) loops,
//! allocates, panics, recurses and reaches for files, sockets and the
//! environment; each failure costs only the records of that call, with its
//! reason, and the host serves the next records.

mod support;

use sluice::config::{self, Pipeline};
use sluice::engine::Engine;
use sluice::lookup::Offline;
use sluice::pipeline::{BatchResult, Chain};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::command_records;

fn guest_chain(on_failure: &str) -> Chain {
    guest_chain_with(on_failure, "timeout_ms = 200")
}

fn guest_chain_with(on_failure: &str, limits: &str) -> Chain {
    let text = format!(
        r#"
        kafka = {{ brokers = "unused:9092", group = "g" }}
        redis = {{ url = "redis://unused" }}
        source = {{ topics = ["in"] }}
        output = {{ topic = "out" }}
        dead_letter = {{ topic = "dlq" }}
        routes.vip = {{ topic = "vip" }}
        [[stages]]
        name = "guest"
        plugin = "plugins/dist/testguest.wasm"
        on_failure = "{on_failure}"
        limits = {{ memory_mib = 16, max_retries = 2, {limits} }}
        "#
    );
    let config = config::load_str(&text, |_| None).unwrap();
    let pipeline = Pipeline { config, base_dir: support::repo_root() };
    Chain::build(&Engine::new().unwrap(), &pipeline, Arc::new(Offline), sluice::state::StateStore::in_memory()).unwrap()
}

fn reasons(result: &BatchResult) -> Vec<(String, String)> {
    result
        .dead_letters
        .iter()
        .map(|d| {
            let offset = d.record.headers.iter().find(|h| h.name == "sluice.source.offset").unwrap();
            (String::from_utf8_lossy(&offset.value).into_owned(), d.reason.as_str().to_string())
        })
        .collect()
}

fn values(result: &BatchResult) -> Vec<String> {
    result.outputs.iter().map(|o| String::from_utf8_lossy(&o.value).into_owned()).collect()
}

#[test]
fn a_loop_is_interrupted_within_twice_its_deadline() {
    // A one-second deadline keeps scheduling noise on a busy machine small
    // next to the margin.
    let mut chain = guest_chain_with("dead-letter", "timeout_ms = 1000");
    let started = Instant::now();
    let result = chain.process(&command_records(&["loop"])).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(reasons(&result), [("0".to_string(), "plugin_timeout".to_string())]);
    assert!(elapsed >= Duration::from_millis(1000), "not before its deadline: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(2000), "interrupted after {elapsed:?}, deadline 1000 ms");
    assert_eq!(values(&chain.process(&command_records(&["ok"])).unwrap()), ["ok"], "the next record is served");
}

#[test]
fn each_failure_costs_only_its_own_record() {
    let mut chain = guest_chain("dead-letter");
    let result = chain
        .process(&command_records(&["ok", "alloc 64", "ok", "panic", "recurse", "alloc 2", "loop", "ok"]))
        .unwrap();
    let want = [("1", "plugin_oom"), ("3", "plugin_trap"), ("4", "plugin_trap"), ("6", "plugin_timeout")];
    let want: Vec<(String, String)> = want.iter().map(|(o, r)| (o.to_string(), r.to_string())).collect();
    assert_eq!(reasons(&result), want);
    assert_eq!(values(&result), ["ok", "ok", "allocated 2097152", "ok"]);
    let message = |offset: &str| {
        let d = result.dead_letters.iter().find(|d| {
            d.record.headers.iter().any(|h| h.name == "sluice.source.offset" && h.value == offset.as_bytes())
        });
        let h = d.unwrap().record.headers.iter().find(|h| h.name == "sluice.error.message").unwrap();
        String::from_utf8_lossy(&h.value).into_owned()
    };
    // The trap, then what the plugin wrote to stderr before it: the panic.
    let panic = message("3");
    assert!(panic.starts_with("wasm trap: wasm `unreachable` instruction executed; the plugin wrote: "), "{panic}");
    assert!(
        panic.contains("panicked at plugins/testguest/src/lib.rs") && panic.contains("| asked to panic"),
        "{panic}"
    );
    // Rust's stack lives in linear memory, so its overflow is an access below it.
    let overflow = message("4");
    assert!(
        overflow == "wasm trap: call stack exhausted" || overflow == "wasm trap: out of bounds memory access",
        "{overflow}"
    );
    assert_eq!(message("6"), "the call did not finish within its deadline of 200 ms");
    assert!(message("1").contains("memory"), "{}", message("1"));
}

#[test]
fn capabilities_are_denied() {
    let mut chain = guest_chain("dead-letter");
    let result = chain.process(&command_records(&["open-file", "connect", "getenv"])).unwrap();
    for value in values(&result) {
        assert!(value.starts_with("denied"), "{value}");
    }
    assert_eq!(result.outputs.len(), 3);
}

#[test]
fn decisions_retry_reject_filter_and_route() {
    let mut chain = guest_chain("dead-letter");
    let started = Instant::now();
    let result =
        chain.process(&command_records(&["retry", "reject", "drop", "route vip", "route nowhere", "ok"])).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150), "retries back off (50 + 100 ms)");
    let want = [("0", "asked_to_retry"), ("1", "asked_to_reject"), ("4", "unknown_route")];
    let want: Vec<(String, String)> = want.iter().map(|(o, r)| (o.to_string(), r.to_string())).collect();
    assert_eq!(reasons(&result), want);
    assert_eq!(result.filtered, 1);
    let topics: Vec<&str> = result.outputs.iter().map(|o| &*o.topic).collect();
    assert_eq!(topics, ["vip", "out"]);
}

#[test]
fn a_stage_that_keeps_failing_opens_its_circuit_breaker() {
    let mut chain = guest_chain("dead-letter");
    let result = chain.process(&command_records(&["panic"; 8])).unwrap();
    let got: Vec<String> = reasons(&result).into_iter().map(|(_, r)| r).collect();
    // The batch call and the first four record-by-record calls fail: five in a row.
    assert_eq!(got[..4], ["plugin_trap"; 4], "each failed call dead-letters its record");
    assert_eq!(got[4..], ["circuit_open"; 4], "then records are dead-lettered without a call");
    let result = chain.process(&command_records(&["ok"])).unwrap();
    assert_eq!(reasons(&result)[0].1, "circuit_open", "still open");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(values(&chain.process(&command_records(&["ok"])).unwrap()), ["ok"], "a trial call after 1 s closes it");

    let mut halting = guest_chain("halt");
    let error = halting.process(&command_records(&["panic"; 5])).unwrap_err();
    assert!(error.to_string().contains("circuit breaker is open"), "{error}");
    let error = halting.process(&command_records(&["ok"])).unwrap_err();
    assert!(
        error.to_string().contains("circuit breaker is open"),
        "the batch waits, nothing is dead-lettered: {error}"
    );
}

#[test]
fn the_wasm_stack_is_limited_per_stage() {
    let mut roomy = guest_chain("dead-letter");
    assert_eq!(values(&roomy.process(&command_records(&["depth 4000"])).unwrap()), ["depth 4000"]);
    let mut tight = guest_chain_with("dead-letter", "timeout_ms = 200, stack_kib = 16");
    let result = tight.process(&command_records(&["depth 4000", "depth 10"])).unwrap();
    assert_eq!(reasons(&result), [("0".to_string(), "plugin_trap".to_string())]);
    assert_eq!(values(&result), ["depth 10"]);
}

#[test]
fn a_reason_code_must_be_short_snake_case_outside_the_hosts_own() {
    let mut chain = guest_chain("dead-letter");
    let long = format!("reason {}", "x".repeat(49));
    let commands =
        ["reason out_of_stock", "reason Bad Reason", "reason a\"}\nfake_metric 1", &long, "reason plugin_timeout", ""];
    let result = chain.process(&command_records(&commands)).unwrap();
    let want = ["out_of_stock", "plugin_contract", "plugin_contract", "plugin_contract", "plugin_contract"];
    let got: Vec<String> = reasons(&result).into_iter().map(|(_, r)| r).collect();
    assert_eq!(got[..5], want);
    let message = |i: usize| {
        let headers = &result.dead_letters[i].record.headers;
        String::from_utf8_lossy(&headers.iter().find(|h| h.name == "sluice.error.message").unwrap().value).into_owned()
    };
    assert!(message(2).contains("reason code \"a\\\"}\\nfake_metric 1\" is not snake_case"), "{}", message(2));
    assert!(message(2).ends_with("the plugin's message: rejected with the reason code the record names"));
}
