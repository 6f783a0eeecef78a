//! The common case without a JSON tree: a valid order of one of the three
//! shapes, read into structs that borrow from the record, and mapped.
//!
//! Anything this path does not take as it is (a missing or null field, a
//! value of another type, a bad quantity, price or timestamp, a duplicate
//! key) returns `None`, and [`normalize`](crate::logic::normalize) maps the
//! record through the JSON tree instead, which names what is wrong. So this
//! path only has to agree with the tree on valid orders: the property test
//! `the_fast_path_agrees_with_the_tree` checks that on mutated orders.

use crate::logic::{Normalized, delivery_order, grocery_order, priced_line, webshop_order};
use crate::ts::to_utc_rfc3339;
use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_order::{Item, Order, decimal_to_cents};
use std::borrow::Cow;

/// A field as its raw JSON text: absent (the default), or present, which
/// includes `null` (the tree tells a null field from a missing one).
#[derive(Default, Clone, Copy)]
struct Field<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(deserializer).map(|raw| Field(Some(raw)))
    }
}

impl<'a> Field<'a> {
    fn present(self) -> bool {
        self.0.is_some()
    }

    /// The value, unless absent or `null`.
    fn value(self) -> Option<&'a RawValue> {
        self.0.filter(|raw| raw.get() != "null")
    }
}

/// The fields of all three shapes.
#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow, default)]
    order_id: Field<'a>,
    #[serde(borrow, default)]
    product_id: Field<'a>,
    #[serde(borrow, default)]
    quantity: Field<'a>,
    #[serde(borrow, default)]
    timestamp: Field<'a>,
    #[serde(borrow, default)]
    id: Field<'a>,
    #[serde(borrow, default)]
    products: Field<'a>,
    #[serde(borrow, default)]
    store: Field<'a>,
    #[serde(borrow, default)]
    date: Field<'a>,
    #[serde(borrow, default)]
    object_id: Field<'a>,
    #[serde(borrow, default)]
    payload: Field<'a>,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, default)]
    final_status: Field<'a>,
    #[serde(borrow, default)]
    date: Field<'a>,
    #[serde(borrow, default)]
    user: Field<'a>,
    #[serde(borrow, default)]
    restaurant: Field<'a>,
    #[serde(borrow, default)]
    order_items: Field<'a>,
}

#[derive(Deserialize)]
struct WithId<'a> {
    #[serde(borrow, default)]
    id: Field<'a>,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default)]
    id: Field<'a>,
    #[serde(borrow, default)]
    name: Field<'a>,
    #[serde(borrow, default)]
    price: Field<'a>,
    #[serde(borrow, default)]
    quantity: Field<'a>,
    #[serde(borrow, default)]
    category: Field<'a>,
}

