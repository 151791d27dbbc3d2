//! Prints a value tree back in the NATS configuration format, so generated trees can be
//! round-tripped through the parser (property test) and effective settings can be shown as a
//! config file.

use super::conf::{Map, Spanned, Value};
use std::fmt::Write;

pub fn print(map: &Map) -> String {
    let mut out = String::new();
    for (key, value) in map {
        print_pair(&mut out, key, value, 0);
    }
    out
}

fn print_pair(out: &mut String, key: &str, value: &Spanned, indent: usize) {
    out.push_str(&"  ".repeat(indent));
    out.push_str(&key_text(key));
    out.push_str(": ");
    print_value(out, &value.value, indent);
    out.push('\n');
}

fn print_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::String(s) => out.push_str(&quote(s)),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                print_value(out, &item.value, indent);
            }
            out.push(']');
        }
        Value::Map(map) => {
            out.push_str("{\n");
            for (k, v) in map {
                print_pair(out, k, v, indent + 1);
            }
            out.push_str(&"  ".repeat(indent));
            out.push('}');
        }
    }
}

/// Bare keys are letters, digits and `_`; anything else is quoted.
fn key_text(key: &str) -> String {
    let bare = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.eq_ignore_ascii_case("include");
    if bare {
        key.to_string()
    } else {
        quote(key)
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::conf::{parse_str, Pos};
    use proptest::prelude::*;

    fn pos() -> Pos {
        Pos {
            file: "gen".into(),
            line: 0,
            column: 0,
        }
    }

    fn spanned(value: Value) -> Spanned {
        Spanned { value, pos: pos() }
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<String>().prop_map(Value::String),
            "[ -~]{0,20}".prop_map(Value::String),
            any::<i64>().prop_map(Value::Integer),
            (-4000i32..4000)
                .prop_filter("a fraction", |n| n % 4 != 0)
                .prop_map(|n| Value::Float(f64::from(n) / 4.0)),
            any::<bool>().prop_map(Value::Bool),
        ]
    }

    fn keys() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9_]{0,8}".prop_filter("not a directive", |k| k != "include"),
            "[a-z]{1,4}\\.[a-z>*]{1,4}",
        ]
    }

    fn tree() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone().prop_map(spanned), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(keys(), inner, 0..5).prop_map(|m| {
                    Value::Map(m.into_iter().map(|(k, v)| (k, spanned(v))).collect())
                }),
            ]
        })
    }

    /// Structural equality that ignores where values were written.
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(&p.value, &q.value))
            }
            (Value::Map(x), Value::Map(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((kp, p), (kq, q))| kp == kq && same(&p.value, &q.value))
            }
            _ => a == b,
        }
    }

    proptest! {
        #[test]
        fn print_then_parse_is_identity(doc in prop::collection::btree_map(keys(), tree(), 0..6)) {
            let map: Map = doc.into_iter().map(|(k, v)| (k, spanned(v))).collect();
            let text = print(&map);
            let parsed = parse_str(&text, "printed.conf")
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert!(same(&Value::Map(map), &Value::Map(parsed)), "{}", text);
        }
    }
}
