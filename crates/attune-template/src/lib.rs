//! The one template engine (minijinja), for every place a value may be computed: parameters of a
//! run now (`{{ key('name') }}`), rule parameters and workflow expressions later. Pure: no I/O; the
//! caller looks keys up and hands their values in.
//!
//! A string that is exactly one `{{ … }}` expression keeps the expression's type (a list stays a
//! list, a number a number); any other string with template syntax renders to a string; strings
//! without it are left as they are. Undefined names are errors, not empty strings.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// A template that could not be rendered: where (`parameters.password`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for Error {}

/// Whether `s` holds template syntax.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// Whether any string in `v` (keys of objects excepted) holds template syntax.
pub fn has_templates(v: &Value) -> bool {
    match v {
        Value::String(s) => is_template(s),
        Value::Array(a) => a.iter().any(has_templates),
        Value::Object(o) => o.values().any(has_templates),
        _ => false,
    }
}

/// The names `v`'s templates pass to `key()`, each once. Template errors
/// (syntax, undefined names) are reported here already.
pub fn keys_used(v: &Value, path: &str) -> Result<Vec<String>, Error> {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let env = environment(move |name: String| {
        let mut s = record.lock().unwrap_or_else(|e| e.into_inner());
        if !s.contains(&name) {
            s.push(name);
        }
        Ok(String::new())
    });
    walk(v, path, &env, &Value::Null)?;
    let names = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(names)
}

/// Checks that every template in `v` compiles, without evaluating it (for definitions rendered
/// later over a context they cannot see now, such as a rule's parameters).
pub fn check_syntax(v: &Value, path: &str) -> Result<(), Error> {
    let env = environment(|_: String| Ok(String::new()));
    let fail = |path: &str, e: minijinja::Error| Error { path: path.to_owned(), message: describe(&e) };
    match v {
        Value::String(s) if is_template(s) => match single_expression(s) {
            Some(expr) => env.compile_expression(expr).map(drop).map_err(|e| fail(path, e)),
            None => env.template_from_str(s).map(drop).map_err(|e| fail(path, e)),
        },
        Value::Array(a) => {
            a.iter().enumerate().try_for_each(|(i, x)| check_syntax(x, &format!("{path}[{i}]")))
        }
        Value::Object(o) => o.iter().try_for_each(|(k, x)| check_syntax(x, &format!("{path}.{k}"))),
        _ => Ok(()),
    }
}

/// `v` with every template rendered; `key(name)` is `keys[name]`, and a name not in `keys` is an
/// error that says so.
pub fn render(v: &Value, path: &str, keys: &HashMap<String, String>) -> Result<Value, Error> {
    let keys = keys.clone();
    let env = environment(move |name: String| {
        keys.get(&name).cloned().ok_or_else(|| {
            minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("key {name:?} is not set"))
        })
    });
    walk(v, path, &env, &Value::Null)
}

/// `v` rendered over `context` (an object of names), with `key()` refused: for values that are
/// compared or stored, never handed to an action (a concurrency key, say).
pub fn render_over(v: &Value, path: &str, context: &Value) -> Result<Value, Error> {
    render_over_with(v, path, context, &Calls::new())
}

/// `render_over` with `calls` available to the templates.
pub fn render_over_with(v: &Value, path: &str, context: &Value, calls: &Calls) -> Result<Value, Error> {
    let env = environment_with(
        |name: String| {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("key({name:?}) cannot be used here"),
            ))
        },
        calls,
    );
    walk(v, path, &env, context)
}

/// Whether a rendered value counts as true (Jinja's rule: `false`, `null`, `0`, `""`, `[]` and
/// `{}` are false; everything else is true).
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// `v` rendered over `context` (an object: its fields are the templates' names, such as `event`
/// and `rule`), leaving each `key('name')` for later: the result holds `{{ key('name') }}` where a
/// key was used, so that a secret is opened only when its task is handed out, and nothing else
/// that will be rendered again. Text that came from the context (an event's payload, say) and
/// looks like a template is escaped, so that data can never name a key or run an expression when
/// the result is rendered (`render`) later.
pub fn render_deferring_keys(v: &Value, path: &str, context: &Value) -> Result<Value, Error> {
    render_deferring_keys_with(v, path, context, &Calls::new())
}