/// `text` as the struct `T`, only if it is a JSON object (serde would also
/// read a struct from an array, by position).
fn object<'a, T: Deserialize<'a>>(text: &'a str) -> Option<T> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// The record as an order, or `None` to leave it to the JSON tree.
pub fn normalize(value: &[u8]) -> Option<Normalized> {
    let top: Top = object(std::str::from_utf8(value).ok()?)?;
    // The same order of precedence as the tree's.
    if top.order_id.present() && top.product_id.present() {
        webshop(&top).map(Normalized::Order)
    } else if top.id.present() && top.products.present() {
        grocery(&top).map(Normalized::Order)
    } else if top.object_id.present() && top.payload.present() {
        delivery(&top)
    } else {
        None
    }
}

fn webshop(top: &Top) -> Option<Order> {
    Some(webshop_order(
        id(top.order_id.value()?)?,
        timestamp(top.timestamp.value()?)?,
        id(top.product_id.value()?)?,
        quantity(top.quantity.value()?)?,
    ))
}

fn grocery(top: &Top) -> Option<Order> {
    let order_id = id(top.id.value()?)?;
    let ts = timestamp(top.date.value()?)?;
    let store_name = string(top.store.value()?)?;
    let items = lines(top.products.value()?, |line| {
        let quantity = match line.quantity.value() {
            None => 1,
            Some(q) => quantity(q)?,
        };
        self::line(line, quantity, None)
    })?;
    Some(grocery_order(order_id, ts, &store_name, items))
}

fn delivery(top: &Top) -> Option<Normalized> {
    let order_id = id(top.object_id.value()?)?;
    let payload: Payload = object(top.payload.value()?.get())?;
    if payload.final_status.value().and_then(string).as_deref() == Some("CANCELLED") {
        return Some(Normalized::Filtered);
    }
    let ts = timestamp(payload.date.value()?)?;
    let user: WithId = object(payload.user.value()?.get())?;
    let restaurant: WithId = object(payload.restaurant.value()?.get())?;
    let (user_id, store_id) = (id(user.id.value()?)?, id(restaurant.id.value()?)?);
    let items = lines(payload.order_items.value()?, |line| {
        let quantity = quantity(line.quantity.value()?)?;
        let category = line.category.value().and_then(string).filter(|c| !c.is_empty()).map(Cow::into_owned);
        self::line(line, quantity, category)
    })?;
    Some(Normalized::Order(delivery_order(order_id, ts, user_id, store_id, items)))
}

/// A non-empty array of objects, mapped line by line.
fn lines(raw: &RawValue, mut each: impl FnMut(&Line) -> Option<Item>) -> Option<Vec<Item>> {
    let lines: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
    if lines.is_empty() {
        return None;
    }
    lines.iter().map(|raw| each(&object(raw.get())?)).collect()
}

fn line(line: &Line, quantity: i64, category: Option<String>) -> Option<Item> {
    let (id, name) = (id(line.id.value()?)?, string(line.name.value()?)?.into_owned());
    Some(priced_line(id, name, category, price(line.price.value()?)?, quantity))
}

/// A JSON string's text; `None` for anything else.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(text) {
        Ok(borrowed) => Some(Cow::Borrowed(borrowed)),
        // Escapes: the text must be copied to be unescaped.
        Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// A JSON number's text as written.
fn number(raw: &RawValue) -> Option<&str> {
    let text = raw.get();
    text.starts_with(|c: char| c == '-' || c.is_ascii_digit()).then_some(text)
}

/// An id: a string, or a number taken as its text.
fn id(raw: &RawValue) -> Option<String> {
    match string(raw) {
        Some(text) => Some(text.into_owned()),
        None => number(raw).map(str::to_string),
    }
}

fn timestamp(raw: &RawValue) -> Option<String> {
    to_utc_rfc3339(&string(raw)?).ok()
}

/// A positive integer quantity.
fn quantity(raw: &RawValue) -> Option<i64> {
    number(raw)?.parse::<i64>().ok().filter(|q| *q > 0)
}

/// A price in cents from a number or a decimal string, exactly.
fn price(raw: &RawValue) -> Option<i64> {
    let cents = match string(raw) {
        Some(text) => decimal_to_cents(&text),
        None => decimal_to_cents(number(raw)?),
    };
    cents.ok().filter(|c| *c >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::tree;
    use serde_json::{Value, json};

    fn examples() -> Vec<Value> {
        let text = [
            r#"{"order_id":"a","product_id":"WHEY001","quantity":3,"timestamp":"2025-03-01T10:16:30.250000"}"#,
            r#"{"order_id":17,"product_id":"W\u00e9","quantity":1,"timestamp":"2025-03-01 10:16:30+02:00","extra":[1,{"a":null}]}"#,
            r#"{"id":"9","store":"Liège Centre","date":"2020-01-01","products":[{"id":"P","name":"Banana","price":1.5},{"id":7,"name":"x\"y","price":"0.99","quantity":2}]}"#,
            r#"{"object_id":7608298,"payload":{"restaurant":{"id":"r"},"date":"2025-02-22T08:56:14.049848+00:00","user":{"id":"u"},"order_items":[{"name":"суп","price":641,"category":"Супы","id":"p","quantity":5},{"name":"b","price":1.10,"category":"","id":"q","quantity":1}],"final_status":"CLOSED"}}"#,
            r#"{"object_id":"1","payload":{"final_status":"CANCELLED"}}"#,
        ];
        text.iter().map(|t| serde_json::from_str(t).unwrap()).collect()
    }

    /// xorshift64*: deterministic, and enough to pick mutations.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        }
    }

    /// Every object and array in `value`, as paths of keys and indices.
    fn containers(value: &Value, path: Vec<Value>, out: &mut Vec<Vec<Value>>) {
        match value {
            Value::Object(map) => {
                out.push(path.clone());
                for (k, v) in map {
                    let mut p = path.clone();
                    p.push(json!(k));
                    containers(v, p, out);
                }
            }
            Value::Array(items) => {
                out.push(path.clone());
                for (i, v) in items.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(json!(i));
                    containers(v, p, out);
                }
            }
            _ => {}
        }
    }

    fn at<'a>(value: &'a mut Value, path: &[Value]) -> &'a mut Value {
        path.iter().fold(value, |v, step| match step {
            Value::String(k) => &mut v[k.as_str()],
            n => &mut v[n.as_u64().unwrap() as usize],
        })
    }

    fn mutate(rng: &mut Rng, mut value: Value, other: &Value) -> String {
        // The keys of two shapes in one object: which shape wins.
        if rng.below(4) == 0
            && let (Value::Object(map), Value::Object(more)) = (&mut value, other)
        {
            for (k, v) in more {
                map.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let replacements = [
            json!(null),
            json!("x"),
            json!(""),
            json!(0),
            json!(-1),
            json!(2.5),
            json!(true),
            json!([]),
            json!({}),
            json!("2020-13-01"),
            json!("-3"),
            json!("CANCELLED"),
            serde_json::from_str("1e2").unwrap(),
            serde_json::from_str("3.0").unwrap(),
            serde_json::from_str("99999999999999999999").unwrap(),
        ];
        for _ in 0..1 + rng.below(3) {
            let mut paths = Vec::new();
            containers(&value, Vec::new(), &mut paths);
            let path = &paths[rng.below(paths.len())];
            let target = at(&mut value, path);
            match target {
                Value::Object(map) if !map.is_empty() => {
                    let key = map.keys().nth(rng.below(map.len())).unwrap().clone();
                    match rng.below(3) {
                        0 => {
                            map.remove(&key);
                        }
                        _ => {
                            map.insert(key, replacements[rng.below(replacements.len())].clone());
                        }
                    }
                }
                Value::Array(items) if !items.is_empty() => match rng.below(3) {
                    0 => {
                        items.remove(rng.below(items.len()));
                    }
                    _ => {
                        let i = rng.below(items.len());
                        items[i] = replacements[rng.below(replacements.len())].clone();
                    }
                },
                _ => {}
            }
        }
        let text = value.to_string();
        match rng.below(8) {
            // A key given twice, or the object as an array of its values.
            0 => text.replacen('{', r#"{"order_id":"dup","id":"dup","#, 1),
            1 => match value {
                Value::Object(map) => Value::Array(map.into_iter().map(|(_, v)| v).collect()).to_string(),
                other => other.to_string(),
            },
            _ => text,
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_tree() {
        let examples = examples();
        for example in &examples {
            let text = example.to_string();
            assert!(normalize(text.as_bytes()).is_some(), "a valid order takes the fast path: {text}");
        }
        let mut rng = Rng(20261205);
        let (mut fast, mut fallback) = (0, 0);
        for _ in 0..20_000 {
            let example = examples[rng.below(examples.len())].clone();
            let other = &examples[rng.below(examples.len())];
            let text = mutate(&mut rng, example, other);
            match normalize(text.as_bytes()) {
                Some(normalized) => {
                    fast += 1;
                    assert_eq!(Ok(normalized), tree(text.as_bytes()), "{text}");
                }
                None => fallback += 1,
            }
        }
        assert!(fast > 1000 && fallback > 1000, "both paths taken: {fast} fast, {fallback} through the tree");
    }
}
