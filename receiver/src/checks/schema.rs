//! Schema (422): the body against `request.schema`, compiled once at start.

use serde_json::Value;

use crate::{Error, Rejection, Result};

/// Most schema violations named in one answer.
const MAX_SCHEMA_PROBLEMS: usize = 3;

/// Longest schema-violation message returned.
const MAX_SCHEMA_MESSAGE: usize = 300;

/// An endpoint's compiled JSON schema.
pub struct Schema(jsonschema::Validator);

impl Schema {
    /// Compiles `schema`; a schema that does not compile is a start-up error.
    pub fn compile(schema: &Value) -> Result<Schema> {
        jsonschema::validator_for(schema)
            .map(Schema)
            .map_err(|err| Error::SchemaCompile(err.to_string()))
    }

    /// Refuses `json` when it breaks the schema, naming the first few failing
    /// paths in a message of bounded length.
    pub fn check(&self, json: &Value) -> Result<(), Rejection> {
        let problems: Vec<String> = self
            .0
            .iter_errors(json)
            .take(MAX_SCHEMA_PROBLEMS)
            .map(|err| {
                let path = err.instance_path().to_string();
                let path = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                format!("at {path}: {err}")
            })
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        let mut message = problems.join("; ");
        if message.len() > MAX_SCHEMA_MESSAGE {
            let cut = (0..=MAX_SCHEMA_MESSAGE)
                .rev()
                .find(|index| message.is_char_boundary(*index))
                .unwrap_or(0);
            message.truncate(cut);
            message.push('…');
        }
        Err(Rejection::SchemaViolation(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_names_the_path_and_stays_short() {
        let schema = Schema::compile(&serde_json::json!({
            "type": "object",
            "properties": {"id": {"type": "integer"}, "name": {"maxLength": 1}}
        }))
        .expect("compiles");
        assert!(schema.check(&serde_json::json!({"id": 1})).is_ok());
        let long = "x".repeat(1000);
        let Err(Rejection::SchemaViolation(message)) =
            schema.check(&serde_json::json!({"id": "one", "name": long}))
        else {
            panic!("a schema violation expected");
        };
        assert!(message.contains("at /id"), "{message}");
        assert!(
            message.chars().count() <= MAX_SCHEMA_MESSAGE + 1,
            "{message}"
        );
    }
}
