//! Order totals and the Redis counters of the default pipeline.

use sluice_order::{Order, Rejection, reason};

/// A counter increment: HINCRBY key field delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incr {
    /// The hash key, prefix included.
    pub key: String,
    /// The hash field.
    pub field: String,
    /// The amount to add.
    pub delta: i64,
}

/// Sets every line total, the item count and the order total, and returns
/// the counter increments the order causes. Overflowing sums are rejected.
pub fn total(order: &mut Order, prefix: &str) -> Result<Vec<Incr>, Rejection> {
    let overflow = |what: &str| Rejection::new(reason::INVALID_PRICE, format!("the order's {what} overflows"));
    let (mut count, mut total) = (0i64, 0i64);
    for (i, item) in order.items.iter_mut().enumerate() {
        let unit = item.unit_price_cents.ok_or_else(|| {
            Rejection::new(
                reason::INVALID_PRICE,
                format!("items[{i}] has no unit price (is `enrich` before `totals`?)"),
            )
        })?;
        item.line_total_cents = unit.checked_mul(item.quantity).ok_or_else(|| overflow("line total"))?;
        count = count.checked_add(item.quantity).ok_or_else(|| overflow("item count"))?;
        total = total.checked_add(item.line_total_cents).ok_or_else(|| overflow("total"))?;
    }
    order.item_count = count;
    order.total_cents = total;

    let mut incrs = Vec::with_capacity(6 + 3 * order.items.len());
    let mut add = |key: String, field: &str, delta: i64| incrs.push(Incr { key, field: field.to_string(), delta });
    let totals = format!("{prefix}totals");
    add(totals.clone(), "orders", 1);
    add(totals.clone(), "items", count);
    add(totals, "revenue_cents", total);
    add(format!("{prefix}revenue:day"), order.day(), total);
    if let Some(store) = &order.store {
        add(format!("{prefix}revenue:store"), &store.id, total);
    }
    if let Some(user) = &order.user {
        add(format!("{prefix}orders:user"), &user.id, 1);
        add(format!("{prefix}spend:user"), &user.id, total);
    }
    for item in &order.items {
        let category = item.category.as_deref().unwrap_or("Other");
        add(format!("{prefix}revenue:category"), category, item.line_total_cents);
        add(format!("{prefix}units:product"), &item.product_id, item.quantity);
        if let Some(user) = &order.user {
            add(format!("{prefix}units:user:{}", user.id), category, item.quantity);
        }
    }
    Ok(incrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_order::{Item, Store, User};

    fn item(id: &str, category: &str, unit: i64, quantity: i64) -> Item {
        Item {
            product_id: id.into(),
            name: None,
            category: Some(category.into()),
            unit_price_cents: Some(unit),
            quantity,
            line_total_cents: 0,
        }
    }

    #[test]
    fn totals_and_counters() {
        let mut order = Order {
            order_id: "1".into(),
            source: "delivery".into(),
            ts: "2025-02-22T08:56:14.049848Z".into(),
            user: Some(User { id: "u".into(), name: None, login: None }),
            store: Some(Store { id: "s".into(), name: None, city: None }),
            items: vec![item("a", "Супы", 64100, 5), item("b", "Супы", 16900, 5)],
            item_count: 0,
            total_cents: 0,
        };
        let incrs = total(&mut order, "p:").unwrap();
        assert_eq!((order.item_count, order.total_cents), (10, 405000));
        assert_eq!(order.items[0].line_total_cents, 320500);
        let got: Vec<(String, String, i64)> = incrs.into_iter().map(|i| (i.key, i.field, i.delta)).collect();
        let want = [
            ("p:totals", "orders", 1),
            ("p:totals", "items", 10),
            ("p:totals", "revenue_cents", 405000),
            ("p:revenue:day", "2025-02-22", 405000),
            ("p:revenue:store", "s", 405000),
            ("p:orders:user", "u", 1),
            ("p:spend:user", "u", 405000),
            ("p:revenue:category", "Супы", 320500),
            ("p:units:product", "a", 5),
            ("p:units:user:u", "Супы", 5),
            ("p:revenue:category", "Супы", 84500),
            ("p:units:product", "b", 5),
            ("p:units:user:u", "Супы", 5),
        ];
        let want: Vec<(String, String, i64)> =
            want.iter().map(|(k, f, d)| (k.to_string(), f.to_string(), *d)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn no_user_or_store_means_no_per_user_or_store_counters() {
        let mut order = Order {
            order_id: "1".into(),
            source: "webshop".into(),
            ts: "2025-03-01T10:15:00Z".into(),
            user: None,
            store: None,
            items: vec![item("W", "Protein", 3990, 1)],
            item_count: 0,
            total_cents: 0,
        };
        let incrs = total(&mut order, "").unwrap();
        assert!(incrs.iter().all(|i| !i.key.contains("user") && !i.key.contains("store")));
        assert_eq!(incrs.len(), 6);
    }

    #[test]
    fn overflow_is_rejected() {
        let mut order = Order {
            order_id: "1".into(),
            source: "webshop".into(),
            ts: "2025-03-01T10:15:00Z".into(),
            user: None,
            store: None,
            items: vec![item("W", "P", i64::MAX / 2, 3)],
            item_count: 0,
            total_cents: 0,
        };
        assert_eq!(total(&mut order, "").unwrap_err().reason, "invalid_price");
    }
}
