//! Plumbing shared by the stages that read and write canonical orders.

use crate::{Order, OrderView, Rejection, reason};
use sluice_sdk::{Error, values};

impl sluice_sdk::Value for Order {
    const NAME: &'static str = "sluice.order";
}

impl sluice_sdk::View for Order {
    type Of<'a> = OrderView<'a>;
}

/// What a stage between `normalize` and the end of the chain reads and
/// writes: canonical orders.
pub fn declared() -> sluice_sdk::Declared {
    sluice_sdk::Declared::any().reads::<Order>().writes::<Order>()
}

/// Parses a canonical order emitted by an earlier stage, in the encoding
/// the host chose (JSON, or the binary form the stage before wrote).
pub fn parse(stage: &str, value: &[u8]) -> Result<Order, Rejection> {
    values::decode::<Order>(value).map_err(|e| not_an_order(stage, e))
}

/// [`parse`], as a view whose text borrows from `value`.
pub fn parse_view<'a>(stage: &str, value: &'a [u8]) -> Result<OrderView<'a>, Rejection> {
    values::decode_view::<Order>(value).map_err(|e| not_an_order(stage, e))
}

fn not_an_order(stage: &str, e: Error) -> Rejection {
    let code = if e.reason() == reason::INVALID_JSON { reason::INVALID_JSON } else { reason::INVALID_VALUE };
    Rejection::new(
        code,
        format!("{stage} expects a canonical order from an earlier stage (is `normalize` first?): {}", e.message()),
    )
}

/// Serializes an order for the next stage, in the encoding the host chose.
pub fn encode<S: serde::Serialize>(order: &Order<S>) -> Vec<u8> {
    values::encode_output(order).expect("an order always serializes")
}
