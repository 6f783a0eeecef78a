//! Any of the three order shapes to one canonical [`Order`].

use crate::ts::to_utc_rfc3339;
use serde_json::{Map, Value};
use sluice_order::{Item, Order, Rejection, Store, User, decimal_to_cents, reason};
use std::fmt;

/// What became of one record.
#[derive(Debug, PartialEq, Eq)]
// Returned by value once per record and matched at once: boxing the order
// would only add an allocation per record.
#[allow(clippy::large_enum_variant)]
pub enum Normalized {
    /// A canonical order, not yet enriched, categorized or totalled.
    Order(Order),
    /// A cancelled delivery order: dropped on purpose.
    Filtered,
}

type Obj = Map<String, Value>;

/// Maps one record value to a canonical order, or says why it cannot.
pub fn normalize(value: &[u8]) -> Result<Normalized, Rejection> {
    match crate::fast::normalize(value) {
        Some(normalized) => Ok(normalized),
        None => tree(value),
    }
}

/// [`normalize`] through a JSON tree: slower than the fast path, but it
/// names what is wrong with a record that is not a valid order.
pub fn tree(value: &[u8]) -> Result<Normalized, Rejection> {
    if value.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(reason::INVALID_JSON, "the record value is empty"));
    }
    let json: Value = serde_json::from_slice(value)
        .map_err(|e| Rejection::new(reason::INVALID_JSON, format!("the record value is not JSON: {e}")))?;
    let obj = match json {
        Value::Object(obj) => obj,
        Value::Null => {
            return Err(Rejection::new(reason::INVALID_JSON, "the record value is JSON null"));
        }
        other => {
            let kind = kind_of(&other);
            return Err(Rejection::new(reason::UNKNOWN_SHAPE, format!("expected a JSON object, got {kind}")));
        }
    };
    if obj.contains_key("order_id") && obj.contains_key("product_id") {
        webshop(&obj).map(Normalized::Order)
    } else if obj.contains_key("id") && obj.contains_key("products") {
        grocery(&obj).map(Normalized::Order)
    } else if obj.contains_key("object_id") && obj.contains_key("payload") {
        delivery(&obj)
    } else {
        let keys: Vec<&str> = obj.keys().map(String::as_str).take(8).collect();
        Err(Rejection::new(
            reason::UNKNOWN_SHAPE,
            format!(
                "an object with keys [{}] is none of webshop (order_id, product_id), grocery (id, products) or delivery (object_id, payload)",
                keys.join(", ")
            ),
        ))
    }
}

