//! Parameters checked against an action's JSON Schema, with messages that name the parameter.

use serde_json::{json, Value};

pub struct ParamValidator {
    inner: jsonschema::Validator,
}

/// Schema used when an action declares no parameters: an object with no properties allowed.
pub fn default_schema() -> Value {
    json!({"type": "object", "properties": {}, "additionalProperties": false})
}

impl ParamValidator {
    /// Compiles a schema; the error says what is wrong with it.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err("must be a JSON Schema with `type: object`".into());
        }
        jsonschema::meta::validate(schema).map_err(|e| format!("is not a valid JSON Schema: {e}"))?;
        let inner =
            jsonschema::validator_for(schema).map_err(|e| format!("is not a valid JSON Schema: {e}"))?;
        Ok(ParamValidator { inner })
    }

    /// Every problem with `params`, each naming the parameter; values are not echoed (they may be
    /// secrets).
    pub fn validate(&self, params: &Value) -> Result<(), Vec<String>> {
        self.validate_as(params, "parameters", "parameter")
    }

    /// As `validate`, for a document that is not parameters: problems with the whole are said of
    /// `whole` (`payload`), problems with a field of `field` (`payload field used`).
    pub fn validate_as(&self, value: &Value, whole: &str, field: &str) -> Result<(), Vec<String>> {
        let errors: Vec<String> = self
            .inner
            .iter_errors(value)
            .map(|e| {
                let path = e.instance_path().to_string();
                let at = if path.is_empty() { whole.to_owned() } else { format!("{field} {}", &path[1..]) };
                format!("{at}: {}", e.masked())
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_parameter() {
        let v = ParamValidator::compile(&json!({
            "type": "object",
            "properties": {"message": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["message"],
            "additionalProperties": false
        }))
        .unwrap();
        assert!(v.validate(&json!({"message": "hi"})).is_ok());
        let errs = v.validate(&json!({"message": 3})).unwrap_err();
        assert!(errs[0].contains("parameter message"), "{errs:?}");
        let errs = v.validate(&json!({})).unwrap_err();
        assert!(errs[0].contains("message"), "{errs:?}");
        let errs = v.validate(&json!({"message": "x", "bogus": 1})).unwrap_err();
        assert!(errs[0].contains("bogus"), "{errs:?}");
    }

    #[test]
    fn rejects_bad_schemas() {
        assert!(ParamValidator::compile(&json!({"type": "string"})).is_err());
        assert!(ParamValidator::compile(&json!({"type": "object", "properties": {"a": {"type": "wat"}}}))
            .is_err());
    }
}
