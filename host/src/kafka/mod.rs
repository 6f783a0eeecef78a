//! Kafka, and the only code that talks to it: the consumer-group source,
//! the producer sink, Kafka errors classified ([`Failure`]), the client
//! context that turns librdkafka's events into log lines, and for the tools
//! and HTTP ingest a plain [`Writer`], a [`Reader`] of a topic from its start,
//! a [`scan`] of a whole topic and `sluice peek`.

mod failure;
mod handover;
pub mod peek;
mod reader;
mod scan;
mod sink;
mod source;
mod writer;

pub use failure::Failure;
pub use handover::{Committing, HANDOVER_WAIT, Handover};
pub use reader::Reader;
pub use scan::{Start, scan, scan_from};
pub use sink::{Sent, Sink, Unacknowledged};
pub use source::{Commit, Source};
pub use writer::Writer;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;

/// Logs librdkafka events through `tracing`, with the client's role, and
/// keeps the consumer's assignment state in the metrics.
pub struct LogContext {
    role: &'static str,
    metrics: Option<Arc<Metrics>>,
    /// Called with the partitions revoked, during the rebalance, before
    /// they are released, and whether they are already lost.
    before_revoke: Option<BeforeRevokeHook>,
    /// Called with the partitions revoked, once they are released.
    on_revoke: Option<RevokeHook>,
    /// The partitions assigned, kept from the rebalances themselves: asking
    /// librdkafka for its assignment from a rebalance callback can block
    /// for good while the consumer closes.
    assignment: Mutex<BTreeSet<(String, i32)>>,
}

/// What the consumer does with the partitions revoked from it.
pub(crate) type RevokeHook = Box<dyn Fn(&[(String, i32)]) + Send + Sync>;

/// What the consumer does with partitions about to be revoked, told whether
/// they are already lost (this member was deemed gone from the group).
type BeforeRevokeHook = Box<dyn Fn(&[(String, i32)], bool) + Send + Sync>;

impl LogContext {
    fn new(role: &'static str, metrics: Option<Arc<Metrics>>) -> Self {
        Self { role, metrics, before_revoke: None, on_revoke: None, assignment: Mutex::default() }
    }

    /// Calls `hook` with the partitions revoked, during each rebalance.
    /// With the cooperative protocols only some partitions are revoked, and
    /// the others keep their position: only records of these may be
    /// dropped.
    fn on_revoke(mut self, hook: RevokeHook) -> Self {
        self.on_revoke = Some(hook);
        self
    }

    /// Calls `hook` with the partitions to be revoked, during each
    /// rebalance, before they are released: it may block (the group waits).
    fn before_revoke(mut self, hook: BeforeRevokeHook) -> Self {
        self.before_revoke = Some(hook);
        self
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let role = self.role;
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(role, facility, "kafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(role, facility, "kafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(role, facility, "kafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(role, facility, "kafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(role = self.role, %error, "kafka client error (librdkafka retries): {reason}");
        if let Some(m) = &self.metrics {
            m.record_error("kafka");
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(m) = &self.metrics else { return };
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.fetch_state == "active" && p.ls_offset >= 0 {
                    m.record_high_watermark(topic, *partition, p.ls_offset);
                }
            }
        }
    }
}

impl ConsumerContext for LogContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // A partition the source paused (its buffer was full) would stay
            // paused were it assigned again: it leaves unpaused.
            if let Err(e) = consumer.resume(tpl) {
                tracing::debug!(error = %e, "cannot resume the partitions revoked");
            }
        }
        if let (Rebalance::Revoke(tpl), Some(hook)) = (rebalance, &self.before_revoke) {
            let revoked: Vec<(String, i32)> =
                tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
            if !revoked.is_empty() {
                hook(&revoked, consumer.assignment_lost());
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Under the cooperative protocols a rebalance adds or removes some
        // partitions: what is left is the consumer's assignment.
        let assigned = {
            let mut assignment = self.assignment.lock().expect("assignment lock");
            match rebalance {
                Rebalance::Assign(tpl) => {
                    assignment.extend(tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())));
                }
                Rebalance::Revoke(tpl) => {
                    for e in tpl.elements() {
                        assignment.remove(&(e.topic().to_string(), e.partition()));
                    }
                }
                Rebalance::Error(_) => {}
            }
            !assignment.is_empty()
        };
        if let Some(m) = &self.metrics {
            m.rebalances.fetch_add(1, Ordering::Relaxed);
            m.assigned.store(assigned, Ordering::Relaxed);
        }
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions: Vec<String> =
                    tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
                tracing::info!(partitions = %partitions.join(","), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let revoked: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                let names: Vec<String> = revoked.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                tracing::info!(partitions = %names.join(","), "partitions revoked");
                if let Some(m) = &self.metrics {
                    m.forget_ends(&revoked);
                }
                if let Some(hook) = &self.on_revoke {
                    hook(&revoked);
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}
