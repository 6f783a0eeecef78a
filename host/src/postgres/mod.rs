//! PostgreSQL, and the only code that talks to it: the table outputs
//! (`[tables.NAME]`).
//!
//! The rows of a batch are written to each server in one transaction with
//! a per-table, per-partition offset fence (table [`FENCES`], keyed by the
//! table's qualified name, so that it belongs to the rows it protects
//! whatever pipeline or consumer group writes them): the rows of
//! a record at or below its partition's fence were written before (the
//! batch is being processed again after a crash, an aborted Kafka
//! transaction or a rebalance) and are skipped, so a running sum (`add`)
//! counts each record once and a row never goes back to an older version.
//!
//! A row that PostgreSQL refuses (a value of the wrong type, a constraint)
//! is its record's fault: the batch is written again record by record, each
//! in a savepoint, and the records refused are dead-lettered
//! (`row_refused`). Any other failure (the server is down or restarting,
//! the table is missing) is retried with backoff.

mod endpoint;
mod statement;

pub use endpoint::Endpoint;
pub use statement::TableSql;

use crate::config::{PipelineConfig, redact};
use crate::record::{Batch, Row};
use serde_json::Value;
use std::collections::BTreeMap;
use tokio_postgres::{Client, Statement};

/// The table of offset fences, created on each server written to.
pub const FENCES: &str = "sluice_fences";

/// The tables of a pipeline, grouped by server.
pub struct Tables {
    servers: Vec<Server>,
}

/// A server's connection (made when first needed, again after it broke)
/// and the tables written to it.
struct Server {
    url: String,
    endpoint: Endpoint,
    connection: Option<Connection>,
    tables: Vec<TableSql>,
}

/// A connection and its prepared statements.
struct Connection {
    client: Client,
    statements: Statements,
}

/// The statements a batch runs, prepared once per connection.
struct Statements {
    /// Creates the fences of new (table, topic, partition)s.
    create_fences: Statement,
    /// Locks and reads the fences.
    select_fences: Statement,
    /// Moves the fences to the batch's last offsets.
    move_fences: Statement,
    /// Per table: the upsert, and the merging upsert.
    upserts: Vec<(Statement, Statement)>,
}

/// A record whose rows PostgreSQL refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The index of the record in its batch.
    pub record: usize,
    /// The index of the stage that emitted the refused row.
    pub stage: usize,
    /// PostgreSQL's message, naming the table.
    pub message: String,
}

/// What writing a batch's rows did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows written.
    pub rows: usize,
    /// Rows not written again: their record was at or below the fence.
    pub skipped: usize,
    /// Records whose rows were refused, in batch order.
    pub refused: Vec<Refused>,
    /// Per span of the batch (in order), the highest fence of its
    /// partition before the batch (-1 where none was set).
    pub fences_before: Vec<i64>,
}

/// A failure to write that is not a record's fault: retried.
#[derive(Debug)]
pub struct Unavailable {
    /// The server (its URL without the password).
    pub server: String,
    /// What failed.
    pub error: tokio_postgres::Error,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.error.as_db_error() {
            Some(db) => write!(f, "PostgreSQL {}: {} ({})", db.code().code(), db.message(), self.server),
            None => {
                // The cause (a refused connection, a certificate that
                // cannot be verified) is in the error's sources.
                write!(f, "PostgreSQL: {}", self.error)?;
                let mut cause = std::error::Error::source(&self.error);
                while let Some(e) = cause {
                    write!(f, ": {e}")?;
                    cause = e.source();
                }
                write!(f, " ({})", self.server)
            }
        }
    }
}

