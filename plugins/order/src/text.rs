//! Text that borrows from the bytes it was decoded from whenever it can.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

/// A string decoded without a copy where the decoder can lend it: always
/// from the binary form, and from JSON when it has no escapes. Otherwise
/// (an escaped JSON string) it is owned. It reads and writes as a string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    /// Whether it borrows its bytes rather than owning a copy.
    pub fn is_borrowed(&self) -> bool {
        matches!(self.0, Cow::Borrowed(_))
    }
}

impl Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(text: &'a str) -> Self {
        Text(Cow::Borrowed(text))
    }
}

impl From<String> for Text<'_> {
    fn from(text: String) -> Self {
        Text(Cow::Owned(text))
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Lend;

        impl<'de> Visitor<'de> for Lend {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }

        deserializer.deserialize_str(Lend)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Order, OrderView};

    fn order() -> Order {
        serde_json::from_str(
            r#"{"order_id":"o-1","source":"delivery","ts":"2025-02-22T08:56:14Z",
                "user":{"id":"u-1","name":"Ann \"A\" Lee","login":null},
                "store":{"id":"s-1","name":null,"city":"Москва"},
                "items":[{"product_id":"p-1","name":"Грибной суп","category":null,
                          "unit_price_cents":64100,"quantity":5,"line_total_cents":0}],
                "item_count":0,"total_cents":0}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_view_encodes_exactly_as_the_order_in_json_and_in_binary() {
        let order = order();
        let binary = postcard::to_allocvec(&order).unwrap();
        let view: OrderView<'_> = postcard::from_bytes(&binary).unwrap();
        assert_eq!(postcard::to_allocvec(&view).unwrap(), binary);
        let json = serde_json::to_vec(&order).unwrap();
        let view: OrderView<'_> = serde_json::from_slice(&json).unwrap();
        assert_eq!(serde_json::to_vec(&view).unwrap(), json);
    }

    #[test]
    fn text_borrows_from_the_binary_form_and_from_json_without_escapes() {
        let order = order();
        let binary = postcard::to_allocvec(&order).unwrap();
        let view: OrderView<'_> = postcard::from_bytes(&binary).unwrap();
        let user = view.user.as_ref().unwrap();
        assert!(view.order_id.is_borrowed() && user.name.as_ref().unwrap().is_borrowed());
        let json = serde_json::to_vec(&order).unwrap();
        let view: OrderView<'_> = serde_json::from_slice(&json).unwrap();
        let user = view.user.as_ref().unwrap();
        assert!(view.order_id.is_borrowed(), "no escapes: borrowed");
        assert!(!user.name.as_ref().unwrap().is_borrowed(), "escaped: owned");
        assert_eq!(&**user.name.as_ref().unwrap(), "Ann \"A\" Lee");
    }
}
