//! Plumbing shared by the stages that read and write canonical orders.

use crate::{Order, Rejection, reason};

/// Parses a canonical order emitted by an earlier stage.
pub fn parse(stage: &str, value: &[u8]) -> Result<Order, Rejection> {
    serde_json::from_slice(value).map_err(|e| {
        Rejection::new(
            reason::INVALID_JSON,
            format!("{stage} expects a canonical order from an earlier stage (is `normalize` first?): {e}"),
        )
    })
}

/// Serializes an order for the next stage.
pub fn to_json(order: &Order) -> Vec<u8> {
    serde_json::to_vec(order).expect("an order always serializes")
}