impl std::error::Error for Unavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Whether PostgreSQL refused a statement because of the data in it (SQLSTATE
/// classes 22, data exception, and 23, integrity constraint violation).
fn is_data_error(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23"))
}

impl Tables {
    /// The tables of `config`; connects to nothing yet. Fails when a
    /// table's URL (or its TLS root file) cannot be read.
    pub fn new(config: &PipelineConfig) -> Result<Self, String> {
        let mut servers: Vec<Server> = Vec::new();
        for (name, table) in &config.tables {
            let sql = TableSql::new(name, table);
            match servers.iter_mut().find(|s| s.url == table.url) {
                Some(server) => server.tables.push(sql),
                None => {
                    let endpoint = Endpoint::parse(&table.url).map_err(|e| format!("tables.{name}.url: {e}"))?;
                    servers.push(Server { url: table.url.clone(), endpoint, connection: None, tables: vec![sql] })
                }
            }
        }
        Ok(Self { servers })
    }

    /// The tables' names in SQL, as their fences name them.
    pub fn targets(&self) -> Vec<&str> {
        self.servers.iter().flat_map(|s| s.tables.iter().map(|t| t.qualified.as_str())).collect()
    }

    /// Whether the pipeline has no table outputs.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Connects to every server and creates the tables (and the fences)
    /// that are missing.
    pub async fn connect(&mut self) -> Result<(), Unavailable> {
        for server in &mut self.servers {
            server.connection().await?;
        }
        Ok(())
    }

    /// Writes `rows` (of records of `batch`: record index, stage index,
    /// rows) to their tables, behind the fence.
    pub async fn write(&mut self, batch: &Batch, rows: &[(usize, usize, Row)]) -> Result<Written, Unavailable> {
        let mut written = Written { fences_before: vec![-1; batch.spans().len()], ..Written::default() };
        for server in &mut self.servers {
            let mine: Vec<&(usize, usize, Row)> = rows
                .iter()
                .filter(|(_, _, row)| row.tables.iter().any(|name| server.tables.iter().any(|t| *t.name == **name)))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let done = server.write(batch, &mine).await;
            if done.as_ref().is_err_and(|e| e.error.is_closed() || e.error.as_db_error().is_none()) {
                server.connection = None; // reconnect on the next attempt
            }
            let done = done?;
            written.rows += done.rows;
            written.skipped += done.skipped;
            written.refused.extend(done.refused);
            for (highest, before) in written.fences_before.iter_mut().zip(done.fences_before) {
                *highest = (*highest).max(before);
            }
        }
        written.refused.sort_by_key(|r| r.record);
        written.refused.dedup_by_key(|r| r.record);
        Ok(written)
    }
}

impl Server {
    fn unavailable(&self, error: tokio_postgres::Error) -> Unavailable {
        Unavailable { server: redact::url(&self.url), error }
    }

    /// The connection, made (the tables created and the statements
    /// prepared) if there is none or it broke.
    async fn connection(&mut self) -> Result<&mut Connection, Unavailable> {
        if self.connection.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.connection = None;
        }
        if self.connection.is_none() {
            let client = self.endpoint.connect(redact::url(&self.url)).await.map_err(|e| self.unavailable(e))?;
            let mut ddl = vec![format!(
                "CREATE TABLE IF NOT EXISTS {FENCES} (target text NOT NULL, topic text NOT NULL, partition integer \
                 NOT NULL, last_offset bigint NOT NULL, PRIMARY KEY (target, topic, partition))"
            )];
            ddl.extend(self.tables.iter().filter_map(|t| t.create.clone()));
            for statement in ddl {
                client.batch_execute(&statement).await.map_err(|e| self.unavailable(e))?;
            }
            let statements = prepare(&client, &self.tables).await.map_err(|e| self.unavailable(e))?;
            self.connection = Some(Connection { client, statements });
        }
        Ok(self.connection.as_mut().expect("connected above"))
    }

    /// Writes this server's `rows` in one transaction with its fences:
    /// all at once, or record by record when a row is refused.
    async fn write(&mut self, batch: &Batch, rows: &[&(usize, usize, Row)]) -> Result<Written, Unavailable> {
        let tables = self.tables.clone();
        let connection = self.connection().await?;
        let attempt = write_rows(connection, &tables, batch, rows, false).await;
        let attempt = match attempt {
            Err(e) if is_data_error(&e) => write_rows(connection, &tables, batch, rows, true).await,
            other => other,
        };
        attempt.map_err(|e| self.unavailable(e))
    }
}

/// Prepares the statements of a batch for `tables`.
async fn prepare(client: &Client, tables: &[TableSql]) -> Result<Statements, tokio_postgres::Error> {
    let keys = "unnest($1::text[], $2::text[], $3::integer[])";
    let create_fences = client
        .prepare(&format!(
            "INSERT INTO {FENCES} (target, topic, partition, last_offset) SELECT t, p, q, -1 FROM {keys} AS u(t, p, q) \
             ON CONFLICT DO NOTHING"
        ))
        .await?;
    let select_fences = client
        .prepare(&format!(
            "SELECT target, topic, partition, last_offset FROM {FENCES} WHERE (target, topic, partition) IN (SELECT * \
             FROM {keys}) FOR UPDATE"
        ))
        .await?;
    let move_fences = client
        .prepare(&format!(
            "UPDATE {FENCES} f SET last_offset = GREATEST(f.last_offset, u.o) FROM unnest($1::text[], $2::text[], \
             $3::integer[], $4::bigint[]) AS u(t, p, q, o) WHERE f.target = u.t AND f.topic = u.p AND f.partition = u.q"
        ))
        .await?;
    let mut upserts = Vec::with_capacity(tables.len());
    for table in tables {
        upserts.push((client.prepare(&table.upsert).await?, client.prepare(&table.merging_upsert).await?));
    }
    Ok(Statements { create_fences, select_fences, move_fences, upserts })
}