/// `render_deferring_keys` with `calls` available to the templates (their values are data too:
/// escaped like the context's).
pub fn render_deferring_keys_with(
    v: &Value,
    path: &str,
    context: &Value,
    calls: &Calls,
) -> Result<Value, Error> {
    // Unguessable, so that no text in the context can pass for a key marker.
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error { path: path.into(), message: format!("no randomness: {e}") })?;
    let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let names = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = names.clone();
    let mark = nonce.clone();
    let env = environment_with(
        move |name: String| {
            if !valid_key_name(&name) {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("{name:?} is not a key name (letters, digits, '.', '_', '-')"),
                ));
            }
            let mut all = record.lock().unwrap_or_else(|e| e.into_inner());
            let i = all.iter().position(|n| *n == name).unwrap_or_else(|| {
                all.push(name);
                all.len() - 1
            });
            Ok(format!("\u{1}{mark}:{i}\u{1}"))
        },
        calls,
    );
    let rendered = walk(v, path, &env, context)?;
    let names = names.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(seal_for_later(rendered, &nonce, &names))
}

fn valid_key_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Escapes what would be template syntax in every string of `v`, then puts `{{ key('…') }}`
/// where the key markers of this render are.
fn seal_for_later(v: Value, nonce: &str, names: &[String]) -> Value {
    match v {
        Value::String(s) => Value::String(seal_string(&s, nonce, names)),
        Value::Array(a) => Value::Array(a.into_iter().map(|x| seal_for_later(x, nonce, names)).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, x)| (k, seal_for_later(x, nonce, names))).collect())
        }
        other => other,
    }
}

fn seal_string(s: &str, nonce: &str, names: &[String]) -> String {
    let mut out = if is_template(s) { escape(s) } else { s.to_owned() };
    for (i, name) in names.iter().enumerate() {
        out = out.replace(&format!("\u{1}{nonce}:{i}\u{1}"), &format!("{{{{ key('{name}') }}}}"));
    }
    out
}

/// A template that renders to `s`: each `{{`, `{%` and `{#` written as an expression of itself.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.chars().next() {
            Some(c @ ('{' | '%' | '#')) => {
                out.push_str(&format!("{{{{ '{{{c}' }}}}"));
                rest = &after[1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Functions without arguments a template may call besides `key()` (a workflow's `result()`,
/// `item()`, `succeeded()`, `failed()`), each with the value it returns. A function not given is
/// an error where it is called ("unknown function").
pub type Calls = serde_json::Map<String, Value>;

fn environment(
    key: impl Fn(String) -> Result<String, minijinja::Error> + Send + Sync + 'static,
) -> Environment<'static> {
    environment_with(key, &Calls::new())
}

fn environment_with(
    key: impl Fn(String) -> Result<String, minijinja::Error> + Send + Sync + 'static,
    calls: &Calls,
) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_function("key", key);
    for (name, value) in calls {
        let v = minijinja::Value::from_serialize(value);
        env.add_function(name.clone(), move || v.clone());
    }
    env
}

fn walk(v: &Value, path: &str, env: &Environment<'static>, ctx: &Value) -> Result<Value, Error> {
    Ok(match v {
        Value::String(s) if is_template(s) => one(s, path, env, ctx)?,
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| walk(x, &format!("{path}[{i}]"), env, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), walk(x, &format!("{path}.{k}"), env, ctx)?)))
                .collect::<Result<_, Error>>()?,
        ),
        other => other.clone(),
    })
}

/// The inside of a string that is exactly one `{{ … }}` expression.
fn single_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then_some(inner)
}

fn one(s: &str, path: &str, env: &Environment<'static>, ctx: &Value) -> Result<Value, Error> {
    let fail = |e: minijinja::Error| Error { path: path.to_owned(), message: describe(&e) };
    if let Some(expr) = single_expression(s) {
        let compiled = env.compile_expression(expr).map_err(fail)?;
        let out = compiled.eval(ctx).map_err(fail)?;
        if out.is_undefined() {
            return Err(Error { path: path.to_owned(), message: format!("{expr:?} is undefined") });
        }
        return serde_json::to_value(&out)
            .map_err(|e| Error { path: path.to_owned(), message: format!("the value is not JSON: {e}") });
    }
    env.render_str(s, ctx).map(Value::String).map_err(fail)
}

