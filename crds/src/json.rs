//! Walking JSON as serde_json reads it, without building it: the receiver
//! skips what its pointers do not need, the consumer checks that a body is
//! JSON `jsonb` can hold. Both must accept exactly what a full parse accepts.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Walks one JSON value, handing every string and object key to the
/// function it holds. Through `deserialize_any`, so serde_json's checks and
/// its nesting limit (128) hold as when building a `serde_json::Value`.
#[derive(Clone, Copy)]
pub struct Walk<F>(pub F);

/// A walk that looks at nothing: checks and skips a value.
pub const SKIP: Walk<fn(&str)> = Walk(ignore);

fn ignore(_: &str) {}

impl<'de, F: Fn(&str) + Copy> DeserializeSeed<'de> for Walk<F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, F: Fn(&str) + Copy> Visitor<'de> for Walk<F> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, text: &str) -> Result<(), E> {
        (self.0)(text);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Key(self))?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

/// An object key: read as a string (UTF-8 and escapes checked, as a `Value`
/// key would be) and handed on.
struct Key<F>(Walk<F>);

impl<'de, F: Fn(&str) + Copy> DeserializeSeed<'de> for Key<F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, F: Fn(&str) + Copy> Visitor<'de> for Key<F> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<(), E> {
        (self.0.0)(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(body: &str) -> (bool, Vec<String>) {
        let seen = std::cell::RefCell::new(Vec::new());
        let mut deserializer = serde_json::Deserializer::from_str(body);
        let ok = Walk(|text: &str| seen.borrow_mut().push(text.to_owned()))
            .deserialize(&mut deserializer)
            .is_ok()
            && deserializer.end().is_ok();
        (ok, seen.into_inner())
    }

    #[test]
    fn every_string_and_key_is_handed_on_and_json_is_checked_as_serde_json_does() {
        assert_eq!(
            walk(r#"{"a":["x\u0000",1,true,null],"b\u00e9":{}}"#),
            (true, vec!["a".into(), "x\0".into(), "bé".into()])
        );
        for bad in ["{", r#"{"a":1,}"#, "[1 2]", r#""\x""#, "01"] {
            assert!(!walk(bad).0, "{bad:?} is not JSON");
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err());
        }
        for depth in [128, 129, 100_000] {
            let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let parsed = serde_json::from_str::<serde_json::Value>(&deep).is_ok();
            assert_eq!(walk(&deep).0, parsed, "{depth} levels");
        }
        let mut deserializer = serde_json::Deserializer::from_str(r#"{"a":["b"]}"#);
        assert!(SKIP.deserialize(&mut deserializer).is_ok());
    }
}