/// Where a field is in the record: written out only when an error message
/// names it, so a valid record costs no path strings.
#[derive(Clone, Copy)]
enum Path<'a> {
    /// The record's top level.
    Root,
    /// The field `key` of the object at the first path.
    Key(&'a Path<'a>, &'a str),
    /// The element at `index` of the array at the first path.
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(Path::Root, key) => f.write_str(key),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

const ROOT: Path<'static> = Path::Root;

/// A web-shop order: one line, priced later by `enrich`.
pub(crate) fn webshop_order(order_id: String, ts: String, product_id: String, quantity: i64) -> Order {
    let line = Item { product_id, name: None, category: None, unit_price_cents: None, quantity, line_total_cents: 0 };
    order(order_id, "webshop", ts, None, None, vec![line])
}

/// A grocery order of the store called `store_name`.
pub(crate) fn grocery_order(order_id: String, ts: String, store_name: &str, items: Vec<Item>) -> Order {
    let store = Store { id: slug(store_name), name: None, city: None };
    order(order_id, "grocery", ts, None, Some(store), items)
}

/// A delivery order of a user from a restaurant.
pub(crate) fn delivery_order(order_id: String, ts: String, user: String, store: String, items: Vec<Item>) -> Order {
    let user = User { id: user, name: None, login: None };
    let store = Store { id: store, name: None, city: None };
    order(order_id, "delivery", ts, Some(user), Some(store), items)
}

fn order(id: String, source: &str, ts: String, user: Option<User>, store: Option<Store>, items: Vec<Item>) -> Order {
    let source = source.to_string();
    Order { order_id: id, source, ts, user, store, items, item_count: 0, total_cents: 0 }
}

/// An order line with a name and a price.
pub(crate) fn priced_line(id: String, name: String, category: Option<String>, cents: i64, quantity: i64) -> Item {
    let price = Some(cents);
    Item { product_id: id, name: Some(name), category, unit_price_cents: price, quantity, line_total_cents: 0 }
}

fn webshop(obj: &Obj) -> Result<Order, Rejection> {
    Ok(webshop_order(
        id(obj, "order_id", &ROOT)?,
        timestamp(obj, "timestamp", &ROOT)?,
        id(obj, "product_id", &ROOT)?,
        quantity(required(obj, "quantity", &ROOT)?, &Path::Key(&ROOT, "quantity"))?,
    ))
}

fn grocery(obj: &Obj) -> Result<Order, Rejection> {
    let order_id = id(obj, "id", &ROOT)?;
    let ts = timestamp(obj, "date", &ROOT)?;
    let store_name = string(obj, "store", &ROOT)?;
    let items = lines(obj, "products", &ROOT, |product, at| {
        let quantity = match product.get("quantity") {
            None | Some(Value::Null) => 1,
            Some(q) => quantity(q, &Path::Key(at, "quantity"))?,
        };
        line(product, at, quantity, None)
    })?;
    Ok(grocery_order(order_id, ts, &store_name, items))
}

fn delivery(obj: &Obj) -> Result<Normalized, Rejection> {
    let order_id = id(obj, "object_id", &ROOT)?;
    let payload = object(obj, "payload", &ROOT)?;
    if payload.get("final_status").and_then(Value::as_str) == Some("CANCELLED") {
        return Ok(Normalized::Filtered);
    }
    let at = Path::Key(&ROOT, "payload");
    let ts = timestamp(payload, "date", &at)?;
    let user_id = id(object(payload, "user", &at)?, "id", &Path::Key(&at, "user"))?;
    let store_id = id(object(payload, "restaurant", &at)?, "id", &Path::Key(&at, "restaurant"))?;
    let items = lines(payload, "order_items", &at, |item, at| {
        let quantity = quantity(required(item, "quantity", at)?, &Path::Key(at, "quantity"))?;
        let category = item.get("category").and_then(Value::as_str).filter(|c| !c.is_empty());
        line(item, at, quantity, category.map(str::to_string))
    })?;
    Ok(Normalized::Order(delivery_order(order_id, ts, user_id, store_id, items)))
}

/// The array `key` of `obj` mapped line by line; an empty array is `no_items`.
fn lines(
    obj: &Obj,
    key: &str,
    at: &Path,
    mut each: impl FnMut(&Obj, &Path) -> Result<Item, Rejection>,
) -> Result<Vec<Item>, Rejection> {
    let path = Path::Key(at, key);
    let Value::Array(values) = required(obj, key, at)? else {
        return Err(Rejection::new(reason::MISSING_FIELD, format!("`{path}` must be an array")));
    };
    if values.is_empty() {
        return Err(Rejection::new(reason::NO_ITEMS, format!("`{path}` is empty")));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let item = Path::Index(&path, i);
            let obj = v.as_object().ok_or_else(|| {
                Rejection::new(reason::MISSING_FIELD, format!("`{item}` must be an object, got {}", kind_of(v)))
            })?;
            each(obj, &item)
        })
        .collect()
}

fn line(obj: &Obj, at: &Path, quantity: i64, category: Option<String>) -> Result<Item, Rejection> {
    let (id, name) = (id(obj, "id", at)?, string(obj, "name", at)?);
    Ok(priced_line(id, name, category, price(obj.get("price"), &Path::Key(at, "price"))?, quantity))
}

fn required<'a>(obj: &'a Obj, key: &str, at: &Path) -> Result<&'a Value, Rejection> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(Rejection::new(
            reason::MISSING_FIELD,
            format!("`{}` is {}", Path::Key(at, key), if obj.contains_key(key) { "null" } else { "missing" }),
        )),
        Some(v) => Ok(v),
    }
}

