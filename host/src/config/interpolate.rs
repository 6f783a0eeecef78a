//! `${VAR}` and `${VAR:-default}` in pipeline.toml, from the environment.
//!
//! A substituted value is always data, never TOML syntax: inside a basic
//! string (`"..."`, `"""..."""`) it is escaped; inside a literal string
//! (`'...'`, `'''...'''`), which cannot escape, a value that would end the
//! string is an error; outside strings (`batch_size = ${N:-500}`) the value
//! must be one number or boolean. Comments are left as written.

use super::ConfigError;

/// Where a `${...}` stands, which decides how its value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Outside strings and comments: a value of its own.
    Bare,
    /// In `"..."` or `"""..."""`.
    Basic { multiline: bool },
    /// In `'...'` or `'''...'''`.
    Literal { multiline: bool },
    /// After `#`, to the end of the line.
    Comment,
}

impl Context {
    /// The context after `rest` (the text from the current position on)
    /// begins, and how many bytes that beginning takes.
    fn step(self, rest: &[u8]) -> (Self, usize) {
        let triple = |q: u8| rest.len() >= 3 && rest[..3] == [q, q, q];
        match (self, rest[0]) {
            (Self::Bare, b'#') => (Self::Comment, 1),
            (Self::Bare, b'"') if triple(b'"') => (Self::Basic { multiline: true }, 3),
            (Self::Bare, b'"') => (Self::Basic { multiline: false }, 1),
            (Self::Bare, b'\'') if triple(b'\'') => (Self::Literal { multiline: true }, 3),
            (Self::Bare, b'\'') => (Self::Literal { multiline: false }, 1),
            (Self::Comment, b'\n') => (Self::Bare, 1),
            // An escape takes the next byte with it (`\"` does not end the string).
            (Self::Basic { .. }, b'\\') => (self, 2.min(rest.len())),
            (Self::Basic { multiline: true }, b'"') if triple(b'"') => (Self::Bare, 3),
            (Self::Basic { multiline: false }, b'"' | b'\n') => (Self::Bare, 1),
            (Self::Literal { multiline: true }, b'\'') if triple(b'\'') => (Self::Bare, 3),
            (Self::Literal { multiline: false }, b'\'' | b'\n') => (Self::Bare, 1),
            _ => (self, 1),
        }
    }

    /// `value` written as data in this context, or why it cannot be.
    fn write(self, value: &str, out: &mut String) -> Result<(), String> {
        match self {
            Self::Basic { .. } => {
                for c in value.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\t' => out.push_str("\\t"),
                        c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                        c => out.push(c),
                    }
                }
            }
            Self::Literal { multiline } => {
                let ends = if multiline { value.contains("'''") } else { value.contains('\'') };
                let control = |c: char| c.is_control() && c != '\t' && !(multiline && c == '\n');
                if ends || value.chars().any(control) {
                    return Err("its value holds a quote or a control character, which a literal string ('...') \
                                cannot hold: write the string in double quotes"
                        .into());
                }
                out.push_str(value);
            }
            Self::Bare => {
                if !is_scalar(value) {
                    // The value itself is not shown: it may be a secret.
                    return Err("its value is not a number or a boolean, which is all a value outside quotes \
                                may be: put the `${...}` in double quotes for a string"
                        .into());
                }
                out.push_str(value.trim());
            }
            Self::Comment => unreachable!("comments are not interpolated"),
        }
        Ok(())
    }
}

/// Whether `value` is exactly one TOML number or boolean.
fn is_scalar(value: &str) -> bool {
    let Ok(table) = toml::from_str::<toml::Table>(&format!("v = {value}")) else { return false };
    table.len() == 1
        && !value.contains(['\n', '\r', '#'])
        && matches!(table.get("v"), Some(toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)))
}

