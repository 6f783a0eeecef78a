//! The generated data: a deterministic mix of the three order shapes (and,
//! on request, invalid records) for a seed, and the lookup tables those
//! orders refer to.

use serde_json::{Value, json};

/// Lookup tables as `{table: {id: {field: value}}}`, the layout of lookups.json.
pub use crate::lookup::Tables;

const FIRST: [&str; 10] = ["Ana", "Marc", "Zoé", "Lena", "Omar", "Ivan", "Sofia", "Jonas", "Mei", "Tariq"];
const LAST: [&str; 8] = ["Dupont", "Peeters", "Костина", "Janssens", "Haddad", "Novak", "Rossi", "Kim"];
const CITIES: [&str; 4] = ["Brussels", "Ghent", "Moscow", "Antwerp"];
/// Grocery store names: their ids in the store table are the slugs.
const GROCERY_STORES: [(&str, &str, &str); 4] = [
    ("Brussels", "brussels", "Brussels"),
    ("Ghent", "ghent", "Ghent"),
    ("Liège Centre", "liège-centre", "Liège"),
    ("Antwerp Noord", "antwerp-noord", "Antwerp"),
];
/// Web-shop products: id, name, price.
const PRODUCTS: [(&str, &str, &str); 8] = [
    ("WHEY001", "Whey Protein 1kg", "39.9"),
    ("CREA002", "Creatine Monohydrate 300g", "19.5"),
    ("BAR003", "Protein Bar Chocolate", "2.25"),
    ("SHAKER04", "Shaker Bottle", "7.99"),
    ("CASEIN05", "Casein Night 900g", "34"),
    ("COFFEE06", "Cold Brew Coffee", "3.1"),
    ("BAND07", "Resistance Band", "12.49"),
    ("OATS08", "Oat Flakes 1kg", "2.8"),
];
/// Grocery and restaurant items: name, price in cents, delivery category.
const ITEMS: [(&str, i64, Option<&str>); 12] = [
    ("Banana", 150, None),
    ("Bread", 235, None),
    ("Water", 99, Some("Drinks")),
    ("Whey Protein Vanilla", 2990, None),
    ("Apple juice", 180, None),
    ("Croissant", 120, Some("Bakery")),
    ("Tomato soup", 450, Some("Супы")),
    ("Pizza Margherita", 550, Some("Пицца")),
    ("Cheese", 375, None),
    ("Orange", 60, None),
    ("Борщ суп", 641, None),
    ("Lemonade", 210, Some("")),
];
const USERS: usize = 40;
const RESTAURANTS: usize = 6;

/// The lookup tables the generated orders refer to.
pub fn tables() -> Tables {
    let mut tables = Tables::new();
    let row = |pairs: &[(&str, String)]| pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let users = tables.entry("user".into()).or_default();
    for i in 0..USERS {
        let name = format!("{} {}", FIRST[i % FIRST.len()], LAST[i % LAST.len()]);
        users.insert(user_id(i), row(&[("name", name), ("login", format!("user{i:02}"))]));
    }
    let stores = tables.entry("store".into()).or_default();
    for i in 0..RESTAURANTS {
        let city = CITIES[i % CITIES.len()].to_string();
        stores.insert(restaurant_id(i), row(&[("name", format!("Restaurant {i}")), ("city", city)]));
    }
    for (name, id, city) in GROCERY_STORES {
        stores.insert(id.into(), row(&[("name", format!("Delhaize {name}")), ("city", city.into())]));
    }
    let products = tables.entry("product".into()).or_default();
    for (id, name, price) in PRODUCTS {
        products.insert(id.into(), row(&[("name", name.into()), ("price", price.into())]));
    }
    tables
}

fn user_id(i: usize) -> String {
    format!("{:024x}", 0xd3275d9d_u64 * (i as u64 + 1))
}

fn restaurant_id(i: usize) -> String {
    format!("{:024x}", 0xaf69ef12_u64 * (i as u64 + 7))
}

/// SplitMix64: small, fast, and the same sequence on every platform and
/// version, so a seed always means the same records.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// One generated record: its key and value.
pub struct Generated {
    /// The record key (the order id, when there is one).
    pub key: Option<String>,
    /// The record value.
    pub value: String,
}

