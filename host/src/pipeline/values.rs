//! What the stages of a chain exchange: the value types they declare
//! (`sluice:plugin@0.3.0`) and the encoding chosen at each boundary.
//!
//! Between a stage that writes a type and a next stage that reads the same
//! type, with the same binary form, values cross in that binary form:
//! parsed from JSON once by the first stage, written as JSON once by the
//! last. Every other boundary is JSON: the chain's input and output, a
//! neighbour that declares nothing (a 0.1.0 or 0.2.0 component, a Python or
//! JavaScript stage) and two binary forms that differ (the same type built
//! with different layouts). Two neighbours that declare different types
//! are an error, so a chain never feeds a stage values it cannot read.

use std::fmt;

/// How the values on one side of a stage are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// JSON text.
    #[default]
    Json,
    /// The binary form the stage declared for that side.
    Binary,
}

impl Encoding {
    /// `json` or `binary`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Binary => "binary",
        }
    }
}

/// The encodings of a stage's input values and of the values it emits for
/// the next stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Encodings {
    /// Of the records it receives.
    pub input: Encoding,
    /// Of what it emits without a route.
    pub output: Encoding,
}

/// A type of value a stage declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueType {
    /// The type's name, such as `sluice.order`.
    pub name: String,
    /// The name of the stage's binary form of it, if it has one.
    pub binary: Option<String>,
}

impl ValueType {
    /// The same type, without its binary form: only ever JSON.
    pub fn text(self) -> Self {
        Self { binary: None, ..self }
    }
}

/// What a stage reads and writes; `None`: any JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// What it reads from the stage before it.
    pub input: Option<ValueType>,
    /// What it writes for the stage after it.
    pub output: Option<ValueType>,
}

/// Two neighbouring stages that declare different types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The stage that writes.
    pub writer: String,
    /// The type it writes.
    pub writes: String,
    /// The stage after it, which reads.
    pub reader: String,
    /// The type it reads.
    pub reads: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stage `{}` reads `{}` values, but stage `{}` before it writes `{}`: reorder the stages, or put a stage \
             between them that turns one into the other",
            self.reader, self.reads, self.writer, self.writes
        )
    }
}

impl std::error::Error for Mismatch {}

/// The encoding at the boundary from a stage that writes `output` to one
/// that reads `input`.
fn boundary(output: Option<&ValueType>, input: Option<&ValueType>) -> Result<Encoding, (String, String)> {
    let (Some(output), Some(input)) = (output, input) else { return Ok(Encoding::Json) };
    if output.name != input.name {
        return Err((output.name.clone(), input.name.clone()));
    }
    Ok(match (&output.binary, &input.binary) {
        (Some(a), Some(b)) if a == b => Encoding::Binary,
        _ => Encoding::Json,
    })
}

/// The encodings of each stage of a chain, in order, from what each
/// declares (`None` for a stage that declares nothing).
pub fn negotiate(stages: &[(&str, Option<&Declared>)]) -> Result<Vec<Encodings>, Mismatch> {
    let mut encodings = vec![Encodings::default(); stages.len()];
    for i in 1..stages.len() {
        let (writer, before) = stages[i - 1];
        let (reader, after) = stages[i];
        let output = before.and_then(|d| d.output.as_ref());
        let input = after.and_then(|d| d.input.as_ref());
        let encoding = boundary(output, input).map_err(|(writes, reads)| Mismatch {
            writer: writer.to_string(),
            writes,
            reader: reader.to_string(),
            reads,
        })?;
        encodings[i - 1].output = encoding;
        encodings[i].input = encoding;
    }
    Ok(encodings)
}

