//! How values are shown: raw bytes, JSON text-or-base64, and one-line previews.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kvkit::KvPair;
use serde_json::{Value, json};

/// `"utf8"` with the text when the value is UTF-8, else `"base64"` with its encoding.
pub fn encode_value(value: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(value) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (STANDARD.encode(value), "base64"),
    }
}

/// Decodes a value written by [`encode_value`].
pub fn decode_value(text: &str, encoding: &str) -> Result<Vec<u8>, String> {
    match encoding {
        "utf8" => Ok(text.as_bytes().to_vec()),
        "base64" => STANDARD
            .decode(text)
            .map_err(|e| format!("invalid base64 value: {e}")),
        other => Err(format!(
            "unknown encoding {other:?} (expected \"utf8\" or \"base64\")"
        )),
    }
}

/// `{"key","value","encoding","index"}`.
pub fn pair_json(pair: &KvPair) -> Value {
    let (value, encoding) = encode_value(&pair.value);
    json!({
        "key": pair.key,
        "value": value,
        "encoding": encoding,
        "index": pair.last_index,
    })
}

/// A short one-line view of a value: text with control characters escaped and cut at
/// `width` characters, or `<N bytes, binary>`.
pub fn preview(value: &[u8], width: usize) -> String {
    let Ok(text) = std::str::from_utf8(value) else {
        return format!("<{} bytes, binary>", value.len());
    };
    let mut shown = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == width {
            shown.push('…');
            break;
        }
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Writes one line to stdout and flushes it (for streams read line by line).
pub fn line(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}
