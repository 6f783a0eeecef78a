//! The SQL of a table output, built once from its `[tables.NAME]` entry:
//! the upsert of a batch's rows, the table's creation, and a row's JSON.
//!
//! A batch's rows go to PostgreSQL as one `jsonb` parameter, an array of
//! objects with one field per column; `jsonb_to_recordset` gives them their
//! SQL types on the server. Rows of the same key are merged in the same
//! statement (`GROUP BY` the key: the last row's value, or the sum of an
//! `add` column), since one `INSERT ... ON CONFLICT` may not touch a row
//! twice. Every name in the SQL was checked to be a plain identifier when
//! the pipeline was loaded, and every type is one of a fixed list.

use crate::config::{ColumnConfig, TableConfig};
use crate::record::Row;
use serde_json::{Map, Value};

/// The field of each row object that orders the rows of a batch.
const ORDER: &str = "_sluice_n";

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// A field of the value, by path (`user.id` -> `["user", "id"]`).
    Field(Vec<String>),
    /// The record key, as text.
    Key,
    /// The whole value.
    Value,
    /// A constant.
    Const(Value),
}

/// A table output, ready to write.
#[derive(Debug, Clone)]
pub struct TableSql {
    /// The `[tables.NAME]` name.
    pub name: String,
    /// The table's name in SQL: `"name"` or `"schema"."name"`.
    pub qualified: String,
    /// `CREATE TABLE IF NOT EXISTS ...`, if the table is to be created.
    pub create: Option<String>,
    /// The upsert of a batch: `$1` is the array of row objects.
    pub upsert: String,
    columns: Vec<(String, Source)>,
    key: Vec<String>,
}

fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

impl TableSql {
    /// The SQL of the entry `[tables.{name}]` (already checked).
    pub fn new(name: &str, config: &TableConfig) -> Self {
        let table = config.qualified(name);
        let columns: Vec<(&String, &ColumnConfig)> = config.columns.iter().collect();
        let names: Vec<String> = columns.iter().map(|(n, _)| quote(n)).collect();
        let keys: Vec<String> = config.key.iter().map(|k| quote(k)).collect();
        let selects: Vec<String> = columns
            .iter()
            .map(|(n, c)| match (config.key.contains(n), c.add) {
                (true, _) => quote(n),
                (false, true) => format!("sum({})::{}", quote(n), c.sql_type),
                (false, false) => format!("(array_agg({} ORDER BY \"{ORDER}\" DESC))[1]", quote(n)),
            })
            .collect();
        let types: Vec<String> = columns.iter().map(|(n, c)| format!("{} {}", quote(n), c.sql_type)).collect();
        let sets: Vec<String> = columns
            .iter()
            .filter(|(n, _)| !config.key.contains(n))
            .map(|(n, c)| match c.add {
                true => format!("{0} = \"target\".{0} + excluded.{0}", quote(n)),
                false => format!("{0} = excluded.{0}", quote(n)),
            })
            .collect();
        let on_conflict = match sets.is_empty() {
            true => "DO NOTHING".to_string(),
            false => format!("DO UPDATE SET {}", sets.join(", ")),
        };
        let upsert = format!(
            "INSERT INTO {table} AS \"target\" ({}) SELECT {} FROM jsonb_to_recordset($1::jsonb) AS r({}, \"{ORDER}\" \
             bigint) GROUP BY {} ON CONFLICT ({}) {on_conflict}",
            names.join(", "),
            selects.join(", "),
            types.join(", "),
            keys.join(", "),
            keys.join(", "),
        );
        let create = config.create.then(|| {
            let defs: Vec<String> = columns
                .iter()
                .map(|(n, c)| {
                    let not_null = if config.key.contains(n) { " NOT NULL" } else { "" };
                    format!("{} {}{not_null}", quote(n), c.sql_type)
                })
                .collect();
            format!("CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({}))", defs.join(", "), keys.join(", "))
        });
        let columns = columns
            .iter()
            .map(|(n, c)| {
                let source = match (c.field.as_deref(), &c.value) {
                    (Some("$key"), _) => Source::Key,
                    (Some("$value"), _) => Source::Value,
                    (Some(path), _) => Source::Field(path.split('.').map(str::to_string).collect()),
                    (None, Some(value)) => Source::Const(serde_json::to_value(value).unwrap_or(Value::Null)),
                    (None, None) => Source::Const(Value::Null),
                };
                (n.to_string(), source)
            })
            .collect();
        Self { name: name.to_string(), qualified: table, create, upsert, columns, key: config.key.clone() }
    }

