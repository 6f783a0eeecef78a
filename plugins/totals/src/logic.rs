//! Order totals and the Redis counters of the default pipeline.

use sluice_order::{Order, Rejection, reason};

/// The counter increments of an order (HINCRBY key field delta), their
/// keys and fields written one after the other into one buffer: an order's
/// dozen increments cost two allocations, not two each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Increments {
    text: String,
    /// Where each key starts, where its field starts and ends, and the
    /// delta.
    list: Vec<(usize, usize, usize, i64)>,
}

impl Increments {
    fn with_capacity(count: usize) -> Self {
        Self { text: String::with_capacity(count * 32), list: Vec::with_capacity(count) }
    }

    fn add(&mut self, key: &[&str], field: &str, delta: i64) {
        let start = self.text.len();
        key.iter().for_each(|part| self.text.push_str(part));
        let field_start = self.text.len();
        self.text.push_str(field);
        self.list.push((start, field_start, self.text.len(), delta));
    }

    /// The increments in order, as (hash key with its prefix, field, delta).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, i64)> + '_ {
        self.list.iter().map(|&(key, field, end, delta)| (&self.text[key..field], &self.text[field..end], delta))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Sets every line total, the item count and the order total, and returns
/// the counter increments the order causes. Overflowing sums are rejected.
/// The counters' hash keys, made once from the prefix: an order's
/// increments then copy them instead of formatting them again.
#[derive(Debug, Clone)]
pub struct Keys {
    totals: String,
    revenue_day: String,
    revenue_store: String,
    orders_user: String,
    spend_user: String,
    revenue_category: String,
    units_product: String,
    /// Followed by the user id.
    units_user: String,
}

impl Keys {
    /// The keys under `prefix`, e.g. `sluice:`.
    pub fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{prefix}{name}");
        Self {
            totals: key("totals"),
            revenue_day: key("revenue:day"),
            revenue_store: key("revenue:store"),
            orders_user: key("orders:user"),
            spend_user: key("spend:user"),
            revenue_category: key("revenue:category"),
            units_product: key("units:product"),
            units_user: key("units:user:"),
        }
    }
}

pub fn total<S: AsRef<str>>(order: &mut Order<S>, keys: &Keys) -> Result<Increments, Rejection> {
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

    let mut incrs = Increments::with_capacity(6 + 3 * order.items.len());
    incrs.add(&[&keys.totals], "orders", 1);
    incrs.add(&[&keys.totals], "items", count);
    incrs.add(&[&keys.totals], "revenue_cents", total);
    incrs.add(&[&keys.revenue_day], order.day(), total);
    if let Some(store) = &order.store {
        incrs.add(&[&keys.revenue_store], store.id.as_ref(), total);
    }
    let user = order.user.as_ref().map(|user| user.id.as_ref());
    if let Some(user) = user {
        incrs.add(&[&keys.orders_user], user, 1);
        incrs.add(&[&keys.spend_user], user, total);
    }
    for item in &order.items {
        let category = item.category.as_ref().map_or("Other", AsRef::as_ref);
        incrs.add(&[&keys.revenue_category], category, item.line_total_cents);
        incrs.add(&[&keys.units_product], item.product_id.as_ref(), item.quantity);
        if let Some(user) = user {
            incrs.add(&[&keys.units_user, user], category, item.quantity);
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
        let incrs = total(&mut order, &Keys::new("p:")).unwrap();
        assert_eq!((order.item_count, order.total_cents), (10, 405000));
        assert_eq!(order.items[0].line_total_cents, 320500);
        let got: Vec<(String, String, i64)> = incrs.iter().map(|(k, f, d)| (k.to_string(), f.to_string(), d)).collect();
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
        let incrs = total(&mut order, &Keys::new("")).unwrap();
        assert!(incrs.iter().all(|(key, _, _)| !key.contains("user") && !key.contains("store")));
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
        assert_eq!(total(&mut order, &Keys::new("")).unwrap_err().reason, "invalid_price");
    }
}