fn object<'a>(obj: &'a Obj, key: &str, at: &Path) -> Result<&'a Obj, Rejection> {
    let v = required(obj, key, at)?;
    v.as_object().ok_or_else(|| {
        Rejection::new(reason::MISSING_FIELD, format!("`{}` must be an object, got {}", Path::Key(at, key), kind_of(v)))
    })
}

fn string(obj: &Obj, key: &str, at: &Path) -> Result<String, Rejection> {
    match required(obj, key, at)? {
        Value::String(s) => Ok(s.clone()),
        v => Err(Rejection::new(
            reason::MISSING_FIELD,
            format!("`{}` must be a string, got {}", Path::Key(at, key), kind_of(v)),
        )),
    }
}

/// An id: a string, or a number taken as its decimal text.
fn id(obj: &Obj, key: &str, at: &Path) -> Result<String, Rejection> {
    match required(obj, key, at)? {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        v => Err(Rejection::new(
            reason::MISSING_FIELD,
            format!("`{}` must be a string or a number, got {}", Path::Key(at, key), kind_of(v)),
        )),
    }
}

fn timestamp(obj: &Obj, key: &str, at: &Path) -> Result<String, Rejection> {
    to_utc_rfc3339(&string(obj, key, at)?)
        .map_err(|e| Rejection::new(reason::INVALID_TIMESTAMP, format!("`{}`: {e}", Path::Key(at, key))))
}

fn quantity(v: &Value, path: &Path) -> Result<i64, Rejection> {
    match v.as_i64() {
        Some(q) if q > 0 => Ok(q),
        _ => Err(Rejection::new(reason::INVALID_QUANTITY, format!("`{path}` is {v}: expected a positive integer"))),
    }
}

/// A price in cents from a JSON number (or decimal string), exactly.
fn price(v: Option<&Value>, path: &Path) -> Result<i64, Rejection> {
    let invalid = |why: String| Rejection::new(reason::INVALID_PRICE, format!("`{path}` {why}"));
    let text = match v {
        None => return Err(invalid("is missing".into())),
        Some(Value::Null) => return Err(invalid("is null".into())),
        // With `arbitrary_precision`, the number's text as it was written.
        Some(Value::Number(n)) => n.as_str(),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(invalid(format!("must be a number, got {}", kind_of(other)))),
    };
    match decimal_to_cents(text) {
        Ok(c) if c < 0 => Err(invalid(format!("is {text}: a price cannot be negative"))),
        Ok(c) => Ok(c),
        Err(e) => Err(invalid(format!("is invalid: {e}"))),
    }
}

