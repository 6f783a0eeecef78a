//! Outputs to PostgreSQL: `[tables.NAME]`, a table rows are upserted into,
//! and the outputs (`[output]`, `[routes.NAME]`) that name it.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Where outputs go: a topic, PostgreSQL tables, or both.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// The topic the records are produced to.
    #[serde(default)]
    pub topic: Option<String>,
    /// The tables (names of `[tables.NAME]`) each record becomes a row of.
    #[serde(default)]
    pub tables: Vec<String>,
}

/// A PostgreSQL table that outputs are upserted into, by key, in one
/// transaction per batch with the offsets they came from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The server, `postgres://user@host:port/database`.
    pub url: String,
    /// The table, `name` or `schema.name`. Default: the name of the
    /// `[tables.NAME]` entry.
    #[serde(default)]
    pub table: Option<String>,
    /// The columns of the conflict key (the table's primary key). A row
    /// whose key is already in the table replaces it (or adds to it, for
    /// `add` columns).
    pub key: Vec<String>,
    /// Column -> where its value comes from and its SQL type.
    pub columns: BTreeMap<String, ColumnConfig>,
    /// Create the table (with `key` as its primary key) when it does not
    /// exist. Default true.
    #[serde(default = "yes")]
    pub create: bool,
}

fn yes() -> bool {
    true
}

/// A column of a table output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Where the value comes from: a field of the record's JSON value
    /// (`user.id` for a nested one), `$key` (the record key, as text) or
    /// `$value` (the whole value, for a `jsonb` column). Give this or
    /// `value`.
    #[serde(default)]
    pub field: Option<String>,
    /// A constant instead (for example `1`, to count rows with `add`).
    #[serde(default)]
    pub value: Option<toml::Value>,
    /// The SQL type: one of [`TYPES`].
    #[serde(rename = "type")]
    pub sql_type: String,
    /// When the key is already in the table, add this value to the
    /// column's instead of replacing it (a running sum). Default false.
    #[serde(default)]
    pub add: bool,
}

/// The SQL types a column may have.
pub const TYPES: [&str; 10] =
    ["text", "bigint", "integer", "smallint", "numeric", "double precision", "boolean", "date", "timestamptz", "jsonb"];

/// The types a column that adds may have.
const NUMERIC: [&str; 5] = ["bigint", "integer", "smallint", "numeric", "double precision"];

/// Whether `name` is a plain SQL identifier (letters, digits, `_`, not
/// starting with a digit), so that it needs no escaping.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

impl TableConfig {
    /// The table's name as written in SQL: `"name"` or `"schema"."name"`.
    pub fn qualified(&self, entry: &str) -> String {
        let name = self.table.as_deref().unwrap_or(entry);
        name.split('.').map(|part| format!("\"{part}\"")).collect::<Vec<_>>().join(".")
    }

    /// What is wrong with the entry `[tables.{entry}]`, if anything.
    pub fn check(&self, entry: &str) -> Result<(), String> {
        let at = format!("tables.{entry}");
        if self.url.trim().is_empty() {
            return Err(format!("`{at}.url` must not be empty"));
        }
        crate::postgres::Endpoint::parse(&self.url).map_err(|e| format!("`{at}.url`: {e}"))?;
        let name = self.table.as_deref().unwrap_or(entry);
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| is_identifier(p)) {
            return Err(format!("`{at}.table` `{name}` must be `name` or `schema.name`, of letters, digits and `_`"));
        }
        if self.columns.is_empty() {
            return Err(format!("`{at}.columns` must name at least one column"));
        }
        if self.key.is_empty() {
            return Err(format!("`{at}.key` must name at least one column (the conflict key)"));
        }
        for key in &self.key {
            match self.columns.get(key) {
                None => return Err(format!("`{at}.key` names `{key}`, which is not in `{at}.columns`")),
                Some(c) if c.add => return Err(format!("`{at}.columns.{key}` is in the key and cannot `add`")),
                Some(_) => {}
            }
        }
        for (name, column) in &self.columns {
            let at = format!("{at}.columns.{name}");
            if !is_identifier(name) {
                return Err(format!("`{at}`: a column name must be letters, digits and `_`"));
            }
            if !TYPES.contains(&column.sql_type.as_str()) {
                return Err(format!("`{at}.type` `{}` is not one of {}", column.sql_type, TYPES.join(", ")));
            }
            match (&column.field, &column.value) {
                (Some(_), Some(_)) | (None, None) => return Err(format!("`{at}`: give `field` or `value`")),
                (Some(field), None) if field.is_empty() || field.split('.').any(str::is_empty) => {
                    return Err(format!("`{at}.field` `{field}` is not a field (like `total_cents` or `user.id`)"));
                }
                _ => {}
            }
            if column.add && !NUMERIC.contains(&column.sql_type.as_str()) {
                return Err(format!("`{at}`: `add` needs a numeric type, not `{}`", column.sql_type));
            }
        }
        Ok(())
    }
}

impl OutputConfig {
    /// What is wrong with the output at `at` (`output`, `routes.vip`) of a
    /// pipeline with `tables`, if anything.
    pub fn check(&self, at: &str, tables: &BTreeMap<String, TableConfig>) -> Result<(), String> {
        match &self.topic {
            Some(topic) if topic.trim().is_empty() => return Err(format!("`{at}.topic` must not be empty")),
            None if self.tables.is_empty() => {
                return Err(format!("`{at}` needs a `topic`, `tables`, or both"));
            }
            _ => {}
        }
        for table in &self.tables {
            if !tables.contains_key(table) {
                let declared: Vec<&str> = tables.keys().map(String::as_str).collect();
                return Err(format!(
                    "`{at}.tables` names `{table}`, which is not declared in [tables] (declared: {})",
                    if declared.is_empty() { "none".into() } else { declared.join(", ") }
                ));
            }
        }
        Ok(())
    }
}
