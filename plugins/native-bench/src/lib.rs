//! The default pipeline's four stages compiled natively, from the same
//! crates as the plugins (their `logic` modules), behind the same interface
//! as the WebAssembly stages: a batch of messages in, one outcome per message
//! out, in the encodings the host chose for the components (JSON or the
//! order's binary form between stages). `sluice-native-bench` runs both to
//! measure what the sandbox costs; the `sluice` binary does not link them.

use categorize::logic::Categorizer;
use normalize::logic::Normalized;
use sluice::bindings::{Effect, ErrorInfo, Header, Message, Outcome, Output};
use sluice::config::PipelineConfig;
use sluice::lookup::LookupSource;
use sluice::pipeline::values::{Encoding, Encodings};
use sluice::tools::bench::Transform;
use sluice_order::{OrderView, Rejection, stage};
use std::sync::Arc;

fn emit(message: &Message, key: Option<Vec<u8>>, value: Vec<u8>, effects: Vec<Effect>) -> Outcome {
    let headers = message.headers.iter().map(|h| Header { name: h.name.clone(), value: h.value.clone() }).collect();
    Outcome::Emit((vec![Output { route: None, key, value, headers }], effects))
}

fn reject(r: Rejection) -> Outcome {
    Outcome::Reject(ErrorInfo { reason: r.reason.to_string(), message: r.message })
}

/// Makes the SDK read and write values in `encodings`, as the host tells a
/// component at `init` (the SDK keeps them per thread, and the stages here
/// share one).
fn use_encodings(encodings: Encodings) {
    let side = |e: Encoding| match e {
        Encoding::Json => sluice_sdk::Encoding::Json,
        Encoding::Binary => sluice_sdk::Encoding::Binary,
    };
    sluice_sdk::values::set_encodings(sluice_sdk::Encodings {
        input: side(encodings.input),
        output: side(encodings.output),
    });
}

/// Applies `step` to each message's order and re-serializes it, as the
/// plugins do.
fn each<'b>(
    batch: &'b [Message],
    stage: &str,
    encodings: Encodings,
    mut step: impl FnMut(&mut OrderView<'b>) -> Result<Vec<Effect>, Rejection>,
) -> Vec<Outcome> {
    use_encodings(encodings);
    batch
        .iter()
        .map(|m| {
            let done = stage::parse_view(stage, &m.value)
                .and_then(|mut order| step(&mut order).map(|effects| (order, effects)));
            match done {
                Ok((order, effects)) => {
                    emit(m, Some(order.order_id.as_bytes().to_vec()), stage::encode(&order), effects)
                }
                Err(r) => reject(r),
            }
        })
        .collect()
}

/// `normalize`, natively.
pub struct Normalize(pub Encodings);

impl Transform for Normalize {
    fn name(&self) -> &str {
        "normalize"
    }

    fn process(&mut self, batch: &[Message]) -> Vec<Outcome> {
        use_encodings(self.0);
        batch
            .iter()
            .map(|m| match normalize::logic::normalize(&m.value) {
                Ok(Normalized::Order(order)) => {
                    let value = stage::encode(&order);
                    emit(m, Some(order.order_id.into_bytes()), value, Vec::new())
                }
                Ok(Normalized::Filtered) => Outcome::Filtered,
                Err(r) => reject(r),
            })
            .collect()
    }
}

/// `enrich`, natively, with the same lookups as the WebAssembly stage.
pub struct Enrich(pub Arc<dyn LookupSource>, pub Encodings);

impl Transform for Enrich {
    fn name(&self) -> &str {
        "enrich"
    }

    fn process(&mut self, batch: &[Message]) -> Vec<Outcome> {
        let lookups = self.0.clone();
        each(batch, "enrich", self.1, |order| {
            let mut lookup = |table: &str, key: &str| lookups.lookup(table, key).ok().flatten();
            enrich::logic::enrich(order, &mut lookup).map(|()| Vec::new())
        })
    }
}

/// `categorize`, natively.
pub struct Categorize(pub Categorizer, pub Encodings);

impl Transform for Categorize {
    fn name(&self) -> &str {
        "categorize"
    }

    fn process(&mut self, batch: &[Message]) -> Vec<Outcome> {
        let encodings = self.1;
        each(batch, "categorize", encodings, |order| {
            self.0.categorize(order);
            Ok(Vec::new())
        })
    }
}

/// `totals`, natively.
pub struct Totals(pub totals::logic::Keys, pub Encodings);

impl Transform for Totals {
    fn name(&self) -> &str {
        "totals"
    }

    fn process(&mut self, batch: &[Message]) -> Vec<Outcome> {
        let encodings = self.1;
        each(batch, "totals", encodings, |order| {
            let incrs = totals::logic::total(order, &self.0)?;
            Ok(incrs.iter().map(|(key, field, delta)| Effect::HashIncr((key.into(), field.into(), delta))).collect())
        })
    }
}

/// The native stages for the pipeline's stages, in its order, with the
/// components' encodings; fails for a stage that is not one of the default
/// four.
pub fn stages(
    config: &PipelineConfig,
    encodings: &[Encodings],
    lookups: Arc<dyn LookupSource>,
) -> anyhow::Result<Vec<Box<dyn Transform>>> {
    config
        .stages
        .iter()
        .zip(encodings)
        .map(|(s, &encodings)| -> anyhow::Result<Box<dyn Transform>> {
            let json = serde_json::to_string(&s.config)?;
            Ok(match s.name.get_ref().as_str() {
                "normalize" => Box::new(Normalize(encodings)),
                "enrich" => Box::new(Enrich(lookups.clone(), encodings)),
                "categorize" => {
                    Box::new(Categorize(Categorizer::from_json(&json).map_err(anyhow::Error::msg)?, encodings))
                }
                "totals" => {
                    let prefix = s.config.get("prefix").and_then(|p| p.as_str()).unwrap_or_default();
                    Box::new(Totals(totals::logic::Keys::new(prefix), encodings))
                }
                other => anyhow::bail!("no native implementation of stage `{other}`"),
            })
        })
        .collect()
}
