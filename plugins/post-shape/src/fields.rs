//! Fields of a profile copied into a snapshot as JSON text, not values:
//! a string field's token (quotes and escapes included) is already valid
//! JSON, so the snapshot is written by concatenation, without building the
//! profile, unescaping its strings or escaping them again.

use crate::scan::Scanner;

/// The JSON tokens of the string fields `names` of the object `json` (e.g.
/// `"Ann"`, quotes included), `None` for a field that is absent or not a
/// string. The whole object is checked; a field named twice is refused,
/// as `serde` refuses it for `SnapshotFields`.
pub fn string_fields<'a, const N: usize>(
    json: &'a str,
    names: [&str; N],
) -> Result<[Option<&'a str>; N], String> {
    let mut found: [Option<&'a str>; N] = [None; N];
    let mut seen = [false; N];
    let mut s = Scanner::new(json);
    let read = s
        .object(|s, key| {
            for (i, name) in names.iter().enumerate() {
                if !s.is(&key, name)? {
                    continue;
                }
                if seen[i] {
                    return s.error("duplicate field");
                }
                seen[i] = true;
                if s.peek() == Some(b'"') {
                    let text = s.string()?.text;
                    found[i] = Some(&json[text.start - 1..text.end + 1]);
                    return Ok(());
                }
                break;
            }
            s.value()
        })
        .and_then(|_| s.end());
    read.map(|()| found).map_err(|e| e.to_string())
}

/// Appends `text` as a JSON string.
pub fn push_json_string(out: &mut String, text: &str) {
    let plain = text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        // Rare (ids are ids): let serde_json escape it.
        out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "null".into()));
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::SnapshotFields;

    /// The same fields as `SnapshotFields`, as JSON tokens.
    #[test]
    fn agrees_with_snapshot_fields() {
        for json in [
            r#"{"id":"a","displayName":"Ann","avatarUrl":"https://a/x.png?v=1","bio":{"x":[1]}}"#,
            r#"{"avatarUrl":"u","displayName":5}"#,
            r#"{"displayName":"caf\u00e9 \"q\" \\ \ud83d\ude00","avatarUrl":null}"#,
            r#"{}"#,
            r#" { "displayName" : "spaced" } "#,
            r#"{"displayName":"a","displayName":"b"}"#,
            r#"{"displayName":"a""#,
            r#"{"display\u004eame":"escaped key"}"#,
            r#"[1]"#,
        ] {
            let serde = serde_json::from_str::<SnapshotFields>(json);
            let ours = string_fields(json, ["displayName", "avatarUrl"]);
            match (serde, ours) {
                (Ok(f), Ok([name, avatar])) => {
                    let read =
                        |t: Option<&str>| t.map(|t| serde_json::from_str::<String>(t).unwrap());
                    assert_eq!(read(name), f.display_name.map(Cow::into_owned), "{json}");
                    assert_eq!(read(avatar), f.avatar_url.map(Cow::into_owned), "{json}");
                }
                (Err(_), Err(_)) => {}
                // serde reads a sequence into a struct by position; a
                // profile is an object (the proxy checks it at the origin).
                (Ok(_), Err(_)) if json.starts_with('[') => {}
                (serde, ours) => panic!("{json}: serde {:?}, ours {ours:?}", serde.is_ok()),
            }
        }
    }

    #[test]
    fn json_strings_are_escaped_when_needed() {
        for text in ["plain-id", "quo\"te", "back\\slash", "tab\there", "é"] {
            let mut out = String::new();
            push_json_string(&mut out, text);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
        }
    }
}
