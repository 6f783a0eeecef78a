//! The sales report: the Redis counters the default pipeline keeps, read
//! back as totals, rankings and per-day revenue, with names from the lookup
//! tables. Served as JSON by `GET /api/report` and printed as a table by
//! `sluice report`.

use crate::config::PipelineConfig;
use crate::redis::Hashes;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the counters and the names are.
#[derive(Debug, Clone)]
pub struct Counters {
    /// The Redis URL.
    pub url: String,
    /// Prefix of the counter hashes (`report.counters_prefix`).
    pub prefix: String,
    /// Key prefix of the `user`, `store` and `product` lookup tables, when
    /// declared, to show names next to ids.
    pub names: BTreeMap<String, String>,
}

impl Counters {
    /// The counters and tables of a pipeline.
    pub fn of(config: &PipelineConfig) -> Self {
        let names = config.lookups.iter().map(|(table, l)| (table.clone(), l.key_prefix.clone())).collect();
        Self { url: config.redis.url.clone(), prefix: config.report.counters_prefix.clone(), names }
    }
}

/// One line of a ranking.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// The id (category, store id, product id, user id or day).
    pub key: String,
    /// Its name from the lookup table, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Revenue in cents, or units for products, or spend for customers.
    pub value: i64,
    /// Orders, for customers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orders: Option<i64>,
}

/// The sales report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SalesReport {
    /// Prefix of the counters it was read from.
    pub prefix: String,
    /// Orders counted.
    pub orders: i64,
    /// Items counted.
    pub items: i64,
    /// Revenue in cents.
    pub revenue_cents: i64,
    /// Revenue by category, largest first.
    pub by_category: Vec<Entry>,
    /// Revenue by store, largest first.
    pub by_store: Vec<Entry>,
    /// Revenue by day, in date order.
    pub by_day: Vec<Entry>,
    /// Units by product, most first (top N).
    pub top_products: Vec<Entry>,
    /// Spend by customer, largest first (top N), with their order counts.
    pub top_customers: Vec<Entry>,
}

/// Reads the report; rankings keep the `top` first entries.
pub async fn read(source: &Counters, top: usize) -> anyhow::Result<SalesReport> {
    let mut redis = Hashes::connect(&source.url).await?;
    let p = &source.prefix;
    let mut hash = async |name: &str| -> anyhow::Result<BTreeMap<String, i64>> {
        let raw = redis.get_all(&format!("{p}{name}")).await?;
        Ok(raw.into_iter().filter_map(|(k, v)| Some((k, v.parse().ok()?))).collect())
    };
    let totals = hash("totals").await?;
    let (category, store, day) =
        (hash("revenue:category").await?, hash("revenue:store").await?, hash("revenue:day").await?);
    let (units, orders, spend) = (hash("units:product").await?, hash("orders:user").await?, hash("spend:user").await?);
    let ranked = |map: &BTreeMap<String, i64>, n: usize| {
        let mut entries: Vec<Entry> =
            map.iter().map(|(k, v)| Entry { key: k.clone(), name: None, value: *v, orders: None }).collect();
        entries.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.key.cmp(&b.key)));
        entries.truncate(n);
        entries
    };
    let mut report = SalesReport {
        prefix: p.clone(),
        orders: totals.get("orders").copied().unwrap_or(0),
        items: totals.get("items").copied().unwrap_or(0),
        revenue_cents: totals.get("revenue_cents").copied().unwrap_or(0),
        by_category: ranked(&category, usize::MAX),
        by_store: ranked(&store, usize::MAX),
        by_day: day.iter().map(|(k, v)| Entry { key: k.clone(), name: None, value: *v, orders: None }).collect(),
        top_products: ranked(&units, top),
        top_customers: ranked(&spend, top),
    };
    for customer in &mut report.top_customers {
        customer.orders = orders.get(&customer.key).copied();
    }
    for (table, entries) in
        [("store", &mut report.by_store), ("product", &mut report.top_products), ("user", &mut report.top_customers)]
    {
        let Some(prefix) = source.names.get(table) else { continue };
        for entry in entries.iter_mut() {
            let key = format!("{prefix}{}", entry.key);
            entry.name = redis.get(&key, "name").await;
        }
    }
    Ok(report)
}

