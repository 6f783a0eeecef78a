//! `sluice replay`: sends dead letters through the pipeline again once the
//! cause is fixed.
//!
//! It reads the pipeline's dead-letter topic as it is now, keeps the dead
//! letters that match the filters (reason, stage, source partition and
//! offsets, time), and produces each one's original key, value and headers
//! to its source topic (or `--to`), with `sluice.replay.of` naming the dead
//! letter. The headers the host added (`sluice.error.*`, `sluice.source.*`,
//! `sluice.lineage`, `sluice.generation`) are left out. A dead letter whose
//! value was cut to fit (`sluice.error.truncated`) is not replayed: its
//! original is lost.
//!
//! Each dead letter replayed is remembered in a Redis set (its topic,
//! partition and offset), after its record is acknowledged: replaying the
//! same dead letters again produces nothing.

use crate::config;
use crate::kafka::{Writer, scan};
use crate::pipeline::{GENERATION_HEADER, LINEAGE_HEADER, TRUNCATED_HEADER};
use crate::record::{Header, Produce, Record};
use crate::redis::Hashes;
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The header a replayed record carries: `{topic}/{partition}/{offset}` of
/// its dead letter.
pub const REPLAY_OF: &str = "sluice.replay.of";

/// Which dead letters to replay, and where.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The pipeline whose dead-letter topic, brokers and Redis to use.
    #[arg(default_value = "pipeline.toml")]
    pub path: PathBuf,
    /// Only dead letters of this reason (repeat for several).
    #[arg(long)]
    pub reason: Vec<String>,
    /// Only dead letters of this stage.
    #[arg(long)]
    pub stage: Option<String>,
    /// Only dead letters of records from this source partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Only dead letters of records from these source offsets: `FIRST..LAST`,
    /// both included; either end may be left out.
    #[arg(long, value_parser = parse_offsets)]
    pub offsets: Option<(i64, i64)>,
    /// Only dead letters written at or after this time (RFC 3339, UTC).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub since: Option<SystemTime>,
    /// Only dead letters written before this time (RFC 3339, UTC).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub until: Option<SystemTime>,
    /// Produce to this topic instead of each record's source topic.
    #[arg(long)]
    pub to: Option<String>,
    /// Count what would be replayed; produce and remember nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for more dead letters, in seconds.
    #[arg(long, default_value_t = 5)]
    pub wait: u64,
}

fn parse_offsets(text: &str) -> Result<(i64, i64), String> {
    let (first, last) = text.split_once("..").ok_or_else(|| format!("`{text}` is not FIRST..LAST"))?;
    let end = |s: &str, default: i64| {
        if s.is_empty() { Ok(default) } else { s.parse().map_err(|_| format!("`{s}` is not an offset")) }
    };
    Ok((end(first, 0)?, end(last, i64::MAX)?))
}

/// What one run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Records read from the dead-letter topic.
    pub read: usize,
    /// Those that matched the filters.
    pub matched: usize,
    /// Those replayed now (or that would be, in a dry run), by target topic.
    pub replayed: BTreeMap<String, usize>,
    /// Those replayed by an earlier run.
    pub already: usize,
    /// Those whose value was cut to fit, which cannot be replayed.
    pub truncated: usize,
    /// Records without the headers of a dead letter.
    pub not_dead_letters: usize,
}

/// A dead letter as the filters see it.
struct DeadLetter<'a> {
    reason: &'a str,
    stage: &'a str,
    topic: &'a str,
    partition: i32,
    offset: i64,
}

fn header<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    let h = record.headers.iter().rev().find(|h| h.name == name)?;
    std::str::from_utf8(&h.value).ok()
}

fn dead_letter(record: &Record) -> Option<DeadLetter<'_>> {
    Some(DeadLetter {
        reason: header(record, "sluice.error.reason")?,
        stage: header(record, "sluice.error.stage")?,
        topic: header(record, "sluice.source.topic")?,
        partition: header(record, "sluice.source.partition")?.parse().ok()?,
        offset: header(record, "sluice.source.offset")?.parse().ok()?,
    })
}

