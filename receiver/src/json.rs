//! Reading only the parts of a JSON body the endpoint needs. Every byte is
//! still checked as JSON, but values off the endpoint's pointers are skipped
//! without being built, so a 5 KB event costs a handful of allocations instead
//! of a full `serde_json::Value` tree. With a schema the whole tree is needed
//! and [`JsonReader::Full`] is used.

use std::collections::BTreeMap;
use std::fmt;

use hookline_api::json::SKIP;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The JSON pointers an endpoint reads, as a tree of reference tokens.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Paths {
    /// The whole value at this point is needed.
    whole: bool,
    children: BTreeMap<String, Paths>,
}

impl Paths {
    fn insert(&mut self, tokens: &[String]) {
        match tokens.split_first() {
            None => self.whole = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }
}

/// How a body is turned into JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JsonReader {
    /// Everything (a schema, or a pointer to the whole document).
    Full,
    /// Only the values at these pointers; the rest is checked and skipped.
    Sparse(Paths),
}

impl JsonReader {
    /// A reader for RFC 6901 `pointers`; `full` when the whole tree is needed.
    pub fn new<'a>(pointers: impl IntoIterator<Item = &'a str>, full: bool) -> JsonReader {
        let mut paths = Paths::default();
        for pointer in pointers {
            if pointer.is_empty() {
                return JsonReader::Full;
            }
            let tokens: Vec<String> = pointer
                .split('/')
                .skip(1)
                .map(|token| token.replace("~1", "/").replace("~0", "~"))
                .collect();
            paths.insert(&tokens);
        }
        if full {
            JsonReader::Full
        } else {
            JsonReader::Sparse(paths)
        }
    }

    /// Parses `body`; the result answers every configured pointer exactly as
    /// the full document would.
    pub fn parse(&self, body: &[u8]) -> serde_json::Result<Value> {
        match self {
            JsonReader::Full => serde_json::from_slice(body),
            JsonReader::Sparse(paths) => {
                let mut deserializer = serde_json::Deserializer::from_slice(body);
                let value = Sparse(paths).deserialize(&mut deserializer)?;
                deserializer.end()?;
                Ok(value)
            }
        }
    }
}

/// Builds the value at one point of the tree.
struct Sparse<'p>(&'p Paths);

impl<'de> DeserializeSeed<'de> for Sparse<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.0.whole {
            return serde::Deserialize::deserialize(deserializer);
        }
        deserializer.deserialize_any(self)
    }
}

/// Looks a key up among the wanted children without allocating it.
struct Key<'p>(&'p BTreeMap<String, Paths>);

impl<'de, 'p> DeserializeSeed<'de> for Key<'p> {
    type Value = Option<(&'p String, &'p Paths)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, 'p> Visitor<'de> for Key<'p> {
    type Value = Option<(&'p String, &'p Paths)>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.get_key_value(key))
    }
}

impl<'de> Visitor<'de> for Sparse<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        let mut index = 0usize;
        loop {
            let wanted = self.0.children.get(&index.to_string());
            let item = match wanted {
                Some(child) => seq.next_element_seed(Sparse(child))?,
                None => seq.next_element_seed(SKIP)?.map(|()| Value::Null),
            };
            match item {
                Some(item) => items.push(item),
                None => break,
            }
            index += 1;
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(wanted) = map.next_key_seed(Key(&self.0.children))? {
            match wanted {
                Some((key, child)) => {
                    let value = map.next_value_seed(Sparse(child))?;
                    object.insert(key.clone(), value);
                }
                None => map.next_value_seed(SKIP)?,
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"id":"evt_1","type":"invoice.paid","created":1700000000,
        "data":{"object":{"id":"in_1","lines":[{"id":"li_0"},{"id":"li_1"}],"big":"xxxxxxxx"}},
        "a/b":{"c~d":true}}"#;

    #[test]
    fn sparse_answers_the_pointers_like_the_full_document() {
        let pointers = [
            "/id",
            "/type",
            "/created",
            "/data/object/id",
            "/data/object/lines/1/id",
            "/a~1b/c~0d",
            "/missing/deeper",
        ];
        let full: Value = serde_json::from_str(EVENT).expect("JSON");
        let sparse = JsonReader::new(pointers, false)
            .parse(EVENT.as_bytes())
            .expect("JSON");
        for pointer in pointers {
            assert_eq!(sparse.pointer(pointer), full.pointer(pointer), "{pointer}");
        }
        assert_eq!(sparse.pointer("/data/object/big"), None, "skipped");
    }

    #[test]
    fn sparse_still_refuses_invalid_json() {
        let reader = JsonReader::new(["/id"], false);
        for bad in [
            r#"{"id":"a","x":}"#,
            r#"{"id":"a"} trailing"#,
            r#"{"id":"a","x":[1,2}"#,
            "",
        ] {
            assert!(reader.parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nesting_past_serde_jsons_limit_is_refused_by_both_readers() {
        let deep = format!(
            r#"{{"id":"a","x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let sparse = JsonReader::new(["/id"], false).parse(deep.as_bytes());
        let full = JsonReader::new(["/id"], true).parse(deep.as_bytes());
        for result in [sparse, full] {
            let err = result.expect_err("too deep");
            assert!(err.to_string().contains("recursion limit"), "{err}");
        }
        let shallow = format!(r#"{{"id":"a","x":{}{}}}"#, "[".repeat(100), "]".repeat(100));
        assert!(
            JsonReader::new(["/id"], false)
                .parse(shallow.as_bytes())
                .is_ok()
        );
    }

    #[test]
    fn a_repeated_key_takes_its_last_value_in_both_readers_like_postgres_jsonb() {
        let body = br#"{"id":"first","id":"last"}"#;
        for full in [false, true] {
            let value = JsonReader::new(["/id"], full).parse(body).expect("JSON");
            assert_eq!(value.pointer("/id"), Some(&Value::from("last")));
        }
    }

    #[test]
    fn a_pointer_to_the_whole_document_reads_everything() {
        assert!(matches!(JsonReader::new([""], false), JsonReader::Full));
    }
}
