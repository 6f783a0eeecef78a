//! Typed values: what a stage reads and writes, and how they cross to the
//! neighbouring stages.
//!
//! A stage that declares its types ([`Stage::declare`](crate::Stage::declare))
//! reads them with [`Record::decode`](crate::Record::decode) and writes them
//! with [`Emit::encode`](crate::Emit::encode). Between two stages that
//! declare the same [`Value`], the host has them exchange it in postcard's
//! binary form, so a record is parsed from JSON once, by the first stage,
//! and written as JSON once, by the last; everywhere else the value is
//! JSON. The stage's code is the same either way.

use crate::{Declared, Encoding, Encodings, Error, ValueType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::fmt;

/// A type of value that stages exchange.
///
/// Its binary form is postcard's encoding, named after the type's layout as
/// `serde-reflection` traces it: two stages exchange binary only if they
/// were built with the same layout (field names, order and types). Built
/// against different versions of the type, they exchange JSON.
pub trait Value: Serialize + DeserializeOwned + 'static {
    /// The type's name, such as `sluice.order`. Neighbouring stages that
    /// declare a type must declare the same one.
    const NAME: &'static str;
}

/// A [`Value`] that can also be read in place, without copying its text:
/// [`Record::decode_view`](crate::Record::decode_view) gives an `Of<'a>`
/// that borrows from the record, and
/// [`Emit::encode_view`](crate::Emit::encode_view) writes it. `Of` must
/// encode exactly as the value does, in JSON and in binary (the same field
/// names, order and types, with borrowed text where the value owns it):
/// test that a value encoded, decoded as its view and encoded again gives
/// the same bytes.
pub trait View: Value {
    /// The value with its text borrowed for `'a`.
    type Of<'a>: Serialize + Deserialize<'a>;
}

impl Declared {
    /// Any JSON in and out: what a stage that declares nothing reads and
    /// writes.
    pub fn any() -> Self {
        Declared { input: None, output: None }
    }

    /// Reads values of type `T` from the stage before.
    pub fn reads<T: Value>(mut self) -> Self {
        self.input = Some(value_type::<T>());
        self
    }

    /// Writes values of type `T` for the stage after.
    pub fn writes<T: Value>(mut self) -> Self {
        self.output = Some(value_type::<T>());
        self
    }
}

/// The declaration of `T`: its name and, if its layout can be traced, its
/// binary form.
pub fn value_type<T: Value>() -> ValueType {
    ValueType { name: T::NAME.to_string(), binary: binary_form::<T>() }
}

fn binary_form<T: Value>() -> Option<String> {
    let mut tracer = serde_reflection::Tracer::new(serde_reflection::TracerConfig::default());
    tracer.trace_simple_type::<T>().ok()?;
    let layout = tracer.registry().ok()?;
    Some(format!("postcard:{}", serde_json::to_string(&layout).ok()?))
}

std::thread_local! {
    static ENCODINGS: Cell<(Encoding, Encoding)> = const { Cell::new((Encoding::Json, Encoding::Json)) };
}

/// Sets the encodings the host chose (at `init`; tests may set them too).
pub fn set_encodings(encodings: Encodings) {
    ENCODINGS.with(|e| e.set((encodings.input, encodings.output)));
}

/// The encodings in use: JSON both ways unless the host chose otherwise.
pub fn encodings() -> Encodings {
    let (input, output) = ENCODINGS.with(Cell::get);
    Encodings { input, output }
}

/// `value` as `T`, in the input encoding: an [`Error`] with reason
/// `invalid_json` and the parser's message if it is not JSON of that type.
/// [`Record::decode`](crate::Record::decode) is this on a record's value.
pub fn decode<T: Value>(value: &[u8]) -> Result<T, Error> {
    decode_as(value, T::NAME)
}

/// [`decode`], as `T`'s view borrowing from `value`.
pub fn decode_view<T: View>(value: &[u8]) -> Result<T::Of<'_>, Error> {
    decode_as(value, T::NAME)
}