impl ReplayArgs {
    fn keeps(&self, dead: &DeadLetter<'_>, record: &Record) -> bool {
        let at = record.timestamp_ms.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
        (self.reason.is_empty() || self.reason.iter().any(|r| r == dead.reason))
            && self.stage.as_deref().is_none_or(|s| s == dead.stage)
            && self.partition.is_none_or(|p| p == dead.partition)
            && self.offsets.is_none_or(|(first, last)| (first..=last).contains(&dead.offset))
            && self.since.is_none_or(|since| at.is_some_and(|at| at >= since))
            && self.until.is_none_or(|until| at.is_some_and(|at| at < until))
    }
}

/// The record to produce again for the dead letter `record`: its key,
/// value and original headers, and [`REPLAY_OF`].
fn original(record: &Record, topic: &str, of: String) -> Produce {
    let added = |name: &str| {
        name.starts_with("sluice.error.")
            || name.starts_with("sluice.source.")
            || name == LINEAGE_HEADER
            || name == GENERATION_HEADER
    };
    let mut headers: Vec<Header> = record.headers.iter().filter(|h| !added(&h.name)).cloned().collect();
    headers.push(Header { name: REPLAY_OF.into(), value: of.into_bytes() });
    Produce { topic: topic.into(), key: record.key.clone(), value: record.value.clone().unwrap_or_default(), headers }
}

/// Runs `sluice replay` and prints what it did.
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let pipeline = config::load_file(&args.path).map_err(|e| anyhow::anyhow!("{}: {e}", args.path.display()))?;
    let config = pipeline.config;
    let dlq = config.dead_letter.topic.clone();
    let (scanned, topic, wait) = (config.clone(), dlq.clone(), Duration::from_secs(args.wait));
    let records = tokio::task::spawn_blocking(move || scan(&scanned, &topic, wait)).await??;
    // Beside the fences: `{prefix}fence:` -> `{prefix}replayed:{topic}`.
    let prefix = config.redis.fence_prefix.strip_suffix("fence:").unwrap_or(&config.redis.fence_prefix);
    let set = format!("{prefix}replayed:{dlq}");
    let mut redis = Hashes::connect(&config.redis.url).await?;
    let writer = match args.dry_run {
        true => None,
        false => Some(Writer::for_pipeline(&config).context("cannot create the Kafka producer")?),
    };
    let mut done = Replayed { read: records.len(), ..Replayed::default() };
    for record in &records {
        let Some(dead) = dead_letter(record) else {
            done.not_dead_letters += 1;
            continue;
        };
        if !args.keeps(&dead, record) {
            continue;
        }
        done.matched += 1;
        if header(record, TRUNCATED_HEADER).is_some() {
            done.truncated += 1;
            continue;
        }
        let member = format!("{dlq}/{}/{}", record.partition, record.offset);
        if redis.is_member(&set, &member).await? {
            done.already += 1;
            continue;
        }
        let target = args.to.as_deref().unwrap_or(dead.topic);
        if let Some(writer) = &writer {
            let produce = original(record, target, member.clone());
            writer.write(&produce).await.with_context(|| format!("cannot replay {member} to {target}"))?;
            redis.add_member(&set, &member).await?;
        }
        *done.replayed.entry(target.to_string()).or_default() += 1;
    }
    print(&done, &dlq, args.dry_run);
    Ok(())
}

