//! The canonical order that flows between the stages of the default pipeline,
//! and the rules its stages share: dead-letter reasons and exact money.
//!
//! Field order is the order of the published contract (shared data README):
//! serializing an [`Order`] after the `totals` stage gives the canonical
//! enriched order byte for byte.
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};

pub mod stage;
mod text;

pub use text::Text;

/// A canonical order read without copying its text: each string borrows
/// from the record it was decoded from (see [`Text`]). It encodes exactly as
/// the [`Order`] it is a view of.
pub type OrderView<'a> = Order<Text<'a>>;

/// Dead-letter reason codes of the default pipeline.
pub mod reason {
    /// The value is empty, JSON `null`, or not JSON.
    pub const INVALID_JSON: &str = "invalid_json";
    /// A value in binary form that does not decode (the stages before
    /// disagree about the order's layout).
    pub const INVALID_VALUE: &str = "invalid_value";
    /// A JSON value that is not an object of one of the three order shapes.
    pub const UNKNOWN_SHAPE: &str = "unknown_shape";
    /// A field the mapping reads is absent or null.
    pub const MISSING_FIELD: &str = "missing_field";
    /// A quantity that is not a positive integer.
    pub const INVALID_QUANTITY: &str = "invalid_quantity";
    /// A price that is missing, negative or not an exact amount of cents.
    pub const INVALID_PRICE: &str = "invalid_price";
    /// A timestamp that is present but not a date or date-time.
    pub const INVALID_TIMESTAMP: &str = "invalid_timestamp";
    /// An order without items.
    pub const NO_ITEMS: &str = "no_items";
    /// A web-shop order for a product the product table does not have.
    pub const UNKNOWN_PRODUCT: &str = "unknown_product";
}

/// Why a record cannot become an order: a reason code and a message that
/// names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One of the codes in [`reason`].
    pub reason: &'static str,
    /// What is wrong, and where.
    pub message: String,
}

impl Rejection {
    /// A rejection with `reason` and `message`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

/// The canonical order, its text as `S`: owned `String`s, or [`Text`]
/// borrowed from a record ([`OrderView`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order<S = String> {
    /// The source's order id, as a string.
    pub order_id: S,
    /// `webshop`, `grocery` or `delivery`.
    pub source: S,
    /// RFC 3339 in UTC with a `Z`.
    pub ts: S,
    /// The customer (delivery orders only).
    pub user: Option<User<S>>,
    /// The store or restaurant (none for web-shop orders).
    pub store: Option<Store<S>>,
    /// The order lines.
    pub items: Vec<Item<S>>,
    /// Sum of the quantities (set by `totals`).
    pub item_count: i64,
    /// Sum of the line totals, in cents (set by `totals`).
    pub total_cents: i64,
}

impl<S: AsRef<str>> Order<S> {
    /// The `YYYY-MM-DD` day of [`Order::ts`].
    pub fn day(&self) -> &str {
        let ts = self.ts.as_ref();
        ts.get(..10).unwrap_or(ts)
    }
}

/// A customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User<S = String> {
    /// The user id.
    pub id: S,
    /// From the `user` lookup table; null if absent.
    pub name: Option<S>,
    /// From the `user` lookup table; null if absent.
    pub login: Option<S>,
}

/// A store or restaurant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store<S = String> {
    /// The store id.
    pub id: S,
    /// From the `store` lookup table; null if absent.
    pub name: Option<S>,
    /// From the `store` lookup table; null if absent.
    pub city: Option<S>,
}

/// An order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item<S = String> {
    /// The product id.
    pub product_id: S,
    /// The product name (web-shop lines get it from the product table).
    pub name: Option<S>,
    /// Set by `categorize`.
    pub category: Option<S>,
    /// Price of one unit in cents; web-shop lines get it from `enrich`.
    pub unit_price_cents: Option<i64>,
    /// Units ordered, at least 1.
    pub quantity: i64,
    /// `unit_price_cents * quantity` (set by `totals`).
    pub line_total_cents: i64,
}

/// Converts a decimal amount (`"29.9"`, `"641"`, `"0.99"`, `"1.5e1"`) to
/// integer cents exactly. Errors name what is wrong; they never round.
pub fn decimal_to_cents(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a decimal number");
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (rest, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // digits * 10^(exponent - frac_len) * 100 cents
    let scale = exponent + 2 - frac_part.len() as i32;
    let too_large = || format!("`{text}` is too large an amount");
    let mut cents: i64 = 0;
    for digit in int_part.bytes().chain(frac_part.bytes()) {
        cents = cents.checked_mul(10).and_then(|c| c.checked_add(i64::from(digit - b'0'))).ok_or_else(too_large)?;
    }
    if scale >= 0 {
        for _ in 0..scale {
            cents = cents.checked_mul(10).ok_or_else(too_large)?;
        }
    } else {
        for _ in 0..-scale {
            if cents % 10 != 0 {
                return Err(format!("`{text}` is not a whole number of cents"));
            }
            cents /= 10;
        }
    }
    Ok(if negative { -cents } else { cents })
}

impl From<Rejection> for sluice_sdk::Error {
    fn from(r: Rejection) -> Self {
        sluice_sdk::Error::reject(r.reason, r.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_are_exact() {
        for (text, cents) in [
            ("29.9", 2990),
            ("641", 64100),
            ("0.99", 99),
            ("1.50", 150),
            ("2.250000", 225),
            ("0", 0),
            ("1e2", 10000),
            ("1.5E1", 1500),
            ("0.1e1", 100),
            ("-1", -100),
            ("39.90", 3990),
        ] {
            assert_eq!(decimal_to_cents(text), Ok(cents), "{text}");
        }
    }

    #[test]
    fn cents_refuse_to_round() {
        assert_eq!(decimal_to_cents("0.999").unwrap_err(), "`0.999` is not a whole number of cents");
        assert_eq!(decimal_to_cents("abc").unwrap_err(), "`abc` is not a decimal number");
        assert_eq!(decimal_to_cents("").unwrap_err(), "`` is not a decimal number");
        assert_eq!(decimal_to_cents(".").unwrap_err(), "`.` is not a decimal number");
        assert!(decimal_to_cents("99999999999999999999").unwrap_err().contains("too large"));
        assert!(decimal_to_cents("1e30").unwrap_err().contains("too large"));
    }

    #[test]
    fn order_field_order_is_the_contract() {
        let order: Order = Order {
            order_id: "1".into(),
            source: "webshop".into(),
            ts: "2025-03-01T10:15:00Z".into(),
            user: None,
            store: None,
            items: vec![Item {
                product_id: "P".into(),
                name: Some("n".into()),
                category: Some("c".into()),
                unit_price_cents: Some(1),
                quantity: 2,
                line_total_cents: 2,
            }],
            item_count: 2,
            total_cents: 2,
        };
        assert_eq!(
            serde_json::to_string(&order).unwrap(),
            r#"{"order_id":"1","source":"webshop","ts":"2025-03-01T10:15:00Z","user":null,"store":null,"items":[{"product_id":"P","name":"n","category":"c","unit_price_cents":1,"quantity":2,"line_total_cents":2}],"item_count":2,"total_cents":2}"#
        );
        assert_eq!(order.day(), "2025-03-01");
    }
}
