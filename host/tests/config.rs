//! Golden tests of pipeline.toml errors: each `tests/config/invalid/*.toml`
//! must fail with exactly the message in the `.err` file beside it.
//! `SLUICE_BLESS=1` rewrites the `.err` files; review the diff.

use std::path::PathBuf;

#[test]
fn invalid_configs_give_their_exact_error() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/config/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "expected the golden files in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let error = sluice::config::load_str(&text, |_| None)
            .expect_err(&format!("{} should be rejected", file.display()))
            .to_string();
        let expected_file = file.with_extension("err");
        if std::env::var_os("SLUICE_BLESS").is_some() {
            std::fs::write(&expected_file, format!("{error}\n")).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        assert_eq!(error, expected.trim_end(), "{}", file.display());
    }
}

/// A value from the environment is data: quotes, backslashes and line
/// breaks in it reach the setting as they are and add no keys.
#[test]
fn an_environment_value_cannot_inject_toml() {
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pipeline.toml")).unwrap();
    let hostile = "redis://h:6379\"\n[admin]\naddr = \"0.0.0.0:9\" # \\";
    let config = sluice::config::load_str(&text, |name| (name == "REDIS_URL").then(|| hostile.to_string())).unwrap();
    assert_eq!(config.redis.url, hostile);
    assert_eq!(config.admin.addr, "127.0.0.1:8080");

    let error = sluice::config::load_str(&text, |name| (name == "SLUICE_BATCH_SIZE").then(|| "1\ndelivery = 2".into()))
        .unwrap_err()
        .to_string();
    assert!(error.contains("`SLUICE_BATCH_SIZE`: its value is not a number or a boolean"), "{error}");
}
