//! Product categories from keyword rules.

use aho_corasick::AhoCorasick;
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
    /// The categories, in rule order.
    categories: Vec<String>,
    /// Every rule's keywords, lowercase, in one automaton: a name is
    /// searched once, not once per keyword.
    keywords: AhoCorasick,
    /// `rule_of[pattern]`: the rule of each keyword of `keywords`.
    rule_of: Vec<usize>,
    default: String,
}

impl Categorizer {
    /// Parses and checks the stage config (a JSON object).
    pub fn from_json(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("categorize config: {e}"))?;
        let (mut categories, mut keywords, mut rule_of) = (Vec::new(), Vec::new(), Vec::new());
        for (i, rule) in config.rules.into_iter().enumerate() {
            if rule.category.is_empty() {
                return Err(format!("categorize config: rules[{i}].category is empty"));
            }
            if let Some(k) = rule.keywords.iter().position(String::is_empty) {
                return Err(format!("categorize config: rules[{i}].keywords[{k}] is empty"));
            }
            rule_of.extend(std::iter::repeat_n(i, rule.keywords.len()));
            keywords.extend(rule.keywords.iter().map(|k| k.to_lowercase()));
            categories.push(rule.category);
        }
        let keywords = AhoCorasick::new(&keywords).map_err(|e| format!("categorize config: keywords: {e}"))?;
        Ok(Self { categories, keywords, rule_of, default: config.default })
    }

    /// The category of a product named `name`.
    pub fn category_of(&self, name: &str) -> &str {
        let name = name.to_lowercase();
        // The first rule with a keyword anywhere in the name, whatever the
        // keyword's position: every match counts, not only the leftmost.
        let mut first: Option<usize> = None;
        for found in self.keywords.find_overlapping_iter(&name) {
            let rule = self.rule_of[found.pattern().as_usize()];
            first = Some(first.map_or(rule, |f| f.min(rule)));
            if rule == 0 {
                break;
            }
        }
        first.map_or(&self.default, |rule| &self.categories[rule])
    }

    /// Sets the category of every item that has no category of its own
    /// (the order's text owned, or borrowed as in an `OrderView`).
    pub fn categorize<'a, S: AsRef<str> + From<&'a str>>(&'a self, order: &mut Order<S>) {
        for item in &mut order.items {
            if item.category.as_ref().is_none_or(|c| c.as_ref().is_empty()) {
                let category = self.category_of(item.name.as_ref().map_or("", AsRef::as_ref));
                item.category = Some(category.into());
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
        // A keyword inside another one's match still counts.
        let c = Categorizer::from_json(
            r#"{"rules":[{"category":"A","keywords":["ange"]},{"category":"B","keywords":["orange"]}]}"#,
        )
        .unwrap();
        assert_eq!(c.category_of("Orange"), "A");
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