/// How long `GET /api/report` serves a report before reading Redis again.
/// Default 2 s, the dashboard's polling interval: however many tabs poll,
/// Redis sees one read (seven HGETALLs) per interval.
pub const REPORT_TTL: Duration = Duration::from_secs(2);

/// The report as the admin API serves it: read at most once per
/// [`REPORT_TTL`], by one request at a time while the others wait for it.
/// A failure is kept as long, so that a Redis that is down is not asked
/// again by every request.
pub struct Cached {
    source: Counters,
    last: tokio::sync::Mutex<Option<(Instant, Result<SalesReport, String>)>>,
}

impl Cached {
    /// Reports from `source`, the first read on the first request.
    pub fn new(source: Counters) -> Self {
        Self { source, last: tokio::sync::Mutex::new(None) }
    }

    /// The report, or why it could not be read.
    pub async fn get(&self) -> Result<SalesReport, String> {
        let mut last = self.last.lock().await;
        match &*last {
            Some((at, report)) if at.elapsed() < REPORT_TTL => report.clone(),
            _ => {
                let report = read(&self.source, 10).await.map_err(|e| format!("{e:#}"));
                *last = Some((Instant::now(), report.clone()));
                report
            }
        }
    }
}

impl crate::http::ReportSource for Cached {
    fn report(&self) -> futures::future::BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move { self.get().await.map(|r| serde_json::to_value(r).expect("a report is JSON")) })
    }
}

/// Cents as `1,234.56`.
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let (units, rest) = (cents.unsigned_abs() / 100, cents.unsigned_abs() % 100);
    let digits = units.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}.{rest:02}")
}

impl SalesReport {
    /// The report as a terminal table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Sales report (counters {}*)", self.prefix);
        let _ =
            writeln!(out, "  orders {}   items {}   revenue {}\n", self.orders, self.items, money(self.revenue_cents));
        let label = |e: &Entry| match &e.name {
            Some(name) if name != &e.key => format!("{} ({name})", e.key),
            _ => e.key.clone(),
        };
        let mut section = |title: &str, unit: &str, entries: &[Entry], show: &dyn Fn(&Entry) -> String| {
            let _ = writeln!(out, "{title}");
            if entries.is_empty() {
                let _ = writeln!(out, "  (none)");
            }
            let width = entries.iter().map(|e| label(e).chars().count()).max().unwrap_or(0).max(8);
            for e in entries {
                let name = label(e);
                let pad = width - name.chars().count();
                let _ = writeln!(out, "  {name}{}  {:>14}{unit}", " ".repeat(pad), show(e));
            }
            let _ = writeln!(out);
        };
        let revenue = |e: &Entry| money(e.value);
        section("Revenue by category", "", &self.by_category, &revenue);
        section("Revenue by store", "", &self.by_store, &revenue);
        section("Revenue by day", "", &self.by_day, &revenue);
        section("Top products", " units", &self.top_products, &|e: &Entry| e.value.to_string());
        section("Top customers", "", &self.top_customers, &|e: &Entry| {
            format!("{} in {} orders", money(e.value), e.orders.unwrap_or(0))
        });
        out.trim_end().to_string() + "\n"
    }
}

/// `sluice report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The pipeline file (for the Redis URL, the counters prefix and the lookup tables).
    #[arg(default_value = "pipeline.toml")]
    pub path: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Entries in the top products and top customers rankings.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

/// Prints the report.
pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let pipeline = crate::config::load_file(&args.path).map_err(|e| anyhow::anyhow!("{}: {e}", args.path.display()))?;
    let report = read(&Counters::of(&pipeline.config), args.top).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::money;

    #[test]
    fn money_groups_thousands() {
        assert_eq!(money(0), "0.00");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(123_456_789), "1,234,567.89");
        assert_eq!(money(-100_000), "-1,000.00");
    }
}