fn print(done: &Replayed, dlq: &str, dry_run: bool) {
    let replayed: usize = done.replayed.values().sum();
    let targets: Vec<String> = done.replayed.iter().map(|(topic, n)| format!("{n} to {topic}")).collect();
    let verb = if dry_run { "would replay" } else { "replayed" };
    println!(
        "{dlq}: {} records read, {} matched; {verb} {replayed}{}; {} already replayed; {} truncated (not replayable); {} not dead letters",
        done.read,
        done.matched,
        if targets.is_empty() { String::new() } else { format!(" ({})", targets.join(", ")) },
        done.already,
        done.truncated,
        done.not_dead_letters
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(offset: i64, headers: &[(&str, &str)]) -> Record {
        let headers =
            headers.iter().map(|(n, v)| Header { name: n.to_string(), value: v.as_bytes().to_vec() }).collect();
        Record {
            key: Some(b"k".to_vec()),
            value: Some(b"{\"x\":1}".to_vec()),
            headers,
            topic: "orders.dlq".into(),
            partition: 0,
            offset,
            timestamp_ms: Some(1_800_000_000_000),
        }
    }

    const DEAD: [(&str, &str); 7] = [
        ("trace", "t1"),
        ("sluice.error.stage", "normalize"),
        ("sluice.error.reason", "invalid_json"),
        ("sluice.error.message", "expected value"),
        ("sluice.source.topic", "orders"),
        ("sluice.source.partition", "2"),
        ("sluice.source.offset", "41"),
    ];

    fn args(flags: &[&str]) -> ReplayArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ReplayArgs,
        }
        <Cli as clap::Parser>::try_parse_from(std::iter::once("replay").chain(flags.iter().copied())).unwrap().args
    }

    #[test]
    fn the_original_comes_back_without_the_hosts_headers_and_names_its_dead_letter() {
        let mut headers = DEAD.to_vec();
        headers.extend([(LINEAGE_HEADER, "normalize@abc"), (GENERATION_HEADER, "3")]);
        let record = dead(7, &headers);
        let out = original(&record, "orders", "orders.dlq/0/7".into());
        let names: Vec<(&str, &[u8])> = out.headers.iter().map(|h| (h.name.as_str(), &h.value[..])).collect();
        assert_eq!(names, [("trace", &b"t1"[..]), (REPLAY_OF, b"orders.dlq/0/7")]);
        assert_eq!((&*out.topic, out.key.as_deref(), &out.value[..]), ("orders", Some(&b"k"[..]), &b"{\"x\":1}"[..]));
    }

    #[test]
    fn the_filters_select_by_reason_stage_partition_offsets_and_time() {
        let record = dead(7, &DEAD);
        let dead = dead_letter(&record).unwrap();
        let kept = |flags: &[&str]| args(flags).keeps(&dead, &record);
        assert!(kept(&[]));
        assert!(kept(&["--reason", "missing_field", "--reason", "invalid_json"]));
        assert!(!kept(&["--reason", "missing_field"]));
        assert!(kept(&["--stage", "normalize"]) && !kept(&["--stage", "enrich"]));
        assert!(kept(&["--partition", "2"]) && !kept(&["--partition", "0"]));
        assert!(kept(&["--offsets", "41..41"]) && kept(&["--offsets", "..41"]) && kept(&["--offsets", "40.."]));
        assert!(!kept(&["--offsets", "42.."]) && !kept(&["--offsets", "..40"]));
        // The dead letter was written at 2027-01-15T08:00:00Z.
        assert!(kept(&["--since", "2027-01-15T08:00:00Z"]) && !kept(&["--since", "2027-01-15T08:00:01Z"]));
        assert!(kept(&["--until", "2027-01-15T08:00:01Z"]) && !kept(&["--until", "2027-01-15T08:00:00Z"]));
    }

    #[test]
    fn offsets_must_be_a_range() {
        assert_eq!(parse_offsets("3..9"), Ok((3, 9)));
        assert_eq!(parse_offsets(".."), Ok((0, i64::MAX)));
        assert!(parse_offsets("3").unwrap_err().contains("FIRST..LAST"));
        assert!(parse_offsets("a..9").unwrap_err().contains("`a` is not an offset"));
    }

    #[test]
    fn a_record_without_the_headers_of_a_dead_letter_is_none() {
        assert!(dead_letter(&dead(0, &[("trace", "t1")])).is_none());
    }
}
