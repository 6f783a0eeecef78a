//! What of the configuration may be shown: secrets become `***` in logs,
//! errors and the admin API.

use serde_json::Value;

/// What stands for a hidden secret.
pub const MASK: &str = "***";

/// The last words of setting names that hold secrets (`sasl.password`,
/// `api_key`, `accessToken`).
const SECRET_WORDS: &[&str] = &["password", "passwd", "secret", "token", "key", "apikey", "credentials"];

/// `url` with its password replaced by [`MASK`] (`redis://:secret@host` ->
/// `redis://:***@host`).
pub fn url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Fails only for URLs that cannot have a password.
                let _ = parsed.set_password(Some(MASK));
            }
            parsed.to_string()
        }
        Err(_) => "(a URL that does not parse)".into(),
    }
}

/// Whether a setting called `name` holds a secret: its last word (split at
/// `.`, `_`, `-` and lower-to-upper case changes) is one of
/// [`SECRET_WORDS`], so `api_key` does and `key_prefix` or `keywords` do
/// not.
pub fn is_secret(name: &str) -> bool {
    let mut last = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if matches!(c, '.' | '_' | '-') || (c.is_uppercase() && previous_lower) {
            last.clear();
        }
        if c.is_alphanumeric() {
            last.extend(c.to_lowercase());
        }
        previous_lower = c.is_lowercase();
    }
    SECRET_WORDS.contains(&last.as_str())
}

/// `value` (a stage's config, say) with every secret setting masked and
/// every URL's password masked, at any depth.
pub fn value(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if is_secret(&k) && !v.is_null() { Value::String(MASK.into()) } else { self::value(v) };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(self::value).collect()),
        Value::String(s) if s.contains("://") && s.contains('@') => Value::String(url(&s)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_url_password_never_shows() {
        for (url, shown) in [
            ("redis://:s3cret@db:6379/2", "redis://:***@db:6379/2"),
            ("redis://app:s3cret@db", "redis://app:***@db"),
            ("rediss://app@db", "rediss://app@db"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis//:s3cret@db", "(a URL that does not parse)"),
        ] {
            assert_eq!(super::url(url), shown);
        }
    }

    #[test]
    fn secret_names_are_told_by_their_last_word() {
        for name in ["password", "sasl.password", "api_key", "apiKey", "access-token", "SECRET", "client_secret"] {
            assert!(super::is_secret(name), "{name}");
        }
        for name in ["key_prefix", "keywords", "prefix", "tokens_per_second", "monkey", "default"] {
            assert!(!super::is_secret(name), "{name}");
        }
    }

    #[test]
    fn a_config_keeps_its_shape_without_its_secrets() {
        let config = json!({
            "prefix": "sluice:",
            "auth": {"apiKey": "k-123", "endpoint": "https://u:p4ss@api.example/v1"},
            "rules": [{"category": "Drinks", "token": "t-9"}],
            "password": null,
        });
        assert_eq!(
            super::value(config),
            json!({
                "prefix": "sluice:",
                "auth": {"apiKey": "***", "endpoint": "https://u:***@api.example/v1"},
                "rules": [{"category": "Drinks", "token": "***"}],
                "password": null,
            })
        );
    }
}
