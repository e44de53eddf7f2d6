//! Wording of parse problems for someone editing TOML: serde speaks of maps,
//! sequences and Rust struct names, and says nothing of the usual fix.
//! Each function answers one line.

/// The text between `start` and the next backtick, when `message` has it.
pub(super) fn quoted_after(message: &str, start: &str) -> Option<String> {
    let rest = &message[message.find(start)? + start.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

/// A multi-line message (toml's syntax errors) as one line:
/// "invalid table header\nexpected `.`, `]`" becomes
/// "invalid table header, expected `.` or `]`".
pub(super) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match (l.strip_prefix("expected "), l.rfind(", ")) {
            (Some(_), Some(i)) => format!("{} or {}", &l[..i], &l[i + 2..]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A type error at `key`, in TOML's words, with the fix when it is the
/// usual one: a table where an array of tables belongs or the reverse.
pub(super) fn type_error(key: &str, message: &str) -> String {
    let message = one_line(message);
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return message;
    };
    let Some((found, expected)) = rest.split_once(", expected ") else {
        return message;
    };
    let found_kind = match found {
        "map" => "a table".to_string(),
        "sequence" => "an array".to_string(),
        other => other.to_string(),
    };
    let table_expected = expected.starts_with("struct ") || expected == "a map";
    let expected_kind = if table_expected {
        "a table"
    } else if expected == "a sequence" {
        "an array"
    } else {
        expected
    };
    let head = format!("invalid type: {found_kind}, expected {expected_kind}");
    // `[[x]]` for an array of tables, `[x]` for a table: only header keys
    // (no index) can be written either way.
    let header = !key.contains('[') && key != "(document)";
    match (found, header) {
        ("map", true) if expected == "a sequence" => {
            format!("{head}; write [[{key}]] (an array of tables), not [{key}]")
        }
        ("sequence", true) if table_expected => {
            format!("{head}; write [{key}] (a table), not [[{key}]]")
        }
        _ => head,
    }
}

/// An unknown key, with the section's key it is a near miss of, or the
/// section's keys when none is near. `message` is serde's "unknown field
/// `x`, expected one of `a`, `b`".
pub(super) fn unknown_key(field: &str, message: &str) -> String {
    let known: Vec<&str> = message
        .split_once(", expected ")
        .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
        .unwrap_or_default();
    let nearest = known
        .iter()
        .map(|k| (edit_distance(field, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min();
    match (nearest, known.is_empty()) {
        (Some((_, k)), _) => format!("unknown key; did you mean `{k}`?"),
        (None, true) => "unknown key".into(),
        (None, false) => format!("unknown key (known: {})", known.join(", ")),
    }
}

/// Levenshtein distance, for near misses among a section's few keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(here).min(row[j])
            };
            prev = here;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_array_of_tables_mixups_get_the_fix() {
        assert_eq!(
            type_error("enrich", "invalid type: map, expected a sequence"),
            "invalid type: a table, expected an array; write [[enrich]] (an array of tables), not [enrich]"
        );
        assert_eq!(
            type_error("plugins.x", "invalid type: sequence, expected struct PluginConfig"),
            "invalid type: an array, expected a table; write [plugins.x] (a table), not [[plugins.x]]"
        );
        assert_eq!(
            type_error(
                "server.listen",
                "invalid type: integer `3`, expected socket address"
            ),
            "invalid type: integer `3`, expected socket address"
        );
    }

    #[test]
    fn near_misses_are_suggested() {
        let m = "unknown field `lisen`, expected one of `listen`, `tls`, `max_connections`";
        assert_eq!(
            unknown_key("lisen", m),
            "unknown key; did you mean `listen`?"
        );
        let far = "unknown field `colour`, expected `listen` or `tls`";
        assert_eq!(
            unknown_key("colour", far),
            "unknown key (known: listen, tls)"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn multi_line_messages_become_one() {
        assert_eq!(
            one_line("invalid table header\nexpected `.`, `]`\n"),
            "invalid table header, expected `.` or `]`"
        );
    }
}
