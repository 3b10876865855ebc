//! Helpers shared by the fuzz targets.

use serde_json::Value;

/// JSON equality where numbers compare by value: serde_json (without its
/// `float_roundtrip` feature) may parse a float printed by itself one ulp away, which
/// is serde_json's business and not a waxseal round-trip bug.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    x == y || ((x - y).abs() <= f64::EPSILON * 4.0 * x.abs().max(y.abs()))
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}
