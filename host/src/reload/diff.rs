//! What differs between two pipelines, as the reload report lists it.

use crate::config::{self, Pipeline, PipelineConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What differs between two pipelines, readably; empty when nothing does.
pub fn changes(
    old: &Pipeline,
    old_versions: &HashMap<PathBuf, String>,
    new: &Pipeline,
    new_versions: &HashMap<PathBuf, String>,
) -> Vec<String> {
    let mut changes = Vec::new();
    let (a, b) = (&old.config, &new.config);
    let names = |c: &PipelineConfig| c.stages.iter().map(|s| s.name.get_ref().clone()).collect::<Vec<_>>();
    let (old_names, new_names) = (names(a), names(b));
    for name in &new_names {
        if !old_names.contains(name) {
            changes.push(format!("stage `{name}` added"));
        }
    }
    for name in &old_names {
        if !new_names.contains(name) {
            changes.push(format!("stage `{name}` removed"));
        }
    }
    let common = |names: &[String], other: &[String]| -> Vec<String> {
        names.iter().filter(|n| other.contains(n)).cloned().collect()
    };
    if common(&old_names, &new_names) != common(&new_names, &old_names) {
        changes.push(format!("stages reordered: {}", new_names.join(" -> ")));
    }
    let version = |versions: &HashMap<PathBuf, String>, pipeline: &Pipeline, plugin: &Path| {
        versions.get(&pipeline.base_dir.join(plugin)).map(|v| v[..12].to_string()).unwrap_or_default()
    };
    for s in &b.stages {
        let Some(o) = a.stages.iter().find(|o| o.name == s.name) else { continue };
        let name = s.name.get_ref();
        let (v_old, v_new) = (version(old_versions, old, &o.plugin), version(new_versions, new, &s.plugin));
        if v_old != v_new {
            changes.push(format!("stage `{name}`: plugin {v_old} -> {v_new}"));
        } else if o.plugin != s.plugin {
            changes.push(format!("stage `{name}`: plugin path {}", s.plugin.display()));
        }
        if o.config != s.config {
            changes.push(format!("stage `{name}`: config"));
        }
        if o.lookups != s.lookups || o.limits != s.limits || o.on_failure != s.on_failure {
            changes.push(format!("stage `{name}`: lookups, limits or on_failure"));
        }
        let canary_version = |c: &Option<config::CanaryConfig>, versions, pipeline| {
            c.as_ref().map(|c| (version(versions, pipeline, &c.plugin), c.sample))
        };
        if canary_version(&o.canary, old_versions, old) != canary_version(&s.canary, new_versions, new) {
            changes.push(format!("stage `{name}`: canary"));
        }
    }
    let mut differs = |key: &str, same: bool| {
        if !same {
            changes.push(key.to_string());
        }
    };
    differs("commit_interval_ms", a.commit_interval_ms == b.commit_interval_ms);
    differs("source.topics", a.source.topics == b.source.topics);
    differs("source.batch_size", a.source.batch_size == b.source.batch_size);
    differs("source.batch_max_bytes", a.source.batch_max_bytes == b.source.batch_max_bytes);
    differs("source.max_record_bytes", a.source.max_record_bytes == b.source.max_record_bytes);
    differs("output", a.output == b.output);
    differs("dead_letter.topic", a.dead_letter.topic == b.dead_letter.topic);
    differs("routes", a.routes == b.routes);
    differs("tables", a.tables == b.tables);
    differs("lookups", a.lookups == b.lookups);
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [kafka]
        brokers = "localhost:9092"
        group = "g"
        [redis]
        url = "redis://127.0.0.1:6379"
        [source]
        topics = ["orders"]
        [output]
        topic = "out"
        [dead_letter]
        topic = "dlq"
    "#;

    fn pipeline(stages: &str, extra: &str) -> Pipeline {
        let text = format!("{extra}\n{BASE}\n{stages}");
        let config = config::load_str(&text, |_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
        Pipeline { config, base_dir: PathBuf::from("/p") }
    }

    fn stage(name: &str, plugin: &str) -> String {
        format!("[[stages]]\nname = \"{name}\"\nplugin = \"{plugin}\"\n")
    }

    fn versions(pairs: &[(&str, &str)]) -> HashMap<PathBuf, String> {
        pairs.iter().map(|(path, sha)| (PathBuf::from("/p").join(path), sha.repeat(64 / sha.len()))).collect()
    }

    #[test]
    fn the_same_pipeline_has_no_changes() {
        let p = pipeline(&(stage("a", "a.wasm") + &stage("b", "b.wasm")), "");
        let v = versions(&[("a.wasm", "a1"), ("b.wasm", "b1")]);
        assert_eq!(changes(&p, &v, &p.clone(), &v), Vec::<String>::new());
    }

    #[test]
    fn added_removed_and_reordered_stages_are_named() {
        let old = pipeline(&(stage("a", "a.wasm") + &stage("b", "b.wasm") + &stage("c", "c.wasm")), "");
        let new = pipeline(&(stage("c", "c.wasm") + &stage("a", "a.wasm") + &stage("d", "d.wasm")), "");
        let v = versions(&[("a.wasm", "a1"), ("b.wasm", "b1"), ("c.wasm", "c1"), ("d.wasm", "d1")]);
        assert_eq!(
            changes(&old, &v, &new, &v),
            ["stage `d` added", "stage `b` removed", "stages reordered: c -> a -> d"]
        );
    }

    #[test]
    fn a_new_plugin_version_is_shown_by_its_short_hash() {
        let p = pipeline(&stage("a", "a.wasm"), "");
        let (old, new) = (versions(&[("a.wasm", "a1")]), versions(&[("a.wasm", "b2")]));
        assert_eq!(changes(&p, &old, &p.clone(), &new), ["stage `a`: plugin a1a1a1a1a1a1 -> b2b2b2b2b2b2"]);
        let moved = pipeline(&stage("a", "v2/a.wasm"), "");
        let same_bytes = versions(&[("v2/a.wasm", "a1")]);
        assert_eq!(changes(&p, &old, &moved, &same_bytes), ["stage `a`: plugin path v2/a.wasm"]);
    }

    #[test]
    fn stage_settings_and_pipeline_keys_are_listed() {
        let old = pipeline(&stage("a", "a.wasm"), "");
        let new = pipeline(
            &(stage("a", "a.wasm") + "config = { x = 1 }\n[stages.limits]\ntimeout_ms = 50\n"),
            "commit_interval_ms = 250",
        );
        let v = versions(&[("a.wasm", "a1")]);
        assert_eq!(
            changes(&old, &v, &new, &v),
            ["stage `a`: config", "stage `a`: lookups, limits or on_failure", "commit_interval_ms"]
        );
    }
}