/// minijinja's message, with its source chain (the key function's own message included).
fn describe(e: &minijinja::Error) -> String {
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn one_expression_keeps_its_type_and_text_renders_to_text() {
        let v = json!({
            "n": "{{ 1 + 2 }}",
            "list": "{{ [1, 'a'] }}",
            "pw": "{{ key('db') }}",
            "url": "postgres://app:{{ key('db') }}@h/{{ key('name') | upper }}",
            "plain": "no template",
            "nested": [{"x": "{{ key('name') }}"}, 7],
        });
        let out = render(&v, "parameters", &keys(&[("db", "s3cr3t"), ("name", "app")])).unwrap();
        assert_eq!(
            out,
            json!({
                "n": 3, "list": [1, "a"], "pw": "s3cr3t", "url": "postgres://app:s3cr3t@h/APP",
                "plain": "no template", "nested": [{"x": "app"}, 7],
            })
        );
        let mut used = keys_used(&v, "parameters").unwrap();
        used.sort();
        assert_eq!(used, vec!["db", "name"], "each once");
    }

    #[test]
    fn errors_name_the_place_and_the_reason() {
        let e = render(&json!({"a": "{{ key('gone') }}"}), "parameters", &keys(&[])).unwrap_err();
        assert_eq!(e.path, "parameters.a");
        assert!(e.message.contains("key \"gone\" is not set"), "{e}");
        let e = keys_used(&json!({"a": ["{{ nope }}"]}), "parameters").unwrap_err();
        assert_eq!(e.path, "parameters.a[0]");
        assert!(e.message.contains("undefined"), "{e}");
        let e = keys_used(&json!({"a": "{{ key('x' }}"}), "parameters").unwrap_err();
        assert!(e.message.contains("syntax error"), "{e}");
        assert_eq!(
            check_syntax(&json!({"a": ["{{ event.x }}", "t {{ rule.ref }}"]}), "p"),
            Ok(()),
            "names are not looked up"
        );
        let e = check_syntax(&json!({"a": ["ok", "{{ event.x ) }}"]}), "p").unwrap_err();
        assert_eq!(e.path, "p.a[1]");
        let e = check_syntax(&json!({"b": "x {% if %}"}), "p").unwrap_err();
        assert!(e.message.contains("syntax error"), "{e}");
        assert!(!has_templates(&json!({"{{k}}": 1, "b": [true, null, "x"]})));
    }

    #[test]
    fn data_rendered_in_stays_data_when_rendered_again() {
        let ctx = json!({
            "event": {"payload": {
                "service": "web",
                "evil": "{{ key('db') }} {% if true %}x{% endif %} {# c #}",
                "list": ["a", "{{ 7 * 6 }}"],
                "n": 3,
            }},
            "rule": {"ref": "ops.r"},
        });
        let v = json!({
            "cmd": "restart {{ event.payload.service }} for {{ rule.ref }}",
            "count": "{{ event.payload.n }}",
            "copied": "{{ event.payload.evil }}",
            "inline": "x={{ event.payload.evil }}",
            "all": "{{ event.payload.list }}",
            "token": "{{ key('api') }}",
            "auth": "Bearer {{ key('api') }} for {{ event.payload.service }}",
        });
        let out = render_deferring_keys(&v, "parameters", &ctx).unwrap();
        assert_eq!(out["cmd"], "restart web for ops.r");
        assert_eq!(out["count"], 3, "one expression keeps its type");
        assert_eq!(out["token"], "{{ key('api') }}", "keys are left for hand-out");
        assert_eq!(out["auth"], "Bearer {{ key('api') }} for web");
        assert_eq!(keys_used(&out, "parameters").unwrap(), vec!["api"], "only the rule's own key");
        let later = render(&out, "parameters", &keys(&[("api", "T0K"), ("db", "s3cr3t")])).unwrap();
        assert_eq!(later["copied"], ctx["event"]["payload"]["evil"], "the payload's text, exactly");
        assert_eq!(later["inline"], format!("x={}", ctx["event"]["payload"]["evil"].as_str().unwrap()));
        assert_eq!(later["all"], json!(["a", "{{ 7 * 6 }}"]));
        assert_eq!(later["auth"], "Bearer T0K for web");
        let e = render_deferring_keys(&json!({"a": "{{ event.nope }}"}), "parameters", &ctx).unwrap_err();
        assert_eq!(e.path, "parameters.a");
        let e = render_deferring_keys(&json!({"a": "{{ key('a b') }}"}), "parameters", &ctx).unwrap_err();
        assert!(e.message.contains("not a key name"), "{e}");
    }
}