/// The `n`-th record for `seed`.
pub fn record(rng: &mut Rng, seed: u64, n: u64, invalid_ratio: f64) -> Generated {
    if rng.chance(invalid_ratio) {
        return invalid(rng, n);
    }
    let day = 1 + rng.below(28);
    let (hour, minute, second) = (rng.below(24), rng.below(60), rng.below(60));
    let (key, value) = match rng.below(10) {
        0..=3 => {
            let id = format!("w-{seed}-{n}");
            let (product, _, _) = PRODUCTS[rng.below(PRODUCTS.len())];
            let ts = match rng.below(3) {
                0 => format!("2025-03-{day:02}T{hour:02}:{minute:02}:{second:02}Z"),
                1 => format!("2025-03-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}", rng.below(1000)),
                _ => format!("2025-03-{day:02}T{hour:02}:{minute:02}:{second:02}+01:00"),
            };
            let value = json!({"order_id": id, "product_id": product, "quantity": 1 + rng.below(5), "timestamp": ts});
            (id, value)
        }
        4..=6 => {
            let id = format!("g-{seed}-{n}");
            let (store, _, _) = GROCERY_STORES[rng.below(GROCERY_STORES.len())];
            let products: Vec<Value> = (0..1 + rng.below(4))
                .map(|_| {
                    let i = rng.below(ITEMS.len());
                    let mut p = json!({"id": format!("P-{}", 100 + i), "name": ITEMS[i].0, "price": money(ITEMS[i].1)});
                    if rng.chance(0.2) {
                        p["quantity"] = json!(2 + rng.below(3));
                    }
                    p
                })
                .collect();
            let value = json!({"id": id, "store": store, "date": format!("2025-03-{day:02}"), "products": products});
            (id, value)
        }
        _ => {
            let object_id = seed % 1000 * 100_000_000 + n;
            let items: Vec<Value> = (0..1 + rng.below(3))
                .map(|_| {
                    let i = rng.below(ITEMS.len());
                    let (name, cents, category) = ITEMS[i];
                    let mut item = json!({"id": format!("{:024x}", 0x97a91f3d_u64 + i as u64), "name": name, "price": money(cents), "quantity": 1 + rng.below(4)});
                    if let Some(category) = category {
                        item["category"] = json!(category);
                    }
                    item
                })
                .collect();
            let status = if rng.chance(0.05) { "CANCELLED" } else { "CLOSED" };
            let value = json!({
                "object_id": object_id,
                "object_type": "order",
                "sent_dttm": format!("2025-03-{day:02}T{hour:02}:{minute:02}:{second:02}+00:00"),
                "payload": {
                    "restaurant": {"id": restaurant_id(rng.below(RESTAURANTS))},
                    "date": format!("2025-03-{day:02}T{hour:02}:{minute:02}:{second:02}.{:06}+00:00", rng.below(1_000_000)),
                    "user": {"id": user_id(rng.below(USERS))},
                    "order_items": items,
                    "final_status": status,
                }
            });
            (object_id.to_string(), value)
        }
    };
    Generated { key: Some(key), value: value.to_string() }
}

/// A price in cents as a JSON number with its exact decimal text.
fn money(cents: i64) -> Value {
    if cents % 100 == 0 { json!(cents / 100) } else { json!(cents as f64 / 100.0) }
}

fn invalid(rng: &mut Rng, n: u64) -> Generated {
    let id = format!("bad-{n}");
    let value = match rng.below(7) {
        0 => "not json at all".to_string(),
        1 => json!({"hello": "world", "n": n}).to_string(),
        2 => json!({"order_id": id, "product_id": "WHEY001", "quantity": 0, "timestamp": "2025-03-01T10:15:00Z"}).to_string(),
        3 => json!({"order_id": id, "product_id": "NOPE999", "quantity": 1, "timestamp": "2025-03-01T10:15:00Z"}).to_string(),
        4 => json!({"id": id, "store": "Brussels", "date": "2025-03-01", "products": []}).to_string(),
        5 => json!({"id": id, "store": "Brussels", "date": "2025-03-01", "products": [{"id": "P-1", "name": "Banana", "price": -1}]}).to_string(),
        _ => json!({"order_id": id, "product_id": "WHEY001", "quantity": 2}).to_string(),
    };
    Generated { key: Some(id), value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_records() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..50).map(|n| record(&mut rng, seed, n, 0.1).value).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn money_is_exact_decimal_text() {
        assert_eq!(money(235).to_string(), "2.35");
        assert_eq!(money(99).to_string(), "0.99");
        assert_eq!(money(1500).to_string(), "15");
        assert_eq!(money(641).to_string(), "6.41");
    }

    #[test]
    fn every_referenced_row_exists() {
        let t = tables();
        for (_, id, _) in GROCERY_STORES {
            assert!(t["store"].contains_key(id));
        }
        assert_eq!(t["user"].len(), USERS);
        assert_eq!(t["product"].len(), PRODUCTS.len());
    }
}
