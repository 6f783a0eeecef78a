//! Product categories from keyword rules.

use serde::Deserialize;
use sluice_order::Order;

/// The stage config: `rules` in order, and the category when none matches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Keyword rules, tried in order; the first match wins.
    pub rules: Vec<Rule>,
    /// The category of a product no rule matches.
    #[serde(default = "other")]
    pub default: String,
}

/// The category of a product no rule matches, unless the config says:
/// `Other`, or `Uncategorized` when built with the `uncategorized` feature
/// (a second version of the plugin with a different fallback rule, which
/// the host's reload tests swap in and out).
fn other() -> String {
    if cfg!(feature = "uncategorized") { "Uncategorized".into() } else { "Other".into() }
}

/// One rule: a product whose name contains any keyword (case-insensitively)
/// is in `category`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The category this rule assigns.
    pub category: String,
    /// Substrings of the product name.
    pub keywords: Vec<String>,
}

/// Compiled rules: keywords lower-cased once.
#[derive(Debug)]
pub struct Categorizer {
    rules: Vec<(String, Vec<String>)>,
    default: String,
}

impl Categorizer {
    /// Parses and checks the stage config (a JSON object).
    pub fn from_json(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("categorize config: {e}"))?;
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, rule) in config.rules.into_iter().enumerate() {
            if rule.category.is_empty() {
                return Err(format!("categorize config: rules[{i}].category is empty"));
            }
            if let Some(k) = rule.keywords.iter().position(String::is_empty) {
                return Err(format!("categorize config: rules[{i}].keywords[{k}] is empty"));
            }
            rules.push((rule.category, rule.keywords.iter().map(|k| k.to_lowercase()).collect()));
        }
        Ok(Self { rules, default: config.default })
    }

    /// The category of a product named `name`.
    pub fn category_of(&self, name: &str) -> &str {
        let name = name.to_lowercase();
        self.rules
            .iter()
            .find(|(_, keywords)| keywords.iter().any(|k| name.contains(k.as_str())))
            .map_or(&self.default, |(category, _)| category)
    }

    /// Sets the category of every item that has no category of its own.
    pub fn categorize(&self, order: &mut Order) {
        for item in &mut order.items {
            if item.category.as_deref().is_none_or(str::is_empty) {
                let category = self.category_of(item.name.as_deref().unwrap_or(""));
                item.category = Some(category.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_RULES: &str = r#"{"rules":[
        {"category":"Drinks","keywords":["water","juice","soda","coffee","lemonade"]},
        {"category":"Protein","keywords":["whey","protein","casein","creatine"]},
        {"category":"Fruit","keywords":["banana","apple","orange","berry"]},
        {"category":"Bakery","keywords":["bread","croissant","bagel","baguette"]},
        {"category":"Soups","keywords":["soup","суп"]}]}"#;

    #[test]
    fn first_matching_rule_wins() {
        let c = Categorizer::from_json(DEFAULT_RULES).unwrap();
        assert_eq!(c.category_of("Orange juice"), "Drinks", "juice comes before orange");
        assert_eq!(c.category_of("Whey Protein Vanilla"), "Protein");
        assert_eq!(c.category_of("BANANA"), "Fruit");
        assert_eq!(c.category_of("Грибной СУП"), "Soups");
        assert_eq!(c.category_of("Pizza"), other());
    }

    #[test]
    fn bad_config_is_explained() {
        assert!(Categorizer::from_json("{}").unwrap_err().contains("missing field `rules`"));
        assert!(Categorizer::from_json(r#"{"rules":[],"colour":1}"#).unwrap_err().contains("unknown field `colour`"));
        assert_eq!(
            Categorizer::from_json(r#"{"rules":[{"category":"A","keywords":[""]}]}"#).unwrap_err(),
            "categorize config: rules[0].keywords[0] is empty"
        );
        assert_eq!(Categorizer::from_json(r#"{"rules":[],"default":"Misc"}"#).unwrap().category_of("x"), "Misc");
    }
}
