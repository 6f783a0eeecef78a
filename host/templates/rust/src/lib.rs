//! `{{name}}`: a Sluice stage. Each record's value must be a JSON object; the
//! stage adds `"tagged_by": <tag>` to it and the header `x-tagged-by`, and
//! sends it on. A value that is not JSON, or not an object, goes to the
//! dead-letter topic with its reason.
//!
//! Config (pipeline.toml, `[stages.config]`): `tag`, default `"{{name}}"`.

use serde::Deserialize;
use serde_json::Value;
use sluice_sdk::{Config, Emit, Error, Record, Stage};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_tag")]
    tag: String,
}

fn default_tag() -> String {
    "{{name}}".to_string()
}

struct Tagger {
    tag: String,
}

impl Stage for Tagger {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(Tagger { tag: settings.tag })
    }

    fn process(&mut self, record: &Record) -> Result<Emit, Error> {
        let Value::Object(mut object) = record.json()? else {
            return Err(Error::reject("not_an_object", "the record value is JSON but not an object"));
        };
        object.insert("tagged_by".to_string(), Value::String(self.tag.clone()));
        Ok(Emit::json(&object)?.header("x-tagged-by", self.tag.as_bytes()))
    }
}

sluice_sdk::stage!(Tagger);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_objects_and_rejects_the_rest() {
        let mut stage = Tagger::init(Config::new(r#"{"tag": "t"}"#)).unwrap();
        let emit = stage.process(&Record::from_value(br#"{"a":1}"#.to_vec())).unwrap();
        assert_eq!(emit.outputs()[0].value, br#"{"a":1,"tagged_by":"t"}"#);
        let error = stage.process(&Record::from_value(b"[1]".to_vec())).unwrap_err();
        assert_eq!(error.reason(), "not_an_object");
    }
}