fn decode_as<'a, D: Deserialize<'a>>(value: &'a [u8], name: &str) -> Result<D, Error> {
    match encodings().input {
        Encoding::Json => serde_json::from_slice(value).map_err(|e| Error::reject("invalid_json", e.to_string())),
        Encoding::Binary => postcard::from_bytes(value)
            .map_err(|e| Error::reject("invalid_value", format!("record value, in the binary form of `{name}`: {e}"))),
    }
}

/// `value` in the output encoding, for the next stage.
pub fn encode_output<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    encode(value, encodings().output)
}

/// `value` in `encoding`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, encoding: Encoding) -> Result<Vec<u8>, Error> {
    match encoding {
        Encoding::Json => serde_json::to_vec(value).map_err(|e| Error::reject("serialize_failed", e.to_string())),
        Encoding::Binary => postcard::to_allocvec(value).map_err(|e| Error::reject("serialize_failed", e.to_string())),
    }
}

/// How to turn an output encoded in binary back into JSON, in case it is
/// routed (named routes are JSON) after it was encoded for the next stage:
/// a function, so that the common, unrouted output costs no allocation.
#[derive(Clone, Copy)]
pub(crate) struct Typed(fn(&[u8]) -> Result<Vec<u8>, Error>);

impl Typed {
    pub(crate) fn of<T: Value>() -> Self {
        Self(|binary| {
            let value: T =
                postcard::from_bytes(binary).map_err(|e| Error::reject("serialize_failed", e.to_string()))?;
            encode(&value, Encoding::Json)
        })
    }

    /// `binary`, the value's binary form, as JSON.
    pub(crate) fn json(self, binary: &[u8]) -> Result<Vec<u8>, Error> {
        (self.0)(binary)
    }
}

impl fmt::Debug for Typed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Typed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Emit, Record};
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i64,
        label: String,
    }

    impl Value for Point {
        const NAME: &'static str = "test.point";
    }

    /// The same type name with another layout.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point2 {
        x: i64,
        label: Option<String>,
    }

    impl Value for Point2 {
        const NAME: &'static str = "test.point";
    }

    fn point(x: i64) -> Point {
        Point { x, label: format!("p{x}") }
    }

    #[test]
    fn outputs_for_the_next_stage_are_binary_and_routed_ones_json() {
        set_encodings(Encodings { input: Encoding::Binary, output: Encoding::Binary });
        let emit = Emit::encode(point(1)).unwrap().and_encode(point(2)).unwrap().route("side");
        let [next, routed] = emit.outputs() else { panic!("two outputs") };
        assert_eq!(next.value, postcard::to_allocvec(&point(1)).unwrap());
        assert_eq!(routed.value, br#"{"x":2,"label":"p2"}"#);
        assert_eq!(Record::from_value(next.value.clone()).decode::<Point>().unwrap(), point(1));
        let error = Record::from_value(vec![0xff; 3]).decode::<Point>().unwrap_err();
        assert_eq!(error.reason(), "invalid_value");
        assert!(error.message().starts_with("record value, in the binary form of `test.point`"), "{error}");

        set_encodings(Encodings { input: Encoding::Json, output: Encoding::Json });
        let emit = Emit::encode(point(3)).unwrap();
        assert_eq!(emit.outputs()[0].value, br#"{"x":3,"label":"p3"}"#);
        let error = Record::from_value(b"{".to_vec()).decode::<Point>().unwrap_err();
        assert_eq!(error.reason(), "invalid_json");
        assert!(error.message().starts_with("record value: EOF"), "{error}");
    }

    #[test]
    fn the_binary_form_is_named_after_the_layout() {
        let (a, b) = (value_type::<Point>(), value_type::<Point2>());
        assert_eq!((a.name.as_str(), b.name.as_str()), ("test.point", "test.point"));
        let (a, b) = (a.binary.unwrap(), b.binary.unwrap());
        assert!(a.starts_with("postcard:") && a.contains("label"), "{a}");
        assert_ne!(a, b, "a changed field changes the form");
        assert_eq!(Some(a), value_type::<Point>().binary);
    }
}
