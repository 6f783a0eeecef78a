//! An independent model of the default pipeline for the test inputs (the
//! shared examples and `sluice gen` output): what each record must become,
//! and the Redis counters the whole input must produce. It shares no code
//! with the plugins.

use serde_json::Value;
use std::collections::BTreeMap;

/// Lookup tables as {table: {id: {field: value}}}.
pub type Tables = BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>;

/// What one input record must become.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Order(Summary),
    Dead(&'static str),
    Filtered,
}

/// The parts of an order the counters depend on.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub order_id: String,
    pub day: String,
    pub user: Option<String>,
    pub store: Option<String>,
    /// (product id, category, unit cents, quantity)
    pub items: Vec<(String, String, i64, i64)>,
}

const RULES: [(&str, &[&str]); 5] = [
    ("Drinks", &["water", "juice", "soda", "coffee", "lemonade"]),
    ("Protein", &["whey", "protein", "casein", "creatine"]),
    ("Fruit", &["banana", "apple", "orange", "berry"]),
    ("Bakery", &["bread", "croissant", "bagel", "baguette"]),
    ("Soups", &["soup", "суп"]),
];

fn category(own: Option<&str>, name: &str) -> String {
    if let Some(c) = own.filter(|c| !c.is_empty()) {
        return c.to_string();
    }
    let name = name.to_lowercase();
    RULES.iter().find(|(_, ks)| ks.iter().any(|k| name.contains(k))).map_or("Other", |(c, _)| c).to_string()
}

fn cents(v: &Value) -> i64 {
    (v.as_f64().unwrap() * 100.0).round() as i64
}

fn id(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// The UTC day of the timestamps the test inputs use.
fn day(ts: &str) -> String {
    let date = &ts[..10];
    let late_offset = ts.len() > 19 && ts.ends_with("+01:00") && &ts[11..13] == "00";
    if !late_offset {
        return date.to_string();
    }
    let (y, m, d): (i32, u32, u32) =
        (date[..4].parse().unwrap(), date[5..7].parse().unwrap(), date[8..10].parse().unwrap());
    let (m, d) =
        if d > 1 { (m, d - 1) } else { (m - 1, [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m as usize - 2]) };
    format!("{y:04}-{m:02}-{d:02}")
}

/// What `value` must become.
pub fn expect(value: &str, tables: &Tables) -> Expect {
    let Ok(json) = serde_json::from_str::<Value>(value) else {
        return Expect::Dead("invalid_json");
    };
    let Some(o) = json.as_object() else {
        return Expect::Dead(if json.is_null() { "invalid_json" } else { "unknown_shape" });
    };
    if o.contains_key("order_id") && o.contains_key("product_id") {
        let Some(ts) = o.get("timestamp").and_then(Value::as_str) else {
            return Expect::Dead("missing_field");
        };
        let quantity = o["quantity"].as_i64().unwrap_or(0);
        if quantity <= 0 {
            return Expect::Dead("invalid_quantity");
        }
        let product = id(&o["product_id"]);
        let Some(row) = tables["product"].get(&product) else {
            return Expect::Dead("unknown_product");
        };
        let unit = (row["price"].parse::<f64>().unwrap() * 100.0).round() as i64;
        let items = vec![(product, category(None, &row["name"]), unit, quantity)];
        Expect::Order(Summary { order_id: id(&o["order_id"]), day: day(ts), user: None, store: None, items })
    } else if o.contains_key("id") && o.contains_key("products") {
        let products = o["products"].as_array().unwrap();
        if products.is_empty() {
            return Expect::Dead("no_items");
        }
        if products.iter().any(|p| p["price"].as_f64().unwrap() < 0.0) {
            return Expect::Dead("invalid_price");
        }
        let items = products
            .iter()
            .map(|p| {
                let q = p.get("quantity").and_then(Value::as_i64).unwrap_or(1);
                (id(&p["id"]), category(None, p["name"].as_str().unwrap()), cents(&p["price"]), q)
            })
            .collect();
        let store: String = o["store"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .collect::<Vec<_>>()
            .join("-");
        let day = o["date"].as_str().unwrap()[..10].to_string();
        Expect::Order(Summary { order_id: id(&o["id"]), day, user: None, store: Some(store), items })
    } else if o.contains_key("object_id") && o.contains_key("payload") {
        let p = &o["payload"];
        if p["final_status"] == "CANCELLED" {
            return Expect::Filtered;
        }
        let items = p["order_items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let c = category(i.get("category").and_then(Value::as_str), i["name"].as_str().unwrap());
                (id(&i["id"]), c, cents(&i["price"]), i["quantity"].as_i64().unwrap())
            })
            .collect();
        Expect::Order(Summary {
            order_id: id(&o["object_id"]),
            day: p["date"].as_str().unwrap()[..10].to_string(),
            user: Some(id(&p["user"]["id"])),
            store: Some(id(&p["restaurant"]["id"])),
            items,
        })
    } else {
        Expect::Dead("unknown_shape")
    }
}

/// The counters of a set of valid orders, as {key: {field: value}} without
/// the prefix.
pub fn counters<'a>(orders: impl IntoIterator<Item = &'a Summary>) -> BTreeMap<String, BTreeMap<String, i64>> {
    let mut c: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut add =
        |key: String, field: &str, n: i64| *c.entry(key).or_default().entry(field.to_string()).or_default() += n;
    for o in orders {
        let total: i64 = o.items.iter().map(|(_, _, unit, q)| unit * q).sum();
        let count: i64 = o.items.iter().map(|(_, _, _, q)| q).sum();
        add("totals".into(), "orders", 1);
        add("totals".into(), "items", count);
        add("totals".into(), "revenue_cents", total);
        add("revenue:day".into(), &o.day, total);
        if let Some(store) = &o.store {
            add("revenue:store".into(), store, total);
        }
        if let Some(user) = &o.user {
            add("orders:user".into(), user, 1);
            add("spend:user".into(), user, total);
        }
        for (product, category, unit, q) in &o.items {
            add("revenue:category".into(), category, unit * q);
            add("units:product".into(), product, *q);
            if let Some(user) = &o.user {
                add(format!("units:user:{user}"), category, *q);
            }
        }
    }
    c
}
