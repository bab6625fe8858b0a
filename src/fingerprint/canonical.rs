//! Canonical JSON: one byte string per meaning, so that equal settings hash alike.
//!
//! Rules (see the stage-key recipe in the module doc of `fingerprint`):
//! - object keys are sorted by their UTF-8 bytes, whatever order the map had;
//! - no whitespace; strings are escaped the way `serde_json` escapes them;
//! - a number whose value is an integer within ±2^53 is written as that integer (`3`, `3.0` and
//!   `3e0` are the same setting once validated: the typed settings decide int or float);
//! - any other number is written in Rust's shortest round-trip exponent form (`2e-5`), so
//!   `2e-5`, `0.00002` and `2.0E-5` all become `2e-5`;
//! - `-0.0` is written as `0`.

use serde_json::Value;

/// Integer-valued floats in `[-2^63, 2^64)` are written as integers, matching how the same
/// value parses when written without a fraction (as i64 or u64).
const INTEGER_LOW: f64 = -9_223_372_036_854_775_808.0;
const INTEGER_HIGH: f64 = 18_446_744_073_709_551_616.0;

/// The canonical text of `value`.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(number) => write_number(number, out),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted explicitly: serde_json's map keeps insertion order when any crate in the
            // build enables `preserve_order`, which would make the key depend on YAML order.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|left, right| left.0.as_bytes().cmp(right.0.as_bytes()));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(item, out);
            }
            out.push('}');
        }
    }
}

fn write_number(number: &serde_json::Number, out: &mut String) {
    if let Some(integer) = number.as_i64() {
        out.push_str(&integer.to_string());
    } else if let Some(integer) = number.as_u64() {
        out.push_str(&integer.to_string());
    } else if let Some(float) = number.as_f64() {
        write_float(float, out);
    } else {
        // Arbitrary-precision numbers are not enabled in this build; keep their text.
        out.push_str(&number.to_string());
    }
}

fn write_float(float: f64, out: &mut String) {
    if float.fract() == 0.0 && (INTEGER_LOW..INTEGER_HIGH).contains(&float) {
        // `as` is exact here: the value is an integer inside i128's range.
        #[allow(clippy::cast_possible_truncation)]
        let integer = float as i128;
        out.push_str(&integer.to_string());
    } else {
        out.push_str(&format!("{float:e}"));
    }
}

fn write_string(text: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(text).expect("serializing a str to JSON cannot fail"));
}

/// `value` with integer-valued floats turned into integers, so that values equal under the
/// canonical rules compare equal (`serde_json`'s map is already sorted by key).
pub fn canonicalize(value: &Value) -> Value {
    match value {
        Value::Number(number) => match number.as_f64() {
            Some(float)
                if !number.is_i64()
                    && !number.is_u64()
                    && float.fract() == 0.0
                    && (INTEGER_LOW..INTEGER_HIGH).contains(&float) =>
            {
                #[allow(clippy::cast_possible_truncation)]
                let integer = float as i128;
                i64::try_from(integer)
                    .map(Value::from)
                    .or_else(|_| u64::try_from(integer).map(Value::from))
                    .unwrap_or_else(|_| value.clone())
            }
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(canonicalize).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| (key.clone(), canonicalize(item)))
                .collect(),
        ),
        Value::Null | Value::Bool(_) | Value::String(_) => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn equivalent_numbers_are_equal() {
        let spellings = ["2e-5", "0.00002", "2.0E-5", "0.000020"];
        let texts: Vec<String> = spellings
            .iter()
            .map(|text| canonical_json(&serde_json::from_str(text).expect("valid number")))
            .collect();
        assert!(texts.iter().all(|text| text == "2e-5"), "{texts:?}");
        assert_eq!(canonical_json(&json!(3.0)), canonical_json(&json!(3)));
        assert_eq!(canonical_json(&json!(-0.0)), "0");
        assert_ne!(canonical_json(&json!(0.1)), canonical_json(&json!(0.10000001)));
    }

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let value = json!({"b": {"z": 1, "a": [true, null]}, "a": "x\"y"});
        assert_eq!(
            canonical_json(&value),
            r#"{"a":"x\"y","b":{"a":[true,null],"z":1}}"#
        );
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            // Short decimals: serde_json's default float parser is not exactly round-trip for
            // 17-digit floats, which is why keys are computed from values, never reparsed text.
            (-1_000_000i64..1_000_000, 0u32..6)
                .prop_map(|(n, scale)| json!(n as f64 / 10f64.powi(scale as i32))),
            "[a-z\u{e9}\"\\\\]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec(("[a-e]{1,3}", inner), 0..5).prop_map(|pairs| {
                    Value::Object(pairs.into_iter().collect())
                }),
            ]
        })
    }

    // A failure here means two spellings of the same settings produce different stage keys
    // (spurious reruns) or that canonical text does not parse back to the same meaning.
    proptest! {
        #[test]
        fn reparsing_is_stable(value in arbitrary_json()) {
            let text = canonical_json(&value);
            let reparsed: Value = serde_json::from_str(&text).expect("canonical JSON parses");
            prop_assert_eq!(canonical_json(&reparsed), text.clone());
            prop_assert_eq!(canonical_json(&canonicalize(&value)), text);
        }

        #[test]
        fn float_spelling_does_not_matter(mantissa in 1u32..99_999, exponent in -12i32..12) {
            let float: f64 = format!("{mantissa}e{exponent}").parse().expect("valid float");
            let plain = serde_json::from_str::<Value>(&format!("{float}"))
                .expect("plain decimal parses");
            let exponent_form = serde_json::from_str::<Value>(&format!("{mantissa}e{exponent}"))
                .expect("exponent form parses");
            prop_assert_eq!(canonical_json(&plain), canonical_json(&exponent_form));
        }
    }
}