/// A grocery store name as a store id: lower case, each run of characters
/// that are not letters or digits replaced by `-`.
pub fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_gap = false;
    for c in name.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
            in_gap = false;
        } else if !in_gap {
            out.push('-');
            in_gap = true;
        }
    }
    out
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(json: &str) -> Order {
        match normalize(json.as_bytes()) {
            Ok(Normalized::Order(o)) => o,
            other => panic!("{json}: {other:?}"),
        }
    }

    fn rejected(json: &str) -> (&'static str, String) {
        match normalize(json.as_bytes()) {
            Err(r) => (r.reason, r.message),
            other => panic!("{json}: {other:?}"),
        }
    }

    #[test]
    fn webshop_order() {
        let o =
            order(r#"{"order_id":"a","product_id":"WHEY001","quantity":3,"timestamp":"2025-03-01T10:16:30.250000"}"#);
        assert_eq!(
            (o.source.as_str(), o.ts.as_str(), o.user, o.store),
            ("webshop", "2025-03-01T10:16:30.25Z", None, None)
        );
        assert_eq!(o.items.len(), 1);
        assert_eq!(
            (o.items[0].product_id.as_str(), o.items[0].quantity, o.items[0].unit_price_cents),
            ("WHEY001", 3, None)
        );
    }

    #[test]
    fn grocery_order() {
        let o = order(
            r#"{"id":"9","store":"Liège Centre","date":"2020-01-01","products":[{"id":"P","name":"Banana","price":1.5},{"id":7,"name":"x","price":"0.99","quantity":2}]}"#,
        );
        assert_eq!(o.store.unwrap().id, "liège-centre");
        assert_eq!(o.ts, "2020-01-01T00:00:00Z");
        assert_eq!((o.items[0].unit_price_cents, o.items[0].quantity), (Some(150), 1));
        assert_eq!(
            (o.items[1].product_id.as_str(), o.items[1].unit_price_cents, o.items[1].quantity),
            ("7", Some(99), 2)
        );
    }

    #[test]
    fn delivery_order_and_cancellation() {
        let o = order(
            r#"{"object_id":7608298,"payload":{"restaurant":{"id":"r"},"date":"2025-02-22T08:56:14.049848+00:00","user":{"id":"u"},"order_items":[{"name":"суп","price":641,"category":"Супы","id":"p","quantity":5},{"name":"b","price":1,"category":"","id":"q","quantity":1}],"final_status":"CLOSED"}}"#,
        );
        assert_eq!(o.order_id, "7608298");
        assert_eq!(o.items[0].category.as_deref(), Some("Супы"));
        assert_eq!(o.items[1].category, None, "an empty category is no category");
        assert_eq!(o.items[0].unit_price_cents, Some(64100));
        let cancelled = r#"{"object_id":1,"payload":{"final_status":"CANCELLED"}}"#;
        assert_eq!(normalize(cancelled.as_bytes()), Ok(Normalized::Filtered));
    }

    #[test]
    fn dead_letter_reasons() {
        assert_eq!(rejected("").0, "invalid_json");
        assert_eq!(rejected("null").1, "the record value is JSON null");
        assert_eq!(rejected("not json at all").0, "invalid_json");
        assert_eq!(rejected("[1]"), ("unknown_shape", "expected a JSON object, got an array".into()));
        assert_eq!(rejected(r#"{"hello":"world"}"#).0, "unknown_shape");
        assert_eq!(
            rejected(r#"{"order_id":"x1","product_id":"W","quantity":0,"timestamp":"2025-03-01T10:15:00Z"}"#),
            ("invalid_quantity", "`quantity` is 0: expected a positive integer".into())
        );
        assert_eq!(
            rejected(r#"{"order_id":"x","product_id":"W","quantity":1.5,"timestamp":"2025-03-01"}"#).0,
            "invalid_quantity"
        );
        assert_eq!(
            rejected(r#"{"order_id":"x","product_id":"W","quantity":1}"#),
            ("missing_field", "`timestamp` is missing".into())
        );
        assert_eq!(
            rejected(r#"{"order_id":null,"product_id":"W","quantity":1,"timestamp":"2025-03-01"}"#),
            ("missing_field", "`order_id` is null".into())
        );
        assert_eq!(
            rejected(r#"{"id":"x3","store":"B","date":"2020-01-01","products":[]}"#),
            ("no_items", "`products` is empty".into())
        );
        assert_eq!(
            rejected(
                r#"{"id":"x4","store":"B","date":"2020-01-01","products":[{"id":"P-1","name":"Banana","price":-1}]}"#
            ),
            ("invalid_price", "`products[0].price` is -1: a price cannot be negative".into())
        );
        assert_eq!(
            rejected(r#"{"id":"x","store":"B","date":"2020-01-01","products":[{"id":"P-1","name":"Banana"}]}"#),
            ("invalid_price", "`products[0].price` is missing".into())
        );
        assert_eq!(
            rejected(
                r#"{"object_id":1,"payload":{"restaurant":{"id":"r"},"date":"2025-02-22","user":{},"order_items":[]}}"#
            ),
            ("missing_field", "`payload.user.id` is missing".into())
        );
        assert_eq!(
            rejected(
                r#"{"object_id":1,"payload":{"restaurant":{"id":"r"},"date":"2025-02-22","user":{"id":"u"},"order_items":[{"id":"p","name":"n","price":1}]}}"#
            ),
            ("missing_field", "`payload.order_items[0].quantity` is missing".into())
        );
        assert_eq!(
            rejected(r#"{"order_id":"x","product_id":"W","quantity":1,"timestamp":"soon"}"#).0,
            "invalid_timestamp"
        );
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Brussels"), "brussels");
        assert_eq!(slug("Liège Centre"), "liège-centre");
        assert_eq!(slug("St. Pieters -- Gent"), "st-pieters-gent");
        assert_eq!(slug("ÉCOLE 42"), "école-42");
    }
}