/// Replaces every `${NAME}` and `${NAME:-default}` in `text` with the value
/// of the environment variable, as `env` returns it, written as data (see
/// the module docs). `$${` stands for a literal `${`. An unset variable
/// without a default, and a value its place cannot hold, are errors that
/// name the variable and its line.
pub fn interpolate(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut context, mut copied, mut at) = (Context::Bare, 0, 0);
    while at < bytes.len() {
        if context == Context::Comment || bytes[at] != b'$' {
            let (next, taken) = context.step(&bytes[at..]);
            (context, at) = (next, at + taken);
            continue;
        }
        out.push_str(&text[copied..at]);
        let after = &text[at..];
        if after.starts_with("$${") {
            out.push_str("${");
            (at, copied) = (at + 3, at + 3);
            continue;
        }
        if !after.starts_with("${") {
            (at, copied) = (at + 1, at);
            continue;
        }
        let Some(end) = after.find('}') else {
            return Err(ConfigError::at(text, at, "unclosed `${`: expected `}`".into()));
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
                at,
                format!("`${{{body}}}` is not a variable: expected ${{NAME}} or ${{NAME:-default}}"),
            ));
        }
        let value = match (env(name), default) {
            (Some(value), _) => value,
            (None, Some(default)) => default.to_string(),
            (None, None) => {
                return Err(ConfigError::at(
                    text,
                    at,
                    format!(
                        "environment variable `{name}` is not set (write `${{{name}:-default}}` to give it a default)"
                    ),
                ));
            }
        };
        context.write(&value, &mut out).map_err(|why| ConfigError::at(text, at, format!("`{name}`: {why}")))?;
        (at, copied) = (at + end + 1, at + end + 1);
    }
    out.push_str(&text[copied..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "QUOTE" => Some("a\" \\ b\"\nkey = \"injected".into()),
            "NUMBER" => Some(" 250 ".into()),
            "LINES" => Some("1\nextra = 2".into()),
            _ => None,
        }
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

    #[test]
    fn a_value_in_a_basic_string_is_escaped_not_parsed() {
        let text = interpolate("[s]\na = \"${QUOTE}\"\nb = \"\"\"x ${QUOTE}\"\"\"\n", env).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let want = env("QUOTE").unwrap();
        assert_eq!(table["s"]["a"].as_str(), Some(want.as_str()));
        assert_eq!(table["s"]["b"].as_str(), Some(format!("x {want}").as_str()));
        assert_eq!(table["s"].as_table().unwrap().len(), 2, "no key injected: {text}");
    }

    #[test]
    fn quotes_and_escapes_inside_strings_do_not_end_them() {
        let text = "a = \"say \\\"${SET}\\\"\" # ${NOT_INTERPOLATED}\nb = 'it''s' \nc = \"${SET}\"";
        assert_eq!(
            interpolate(text, env).unwrap(),
            "a = \"say \\\"value\\\"\" # ${NOT_INTERPOLATED}\nb = 'it''s' \nc = \"value\""
        );
    }

    #[test]
    fn a_literal_string_refuses_a_value_that_would_end_it() {
        assert_eq!(interpolate("a = '${SET}'", env).unwrap(), "a = 'value'");
        let err = interpolate("a = 1\nb = '${QUOTE}'", env).unwrap_err().to_string();
        assert!(err.starts_with("line 2, column 6: `QUOTE`: its value holds a quote"), "{err}");
    }

    #[test]
    fn a_bare_value_must_be_one_number_or_boolean() {
        assert_eq!(interpolate("n = ${NUMBER}", env).unwrap(), "n = 250");
        assert_eq!(interpolate("n = ${UNSET:-500}\nb = ${UNSET:-true}", env).unwrap(), "n = 500\nb = true");
        let err = interpolate("n = ${LINES}", env).unwrap_err().to_string();
        assert_eq!(
            err,
            "line 1, column 5: `LINES`: its value is not a number or a boolean, which is all a value outside quotes \
             may be: put the `${...}` in double quotes for a string"
        );
        assert!(interpolate("n = ${SET}", env).is_err());
        assert!(interpolate("n = ${UNSET:-[1]}", env).is_err());
    }
}
