//! `${VAR}` and `${VAR:-default}` in pipeline.toml, from the environment.

use super::ConfigError;

/// Replaces every `${NAME}` and `${NAME:-default}` in `text` with the value
/// of the environment variable, as `env` returns it. `$${` stands for a
/// literal `${`. An unset variable without a default is an error that names
/// the variable and its line.
pub fn interpolate(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            continue;
        }
        let offset = text.len() - after.len();
        let Some(end) = after.find('}') else {
            return Err(ConfigError::at(text, offset, "unclosed `${`: expected `}`".into()));
        };
        let body = &after[2..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ConfigError::at(
                text,
                offset,
                format!("`${{{body}}}` is not a variable: expected ${{NAME}} or ${{NAME:-default}}"),
            ));
        }
        match (env(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(ConfigError::at(
                    text,
                    offset,
                    format!(
                        "environment variable `{name}` is not set (write `${{{name}:-default}}` to give it a default)"
                    ),
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SET").then(|| "value".to_string())
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        let text =
            "a = \"${SET}\"\nb = \"${UNSET:-fallback}\"\nc = \"${SET:-x}\"\nd = \"$${SET} $5\"\ne = \"${UNSET:-}\"";
        assert_eq!(
            interpolate(text, env).unwrap(),
            "a = \"value\"\nb = \"fallback\"\nc = \"value\"\nd = \"${SET} $5\"\ne = \"\""
        );
    }

    #[test]
    fn errors_name_the_variable_and_line() {
        let err = interpolate("a = 1\nb = \"${NOPE}\"", env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2, column 6: environment variable `NOPE` is not set (write `${NOPE:-default}` to give it a default)"
        );
        let err = interpolate("a = \"${1X}\"", env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 1, column 6: `${1X}` is not a variable: expected ${NAME} or ${NAME:-default}"
        );
        assert!(interpolate("a = \"${OPEN", env).unwrap_err().to_string().contains("unclosed"));
    }
}
