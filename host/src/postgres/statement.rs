//! The SQL of a table output, built once from its `[tables.NAME]` entry:
//! the upsert of a batch's rows, the table's creation, and a row's JSON.
//!
//! A batch's rows go to PostgreSQL as one parameter, the JSON text of an
//! array of objects with one field per column, written directly from the
//! output's bytes; `json_to_recordset` gives them their SQL types on the
//! server. A document column (`$value` as `jsonb`) travels
//! beside it instead, as a second parameter, a `text[]` of the values'
//! bytes as they are, zipped with the rows by `ROWS FROM`: the server then
//! parses each document once, for its column, instead of a second time as
//! part of the array (a third less of PostgreSQL's time per row of the
//! example's `orders`, with results identical to the array's). When keys
//! repeat within the batch, the rows of a key are merged in the statement
//! (`GROUP BY` the key: the last row's value, or the sum of an `add`
//! column), since one `INSERT ... ON CONFLICT` may not touch a row twice. Every name in the SQL was checked to be a plain identifier when
//! the pipeline was loaded, and every type is one of a fixed list.

use crate::config::{ColumnConfig, TableConfig};
use serde_json::Value;
use std::fmt::Write as _;

/// The field of each row object that orders the rows of a batch.
const ORDER: &str = "_sluice_n";
/// The column of the rows' documents (the second parameter), before they
/// are typed.
const DOCUMENT: &str = "_sluice_document";

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
    /// The upsert of a batch whose keys are all different: `$1` is the
    /// JSON text of the array of row objects, and `$2`, with `documents`,
    /// their documents (see [`TableSql::document`]).
    pub upsert: String,
    /// The upsert of a batch where a key may repeat, merging its rows.
    pub merging_upsert: String,
    /// Whether every key column is `text`, so that the host can tell when
    /// keys repeat (other types may make one value of different JSON, as a
    /// `date` does of two times of one day).
    pub text_keys: bool,
    /// Whether the rows' documents travel as a second parameter.
    pub documents: bool,
    /// Each column, where its value comes from, and whether it is the
    /// document (`$value` as `jsonb`).
    columns: Vec<(String, Source, bool)>,
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
        let merged: Vec<String> = columns
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
        let is_document = |c: &ColumnConfig| c.field.as_deref() == Some("$value") && c.sql_type == "jsonb";
        let documents = columns.iter().any(|(_, c)| is_document(c));
        let rows = match documents {
            false => format!("json_to_recordset($1::text::json) AS r({}, \"{ORDER}\" bigint)", types.join(", ")),
            true => {
                // The other columns from the array, then the documents,
                // zipped by position, typed in a subquery of all columns.
                let (documents, fields): (Vec<_>, Vec<_>) =
                    columns.iter().zip(&types).partition(|((_, c), _)| is_document(c));
                let mut typed: Vec<String> = fields.iter().map(|(_, t)| t.to_string()).collect();
                typed.push(format!("\"{ORDER}\" bigint"));
                let mut aliases: Vec<String> = fields.iter().map(|((n, _), _)| quote(n)).collect();
                aliases.push(format!("\"{ORDER}\""));
                let mut selected = aliases.clone();
                aliases.push(format!("\"{DOCUMENT}\""));
                selected.extend(
                    documents.iter().map(|((n, c), _)| format!("\"{DOCUMENT}\"::{} AS {}", c.sql_type, quote(n))),
                );
                format!(
                    "(SELECT {} FROM ROWS FROM (json_to_recordset($1::text::json) AS ({}), unnest($2::text[])) \
                     AS r({})) AS r",
                    selected.join(", "),
                    typed.join(", "),
                    aliases.join(", ")
                )
            }
        };
        let (names, keys) = (names.join(", "), keys.join(", "));
        let upsert = format!(
            "INSERT INTO {table} AS \"target\" ({names}) SELECT {names} FROM {rows} ON CONFLICT ({keys}) {on_conflict}"
        );
        let merging_upsert = format!(
            "INSERT INTO {table} AS \"target\" ({names}) SELECT {} FROM {rows} GROUP BY {keys} ON CONFLICT ({keys}) \
             {on_conflict}",
            merged.join(", "),
        );
        let create = config.create.then(|| {
            let defs: Vec<String> = columns
                .iter()
                .map(|(n, c)| {
                    let not_null = if config.key.contains(n) { " NOT NULL" } else { "" };
                    format!("{} {}{not_null}", quote(n), c.sql_type)
                })
                .collect();
            format!("CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({keys}))", defs.join(", "))
        });
        let columns = columns
            .iter()
            .map(|(n, c)| {
                let document = is_document(c);
                let source = match (c.field.as_deref(), &c.value) {
                    (Some("$key"), _) => Source::Key,
                    (Some("$value"), _) => Source::Value,
                    (Some(path), _) => Source::Field(path.split('.').map(str::to_string).collect()),
                    (None, Some(value)) => Source::Const(serde_json::to_value(value).unwrap_or(Value::Null)),
                    (None, None) => Source::Const(Value::Null),
                };
                (n.to_string(), source, document)
            })
            .collect();
        Self {
            name: name.to_string(),
            qualified: table,
            create,
            upsert,
            merging_upsert,
            text_keys: config.key.iter().all(|k| config.columns[k].sql_type == "text"),
            documents,
            columns,
            key: config.key.clone(),
        }
    }

    /// Appends the row object of an output (its `key`, its `value` as
    /// JSON and as the bytes it was parsed from), the `n`th of its batch, to
    /// `out` as JSON text, and its key's text (as a `text` column holds it)
    /// to `key_text`; or says why it
    /// cannot be a row (a key column would be null).
    pub fn row(
        &self,
        key: Option<&[u8]>,
        value: &Value,
        raw: &[u8],
        n: usize,
        out: &mut String,
        key_text: &mut String,
    ) -> Result<(), String> {
        let start = out.len();
        out.push('{');
        for (column, source, document) in &self.columns {
            let found = match source {
                Source::Key => key.map(|k| Value::String(String::from_utf8_lossy(k).into_owned())),
                Source::Const(value) => Some(value.clone()),
                Source::Field(path) => path.iter().try_fold(value, |v, f| v.get(f)).filter(|v| !v.is_null()).cloned(),
                Source::Value => None,
            };
            let is_key = self.key.contains(column);
            if *document && !is_key {
                // It travels beside the row (`document`).
                continue;
            }
            if found.is_none() && is_key && *source != Source::Value {
                out.truncate(start);
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
            let text: std::borrow::Cow<'_, str> = match (source, found) {
                // The bytes parsed as JSON above are JSON text.
                (Source::Value, _) => std::str::from_utf8(raw).unwrap_or("null").into(),
                (_, Some(found)) => found.to_string().into(),
                (_, None) => "null".into(),
            };
            if !document {
                // Column names are plain identifiers: no escaping needed.
                let _ = write!(out, "\"{column}\":{text},");
            }
            if is_key {
                match serde_json::from_str::<Value>(&text) {
                    Ok(Value::String(s)) => key_text.push_str(&s),
                    _ => key_text.push_str(&text),
                }
                key_text.push('\0');
            }
        }
        let _ = write!(out, "\"{ORDER}\":{n}}}");
        Ok(())
    }

    /// A row's document, for the second parameter: the value's bytes as
    /// they are; none (SQL `NULL`, as the array gives) for JSON `null` or
    /// when the table has no `documents`.
    pub fn document<'v>(&self, value: &Value, raw: &'v [u8]) -> Option<&'v str> {
        match value {
            _ if !self.documents => None,
            Value::Null => None,
            _ => std::str::from_utf8(raw).ok(),
        }
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
    fn the_upsert_adds_or_replaces_on_conflict_and_merges_a_batch_by_key_when_keys_repeat() {
        let sql = TableSql::new("daily", &daily());
        let columns = "\"day\", \"last_order\", \"orders\", \"revenue_cents\", \"source\"";
        let rows = "json_to_recordset($1::text::json) AS r(\"day\" date, \"last_order\" text, \"orders\" bigint, \
                    \"revenue_cents\" bigint, \"source\" text, \"_sluice_n\" bigint)";
        let conflict = "ON CONFLICT (\"day\", \"source\") DO UPDATE SET \"last_order\" = excluded.\"last_order\", \
                        \"orders\" = \"target\".\"orders\" + excluded.\"orders\", \"revenue_cents\" = \
                        \"target\".\"revenue_cents\" + excluded.\"revenue_cents\"";
        let table = "INSERT INTO \"mart\".\"daily_revenue\" AS \"target\"";
        assert_eq!(sql.upsert, format!("{table} ({columns}) SELECT {columns} FROM {rows} {conflict}"));
        assert_eq!(
            sql.merging_upsert,
            format!(
                "{table} ({columns}) SELECT \"day\", (array_agg(\"last_order\" ORDER BY \"_sluice_n\" DESC))[1], \
                 sum(\"orders\")::bigint, sum(\"revenue_cents\")::bigint, \"source\" FROM {rows} GROUP BY \"day\", \
                 \"source\" {conflict}"
            )
        );
        assert_eq!(
            sql.create.as_deref(),
            Some(
                "CREATE TABLE IF NOT EXISTS \"mart\".\"daily_revenue\" (\"day\" date NOT NULL, \"last_order\" text, \
                 \"orders\" bigint, \"revenue_cents\" bigint, \"source\" text NOT NULL, PRIMARY KEY (\"day\", \"source\"))"
            )
        );
    }

    fn row(sql: &TableSql, key: Option<&[u8]>, raw: &[u8]) -> Result<(String, String), String> {
        let value: Value = serde_json::from_slice(raw).unwrap();
        let (mut object, mut key_text) = (String::new(), String::new());
        sql.row(key, &value, raw, 7, &mut object, &mut key_text)?;
        Ok((object, key_text))
    }

    #[test]
    fn a_row_takes_fields_the_key_and_constants() {
        let sql = TableSql::new("daily", &daily());
        let raw = br#"{"ts":"2026-01-05T10:00:00Z","source":"webshop","total_cents":1250}"#;
        let (object, key) = row(&sql, Some(b"o-1"), raw).unwrap();
        let object: Value = serde_json::from_str(&object).unwrap();
        assert_eq!(
            object,
            serde_json::json!({"day": "2026-01-05T10:00:00Z", "source": "webshop", "revenue_cents": 1250,
                "orders": 1, "last_order": "o-1", "_sluice_n": 7})
        );
        assert_eq!(key, "2026-01-05T10:00:00Z\0webshop\0");
        assert!(!sql.text_keys, "a date key may repeat whatever the JSON says");
    }

    #[test]
    fn a_value_column_takes_the_bytes_as_they_are() {
        let config: TableConfig = toml::from_str(
            r#"
            url = "postgres://localhost/test"
            key = ["id"]
            columns.id = { field = "id", type = "text" }
            columns.doc = { field = "$value", type = "jsonb" }
            "#,
        )
        .unwrap();
        let sql = TableSql::new("docs", &config);
        let raw = br#"{"id": "a\"b", "n": 1.50, "s": "\u00e9"}"#;
        let (object, _) = row(&sql, None, raw).unwrap();
        // The document travels beside the row, as it is, and is typed on
        // the server, zipped with the rows by position.
        assert_eq!(object, r#"{"id":"a\"b","_sluice_n":7}"#);
        assert!(sql.documents);
        let value: Value = serde_json::from_slice(raw).unwrap();
        assert_eq!(sql.document(&value, raw), Some(std::str::from_utf8(raw).unwrap()));
        assert_eq!(sql.document(&Value::Null, b"null"), None, "JSON null is SQL NULL, as in the array");
        let rows = "(SELECT \"id\", \"_sluice_n\", \"_sluice_document\"::jsonb AS \"doc\" FROM ROWS FROM \
                    (json_to_recordset($1::text::json) AS (\"id\" text, \"_sluice_n\" bigint), unnest($2::text[])) \
                    AS r(\"id\", \"_sluice_n\", \"_sluice_document\")) AS r";
        assert_eq!(
            sql.upsert,
            format!(
                "INSERT INTO \"docs\" AS \"target\" (\"doc\", \"id\") SELECT \"doc\", \"id\" FROM {rows} ON CONFLICT \
                 (\"id\") DO UPDATE SET \"doc\" = excluded.\"doc\""
            )
        );
        // A `$value` of another type stays in the array, where a JSON
        // string becomes its text.
        let config: TableConfig = toml::from_str(
            r#"
            url = "postgres://localhost/test"
            key = ["id"]
            columns.id = { field = "id", type = "text" }
            columns.whole = { field = "$value", type = "text" }
            "#,
        )
        .unwrap();
        let sql = TableSql::new("texts", &config);
        assert!(!sql.documents);
        assert_eq!(sql.document(&value, raw), None);
        let (object, _) = row(&sql, None, raw).unwrap();
        assert_eq!(object, format!(r#"{{"id":"a\"b","whole":{},"_sluice_n":7}}"#, std::str::from_utf8(raw).unwrap()));
    }

    #[test]
    fn a_row_without_its_key_is_refused_with_the_reason() {
        let sql = TableSql::new("daily", &daily());
        let err = row(&sql, None, br#"{"source":"webshop","total_cents":1}"#).unwrap_err();
        assert_eq!(err, "table `daily`: key column `day` would be null (no field `ts`)");
        let err = row(&sql, None, br#"{"ts":null,"source":"webshop"}"#).unwrap_err();
        assert_eq!(err, "table `daily`: key column `day` would be null (no field `ts`)");
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