    /// The row object of `row`, the `n`th of its batch, or why it cannot be
    /// one (its value is not JSON, a key column would be null).
    pub fn row(&self, row: &Row, n: usize) -> Result<Value, String> {
        let mut parsed: Option<Value> = None;
        let mut object = Map::with_capacity(self.columns.len() + 1);
        for (column, source) in &self.columns {
            let value = match source {
                Source::Key => match &row.key {
                    Some(key) => Value::String(String::from_utf8_lossy(key).into_owned()),
                    None => Value::Null,
                },
                Source::Const(value) => value.clone(),
                Source::Value | Source::Field(_) => {
                    if parsed.is_none() {
                        let value = serde_json::from_slice(&row.value)
                            .map_err(|e| format!("table `{}`: the output is not JSON: {e}", self.name))?;
                        parsed = Some(value);
                    }
                    let value = parsed.as_ref().expect("parsed above");
                    match source {
                        Source::Field(path) => {
                            path.iter().try_fold(value, |v, f| v.get(f)).cloned().unwrap_or_default()
                        }
                        _ => value.clone(),
                    }
                }
            };
            if value.is_null() && self.key.contains(column) {
                return Err(format!(
                    "table `{}`: key column `{column}` would be null ({})",
                    self.name,
                    match source {
                        Source::Field(path) => format!("no field `{}`", path.join(".")),
                        Source::Key => "the record has no key".into(),
                        _ => "its value is null".into(),
                    }
                ));
            }
            object.insert(column.clone(), value);
        }
        object.insert(ORDER.into(), Value::from(n));
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daily() -> TableConfig {
        toml::from_str(
            r#"
            url = "postgres://localhost/test"
            table = "mart.daily_revenue"
            key = ["day", "source"]
            columns.day = { field = "ts", type = "date" }
            columns.source = { field = "source", type = "text" }
            columns.revenue_cents = { field = "total_cents", type = "bigint", add = true }
            columns.orders = { value = 1, type = "bigint", add = true }
            columns.last_order = { field = "$key", type = "text" }
            "#,
        )
        .unwrap()
    }

    #[test]
    fn the_upsert_merges_a_batch_by_key_and_adds_or_replaces_on_conflict() {
        let sql = TableSql::new("daily", &daily());
        assert_eq!(
            sql.upsert,
            "INSERT INTO \"mart\".\"daily_revenue\" AS \"target\" (\"day\", \"last_order\", \"orders\", \
             \"revenue_cents\", \"source\") SELECT \"day\", (array_agg(\"last_order\" ORDER BY \"_sluice_n\" DESC))[1], \
             sum(\"orders\")::bigint, sum(\"revenue_cents\")::bigint, \"source\" FROM jsonb_to_recordset($1::jsonb) AS \
             r(\"day\" date, \"last_order\" text, \"orders\" bigint, \"revenue_cents\" bigint, \"source\" text, \
             \"_sluice_n\" bigint) GROUP BY \"day\", \"source\" ON CONFLICT (\"day\", \"source\") DO UPDATE SET \
             \"last_order\" = excluded.\"last_order\", \"orders\" = \"target\".\"orders\" + excluded.\"orders\", \
             \"revenue_cents\" = \"target\".\"revenue_cents\" + excluded.\"revenue_cents\""
        );
        assert_eq!(
            sql.create.as_deref(),
            Some(
                "CREATE TABLE IF NOT EXISTS \"mart\".\"daily_revenue\" (\"day\" date NOT NULL, \"last_order\" text, \
                 \"orders\" bigint, \"revenue_cents\" bigint, \"source\" text NOT NULL, PRIMARY KEY (\"day\", \"source\"))"
            )
        );
    }

    #[test]
    fn a_row_takes_fields_the_key_and_constants() {
        let sql = TableSql::new("daily", &daily());
        let row = Row {
            table: "daily".into(),
            key: Some(b"o-1".to_vec()),
            value: br#"{"ts":"2026-01-05T10:00:00Z","source":"webshop","total_cents":1250}"#.to_vec(),
        };
        let object = sql.row(&row, 7).unwrap();
        assert_eq!(
            object,
            serde_json::json!({"day": "2026-01-05T10:00:00Z", "source": "webshop", "revenue_cents": 1250,
                "orders": 1, "last_order": "o-1", "_sluice_n": 7})
        );
    }

    #[test]
    fn a_row_without_its_key_or_of_a_value_that_is_not_json_is_refused_with_the_reason() {
        let sql = TableSql::new("daily", &daily());
        let row = |value: &[u8]| Row { table: "daily".into(), key: None, value: value.to_vec() };
        let err = sql.row(&row(br#"{"source":"webshop","total_cents":1}"#), 0).unwrap_err();
        assert_eq!(err, "table `daily`: key column `day` would be null (no field `ts`)");
        let err = sql.row(&row(b"{oops"), 0).unwrap_err();
        assert!(err.starts_with("table `daily`: the output is not JSON: "), "{err}");
    }

    #[test]
    fn a_table_of_key_columns_only_ignores_rows_it_has() {
        let config: TableConfig = toml::from_str(
            r#"
            url = "postgres://localhost/test"
            key = ["id"]
            columns.id = { field = "$key", type = "text" }
            create = false
            "#,
        )
        .unwrap();
        let sql = TableSql::new("seen", &config);
        assert!(sql.upsert.ends_with("ON CONFLICT (\"id\") DO NOTHING"), "{}", sql.upsert);
        assert!(sql.upsert.starts_with("INSERT INTO \"seen\" AS"), "{}", sql.upsert);
        assert_eq!(sql.create, None);
    }
}