/// Whether `candidate`, put in place of a stage whose neighbours give it
/// `encodings`, reads and writes what the stage does in those encodings:
/// a canary must see the stage's inputs and emit comparable outputs.
pub fn fits(candidate: Option<&Declared>, live: Option<&Declared>, encodings: Encodings) -> Result<(), String> {
    let side = |c: Option<&ValueType>, l: Option<&ValueType>, encoding: Encoding, what: &str| {
        let name = |t: Option<&ValueType>| t.map_or("any JSON".to_string(), |t| format!("`{}`", t.name));
        if let (Some(c), Some(l)) = (c, l)
            && c.name != l.name
        {
            return Err(format!("it {what} {}, the stage {what} {}", name(Some(c)), name(Some(l))));
        }
        if encoding == Encoding::Binary && c.and_then(|c| c.binary.as_ref()) != l.and_then(|l| l.binary.as_ref()) {
            return Err(format!(
                "the stage {what} {} in a binary form the candidate does not share; build both with the same \
                 version of the type",
                name(l)
            ));
        }
        Ok(())
    };
    fn input(d: Option<&Declared>) -> Option<&ValueType> {
        d.and_then(|d| d.input.as_ref())
    }
    fn output(d: Option<&Declared>) -> Option<&ValueType> {
        d.and_then(|d| d.output.as_ref())
    }
    side(input(candidate), input(live), encodings.input, "reads")?;
    side(output(candidate), output(live), encodings.output, "writes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(binary: &str) -> Option<ValueType> {
        Some(ValueType { name: "sluice.order".into(), binary: Some(binary.into()) })
    }

    fn stage(input: Option<ValueType>, output: Option<ValueType>) -> Declared {
        Declared { input, output }
    }

    const JSON: Encodings = Encodings { input: Encoding::Json, output: Encoding::Json };

    #[test]
    fn values_cross_in_binary_only_between_stages_that_share_type_and_form() {
        let first = stage(None, order("a"));
        let middle = stage(order("a"), order("a"));
        let other_form = stage(order("b"), order("b"));
        let chain = [
            ("normalize", Some(&first)),
            ("enrich", Some(&middle)),
            ("categorize", Some(&other_form)),
            ("vip", None),
            ("totals", Some(&middle)),
        ];
        let encodings = negotiate(&chain).unwrap();
        let (json, binary) = (Encoding::Json, Encoding::Binary);
        assert_eq!(
            encodings,
            [
                Encodings { input: json, output: binary },
                Encodings { input: binary, output: json },
                Encodings { input: json, output: json },
                JSON,
                JSON,
            ]
        );
        assert_eq!(negotiate(&[("only", Some(&middle))]).unwrap(), [JSON]);
        assert!(negotiate(&[]).unwrap().is_empty());
    }

    #[test]
    fn neighbours_of_different_types_are_refused_with_both_names() {
        let writes_order = stage(None, order("a"));
        let reads_refund = stage(Some(ValueType { name: "shop.refund".into(), binary: None }), None);
        let mismatch = negotiate(&[("normalize", Some(&writes_order)), ("refunds", Some(&reads_refund))]).unwrap_err();
        assert_eq!(
            mismatch.to_string(),
            "stage `refunds` reads `shop.refund` values, but stage `normalize` before it writes `sluice.order`: \
             reorder the stages, or put a stage between them that turns one into the other"
        );
    }

    #[test]
    fn a_canary_must_read_and_write_what_its_stage_does() {
        let live = stage(order("a"), order("a"));
        let binary_in = Encodings { input: Encoding::Binary, output: Encoding::Json };
        assert_eq!(fits(Some(&live), Some(&live), binary_in), Ok(()));
        // Another form is fine where the boundary is JSON, not where it is binary.
        let other_form = stage(order("b"), order("b"));
        assert_eq!(fits(Some(&other_form), Some(&live), JSON), Ok(()));
        let refused = fits(Some(&other_form), Some(&live), binary_in).unwrap_err();
        assert!(refused.contains("reads `sluice.order` in a binary form"), "{refused}");
        // A candidate that declares nothing reads JSON only.
        assert!(fits(None, Some(&live), binary_in).is_err());
        assert_eq!(fits(None, Some(&live), JSON), Ok(()));
        let other_type = stage(None, Some(ValueType { name: "shop.refund".into(), binary: None }));
        let refused = fits(Some(&other_type), Some(&live), JSON).unwrap_err();
        assert_eq!(refused, "it writes `shop.refund`, the stage writes `sluice.order`");
    }
}