/// The partitions of a batch: (topic, partition, last offset), in order.
fn partitions(batch: &Batch) -> Vec<(String, i32, i64)> {
    batch.spans().iter().map(|s| (s.topic.clone(), s.partition, s.last)).collect()
}

/// A row ready to send: its record and stage, its table (index in the
/// server's tables), its object as JSON text and its key's text.
struct Pending {
    record: usize,
    stage: usize,
    table: usize,
    object: String,
    key: String,
    /// The row's document, when its table has `documents`.
    document: Option<String>,
}

/// One transaction: locks the fences of `tables` for the batch's
/// partitions, writes the rows of the records past them (together, or with
/// `one_by_one` each record in a savepoint, leaving out those refused),
/// moves the fences to the batch's last offsets and commits.
async fn write_rows(
    connection: &mut Connection,
    tables: &[TableSql],
    batch: &Batch,
    rows: &[&(usize, usize, Row)],
    one_by_one: bool,
) -> Result<Written, tokio_postgres::Error> {
    let Connection { client, statements } = connection;
    let written = write_in_transaction(client, statements, tables, batch, rows, one_by_one).await;
    if written.is_err() {
        // Ends the transaction if it is still open (after a COMMIT that
        // ended it, PostgreSQL only warns), so the connection can be used
        // again.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    written
}

/// [`write_rows`] in three round trips: BEGIN with the fences created,
/// locked and read; the rows of every table with the fences moved; COMMIT.
/// Statements sent together are pipelined, in order, on the connection.
async fn write_in_transaction(
    client: &Client,
    statements: &Statements,
    tables: &[TableSql],
    batch: &Batch,
    rows: &[&(usize, usize, Row)],
    one_by_one: bool,
) -> Result<Written, tokio_postgres::Error> {
    let fences = begin_and_lock_fences(client, statements, tables, batch).await?;
    // fence[table][span]: the last offset written of that partition.
    let fence: Vec<Vec<i64>> = tables
        .iter()
        .map(|t| {
            let of = |s: &crate::record::Span| (t.qualified.clone(), s.topic.clone(), s.partition);
            batch.spans().iter().map(|s| fences.get(&of(s)).copied().unwrap_or(-1)).collect()
        })
        .collect();
    let fences_before = (0..batch.spans().len()).map(|i| fence.iter().map(|f| f[i]).max().unwrap_or(-1)).collect();
    let mut written = Written { fences_before, ..Written::default() };
    let mut pending: Vec<Pending> = Vec::with_capacity(rows.len());
    for (n, (record, stage, row)) in rows.iter().enumerate() {
        let (record, stage) = (*record, *stage);
        let source = &batch.records()[record];
        let span = batch.span_of(record);
        let mine = tables.iter().enumerate().filter(|(_, t)| row.tables.iter().any(|name| **name == *t.name));
        let past: Vec<(usize, &TableSql)> = mine
            .filter(|(i, _)| {
                let behind = source.offset <= fence[*i][span];
                written.skipped += usize::from(behind);
                !behind
            })
            .collect();
        if past.is_empty() {
            continue;
        }
        let value: Value = match serde_json::from_slice(&row.value) {
            Ok(value) => value,
            Err(e) => {
                let message = format!("table `{}`: the output is not JSON: {e}", past[0].1.name);
                written.refused.push(Refused { record, stage, message });
                continue;
            }
        };
        for (table, sql) in past {
            let (mut object, mut key) = (String::new(), String::new());
            match sql.row(row.key.as_deref(), &value, &row.value, n, &mut object, &mut key) {
                Ok(()) => {
                    let document = sql.document(&value, &row.value).map(str::to_string);
                    pending.push(Pending { record, stage, table, object, key, document });
                }
                Err(message) => written.refused.push(Refused { record, stage, message }),
            }
        }
    }
    let refused: Vec<usize> = written.refused.iter().map(|r| r.record).collect();
    pending.retain(|p| !refused.contains(&p.record));
    if one_by_one {
        let mut records: Vec<usize> = pending.iter().map(|p| p.record).collect();
        records.sort_unstable();
        records.dedup();
        for record in records {
            let of_record: Vec<&Pending> = pending.iter().filter(|p| p.record == record).collect();
            client.batch_execute("SAVEPOINT sluice_record").await?;
            match upsert(client, statements, tables, &of_record, true).await {
                Ok(n) => {
                    written.rows += n;
                    client.batch_execute("RELEASE SAVEPOINT sluice_record").await?;
                }
                Err((table, e)) if is_data_error(&e) => {
                    client.batch_execute("ROLLBACK TO SAVEPOINT sluice_record").await?;
                    let db = e.as_db_error().expect("a data error comes from the server");
                    let detail = db.detail().map(|d| format!(" ({d})")).unwrap_or_default();
                    let message = format!("table `{table}`: {}{detail}", db.message());
                    written.refused.push(Refused { record, stage: of_record[0].stage, message });
                }
                Err((_, e)) => return Err(e),
            }
        }
        move_fences(client, statements, tables, batch).await?;
    } else {
        let all: Vec<&Pending> = pending.iter().collect();
        // The fences move in the same round trip as the rows are sent.
        let (sent, ()) = futures::try_join!(
            async { upsert(client, statements, tables, &all, false).await.map_err(|(_, e)| e) },
            move_fences(client, statements, tables, batch)
        )?;
        written.rows += sent;
    }
    client.batch_execute("COMMIT").await?;
    Ok(written)
}

/// Upserts `rows`, one statement per table, all sent at once (merging rows
/// of the same key, with `merge` or when a key may repeat); the number of
/// rows sent, or the first table that failed and why.
async fn upsert<'t>(
    client: &Client,
    statements: &Statements,
    tables: &'t [TableSql],
    rows: &[&Pending],
    merge: bool,
) -> Result<usize, (&'t str, tokio_postgres::Error)> {
    let mut sent = 0;
    let mut arrays = Vec::with_capacity(tables.len());
    for (i, table) in tables.iter().enumerate() {
        let of_table: Vec<&&Pending> = rows.iter().filter(|p| p.table == i).collect();
        if of_table.is_empty() {
            continue;
        }
        let mut array = String::with_capacity(of_table.iter().map(|p| p.object.len() + 1).sum::<usize>() + 2);
        array.push('[');
        let documents: Option<Vec<Option<&str>>> =
            table.documents.then(|| of_table.iter().map(|p| p.document.as_deref()).collect());
        let mut keys = std::collections::HashSet::with_capacity(of_table.len());
        let mut repeats = merge || !table.text_keys;
        for (n, p) in of_table.iter().enumerate() {
            if n > 0 {
                array.push(',');
            }
            array.push_str(&p.object);
            repeats |= !keys.insert(p.key.as_str());
        }
        array.push(']');
        let (plain, merging) = &statements.upserts[i];
        arrays.push((table.name.as_str(), if repeats { merging } else { plain }, array, documents));
        sent += of_table.len();
    }
    // Each statement is sent when its future is first polled, in order;
    // the answers come back in the same order.
    type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
    let params: Vec<Vec<Param<'_>>> = arrays
        .iter()
        .map(|(_, _, array, documents)| {
            let mut params: Vec<Param<'_>> = vec![array];
            params.extend(documents.as_ref().map(|d| d as Param<'_>));
            params
        })
        .collect();
    let answers = futures::future::join_all(
        arrays.iter().zip(&params).map(|((_, statement, ..), params)| client.execute(*statement, params)),
    )
    .await;
    for ((table, ..), answer) in arrays.iter().zip(answers) {
        answer.map_err(|e| (*table, e))?;
    }
    Ok(sent)
}

/// The fence's columns for the batch's partitions of every table.
fn fence_keys(tables: &[TableSql], batch: &Batch) -> (Vec<String>, Vec<String>, Vec<i32>, Vec<i64>) {
    let mut keys = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for table in tables {
        for (topic, partition, last) in partitions(batch) {
            keys.0.push(table.qualified.clone());
            keys.1.push(topic);
            keys.2.push(partition);
            keys.3.push(last);
        }
    }
    keys
}

/// Begins a transaction, then locks (creating them if new) and reads the
/// fences of the batch's partitions: (table, topic, partition) -> last
/// offset written.
async fn begin_and_lock_fences(
    client: &Client,
    statements: &Statements,
    tables: &[TableSql],
    batch: &Batch,
) -> Result<BTreeMap<(String, String, i32), i64>, tokio_postgres::Error> {
    let (targets, topics, partitions, _) = fence_keys(tables, batch);
    // One round trip, in this order: the transaction begins, a new fence is
    // created (or waited for, if another transaction is creating it), and
    // all are locked and read.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&targets, &topics, &partitions];
    let (_, _, rows) = futures::try_join!(
        client.batch_execute("BEGIN"),
        client.execute(&statements.create_fences, &params),
        client.query(&statements.select_fences, &params)
    )?;
    Ok(rows.iter().map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3))).collect())
}

/// Moves the fences of the batch's partitions to its last offsets.
async fn move_fences(
    client: &Client,
    statements: &Statements,
    tables: &[TableSql],
    batch: &Batch,
) -> Result<(), tokio_postgres::Error> {
    let (targets, topics, partitions, lasts) = fence_keys(tables, batch);
    client.execute(&statements.move_fences, &[&targets, &topics, &partitions, &lasts]).await?;
    Ok(())
}
