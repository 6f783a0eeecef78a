//! User, store and product details from the lookup tables.

use sluice_order::{Order, Rejection, reason};

/// Lookup table names, as declared for this stage in pipeline.toml.
pub const USER: &str = "user";
/// The store (and restaurant) table.
pub const STORE: &str = "store";
/// The product table, which prices web-shop lines.
pub const PRODUCT: &str = "product";

fn field(row: &[(String, String)], name: &str) -> Option<String> {
    row.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// The rows [`enrich`] reads for `order`, as `row(table, key)`.
pub fn rows<S: AsRef<str>>(order: &Order<S>, row: &mut dyn FnMut(&str, &str)) {
    if let Some(user) = &order.user {
        row(USER, user.id.as_ref());
    }
    if let Some(store) = &order.store {
        row(STORE, store.id.as_ref());
    }
    for item in order.items.iter().filter(|item| item.unit_price_cents.is_none()) {
        row(PRODUCT, item.product_id.as_ref());
    }
}

/// Fills in the order from `lookup(table, key)`, which gives a row as
/// (field, value) pairs, `None` if absent. An unknown user or store is
/// not an error (its fields stay null); a web-shop line whose product is
/// unknown is `unknown_product`, and one without a usable price is
/// `invalid_price`.
pub fn enrich<S: AsRef<str> + From<String>, R: AsRef<[(String, String)]>>(
    order: &mut Order<S>,
    lookup: &mut dyn FnMut(&str, &str) -> Option<R>,
) -> Result<(), Rejection> {
    let field = |row: &R, name: &str| field(row.as_ref(), name).map(S::from);
    if let Some(user) = &mut order.user
        && let Some(row) = lookup(USER, user.id.as_ref())
    {
        user.name = field(&row, "name");
        user.login = field(&row, "login");
    }
    if let Some(store) = &mut order.store
        && let Some(row) = lookup(STORE, store.id.as_ref())
    {
        store.name = field(&row, "name");
        store.city = field(&row, "city");
    }
    for (i, item) in order.items.iter_mut().enumerate() {
        if item.unit_price_cents.is_some() {
            continue;
        }
        let product = item.product_id.as_ref();
        let Some(row) = lookup(PRODUCT, product) else {
            return Err(Rejection::new(
                reason::UNKNOWN_PRODUCT,
                format!("product `{product}` of items[{i}] is not in the product table"),
            ));
        };
        let price = self::field(row.as_ref(), "price").ok_or_else(|| {
            Rejection::new(reason::INVALID_PRICE, format!("product `{product}` has no price in the product table"))
        })?;
        let cents = sluice_order::decimal_to_cents(&price).map_err(|e| {
            Rejection::new(reason::INVALID_PRICE, format!("product `{product}` has an invalid price: {e}"))
        })?;
        if cents < 0 {
            return Err(Rejection::new(
                reason::INVALID_PRICE,
                format!("product `{product}` has a negative price {price}"),
            ));
        }
        item.unit_price_cents = Some(cents);
        item.name = field(&row, "name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_order::{Item, Store, User};
    use std::collections::HashMap;

    fn tables() -> HashMap<(&'static str, &'static str), Vec<(String, String)>> {
        let row = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HashMap::from([
            ((USER, "u1"), row(&[("name", "Ann"), ("login", "ann")])),
            ((STORE, "s1"), row(&[("name", "Shop")])),
            ((PRODUCT, "W"), row(&[("name", "Whey"), ("price", "39.9")])),
            ((PRODUCT, "FREE"), row(&[("name", "Free")])),
            ((PRODUCT, "NEG"), row(&[("price", "-2")])),
        ])
    }

    fn order(product: &str, user: &str, store: &str) -> Order {
        Order {
            order_id: "o".into(),
            source: "x".into(),
            ts: "2025-01-01T00:00:00Z".into(),
            user: Some(User { id: user.into(), name: None, login: None }),
            store: Some(Store { id: store.into(), name: None, city: None }),
            items: vec![Item {
                product_id: product.into(),
                name: None,
                category: None,
                unit_price_cents: None,
                quantity: 2,
                line_total_cents: 0,
            }],
            item_count: 0,
            total_cents: 0,
        }
    }

    fn run(mut o: Order) -> Result<Order, Rejection> {
        let t = tables();
        let mut lookup =
            |table: &str, key: &str| t.iter().find(|((tb, k), _)| *tb == table && *k == key).map(|(_, r)| r.clone());
        enrich(&mut o, &mut lookup).map(|()| o)
    }

    #[test]
    fn fills_known_rows_and_leaves_unknown_null() {
        let o = run(order("W", "u1", "s1")).unwrap();
        assert_eq!(o.user.unwrap(), User { id: "u1".into(), name: Some("Ann".into()), login: Some("ann".into()) });
        assert_eq!(o.store.unwrap(), Store { id: "s1".into(), name: Some("Shop".into()), city: None });
        assert_eq!((o.items[0].name.as_deref(), o.items[0].unit_price_cents), (Some("Whey"), Some(3990)));
        let o = run(order("W", "nobody", "nowhere")).unwrap();
        assert_eq!(o.user.unwrap().name, None);
        assert_eq!(o.store.unwrap().city, None);
    }

    #[test]
    fn rows_names_exactly_the_rows_enrich_reads() {
        let mut o = order("W", "u1", "s1");
        o.items.push(Item { unit_price_cents: Some(100), product_id: "PRICED".into(), ..o.items[0].clone() });
        o.items.push(Item { product_id: "FREE".into(), ..o.items[0].clone() });
        let mut named = Vec::new();
        rows(&o, &mut |table, key| named.push((table.to_string(), key.to_string())));
        let t = tables();
        let mut read = Vec::new();
        let mut lookup = |table: &str, key: &str| {
            read.push((table.to_string(), key.to_string()));
            t.iter().find(|((tb, k), _)| *tb == table && *k == key).map(|(_, r)| r.clone())
        };
        let _ = enrich(&mut o, &mut lookup);
        assert_eq!(named, read);
        assert_eq!(named.len(), 4, "user, store, and the two unpriced lines: {named:?}");
    }

    #[test]
    fn product_errors() {
        assert_eq!(run(order("NOPE", "u1", "s1")).unwrap_err().reason, "unknown_product");
        assert_eq!(run(order("FREE", "u1", "s1")).unwrap_err().reason, "invalid_price");
        assert_eq!(run(order("NEG", "u1", "s1")).unwrap_err().reason, "invalid_price");
    }
}
