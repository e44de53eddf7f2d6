//! The one place ids from clients are checked: every route (profile, batch,
//! admin purge, events, enrichment) validates and folds duplicates here, so
//! a bad id never reaches a tier, a Redis key or the origin.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use regex::Regex;

use class::ByteClass;

mod class;

/// Why ids were refused; the routes turn it into 400 or 413.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// `field` names where the id came from (`id`, `ids[3]`, `userId`).
    #[error("{field} = {id:?} does not match profiles.id_pattern")]
    Invalid { field: String, id: String },
    #[error("{count} distinct ids asked; profiles.max_request_ids is {max}")]
    TooMany { count: usize, max: usize },
}

/// `profiles.id_pattern` and `profiles.max_request_ids`, compiled once per
/// config. Cloned per request, so the regex is shared, not copied (a cloned
/// `Regex` would build its own match cache).
#[derive(Clone, Debug)]
pub struct IdRules {
    pattern: Arc<Regex>,
    /// The same pattern as a byte table, when it has the common shape.
    class: Option<ByteClass>,
    max_request_ids: usize,
}

impl IdRules {
    pub fn new(pattern: Regex, max_request_ids: usize) -> IdRules {
        IdRules {
            class: ByteClass::parse(pattern.as_str()),
            pattern: Arc::new(pattern),
            max_request_ids,
        }
    }

    /// Matches `id_pattern` and is safe in a URL path segment and a Redis
    /// key whatever the pattern allows: no `/`, `\\` or control characters,
    /// not `.` or `..` (a permissive pattern must not open path traversal
    /// at the origin).
    pub fn is_valid(&self, id: &str) -> bool {
        match &self.class {
            Some(class) if class.only_safe_ids() => class.is_match(id),
            Some(class) => is_safe(id) && class.is_match(id),
            None => is_safe(id) && self.pattern.is_match(id),
        }
    }

    /// The `{id}` segment of a request path, percent-decoded, then checked
    /// like any other id: `%2e%2e` is `..` and is refused as such.
    pub fn check_path<'a>(&self, field: &str, raw: &'a str) -> Result<Cow<'a, str>, IdError> {
        let invalid = || IdError::Invalid {
            field: field.to_string(),
            id: raw.to_string(),
        };
        let id = percent_decode(raw).ok_or_else(invalid)?;
        if self.is_valid(&id) {
            Ok(id)
        } else {
            Err(invalid())
        }
    }

    /// One id, from `field`.
    pub fn check(&self, field: &str, id: &str) -> Result<(), IdError> {
        if self.is_valid(id) {
            Ok(())
        } else {
            Err(IdError::Invalid {
                field: field.to_string(),
                id: id.to_string(),
            })
        }
    }

    /// A client's list (`field[i]`): duplicates folded, first occurrence
    /// kept in order, at most `max_request_ids` distinct ids, each valid.
    pub fn check_list(&self, field: &str, ids: Vec<String>) -> Result<Vec<String>, IdError> {
        let ids = dedup(ids);
        if ids.len() > self.max_request_ids {
            return Err(IdError::TooMany {
                count: ids.len(),
                max: self.max_request_ids,
            });
        }
        for (i, id) in ids.iter().enumerate() {
            self.check(&format!("{field}[{i}]"), id)?;
        }
        Ok(ids)
    }

    /// Ids a policy named: invalid ones dropped (a policy's mistake must not
    /// reach a tier), duplicates folded, capped at `max_request_ids`.
    pub fn filter_list(&self, ids: Vec<String>) -> Vec<String> {
        let mut out = dedup(ids);
        out.retain(|id| self.is_valid(id));
        out.truncate(self.max_request_ids);
        out
    }
}

/// Ids become URL path segments and Redis keys; these characters would
/// change what such a path or key means.
fn is_safe(id: &str) -> bool {
    id != "." && id != ".." && !id.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('%') {
        return Some(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            // `from_str_radix` alone would take a sign ("%+5").
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// First occurrences, in order. Lists from feeds are short (a page of
/// posts), where a scan beats hashing copies of every id; long client lists
/// get a set.
fn dedup(mut ids: Vec<String>) -> Vec<String> {
    const SCAN_UP_TO: usize = 64;
    if ids.len() <= SCAN_UP_TO {
        let mut kept = 0;
        for i in 0..ids.len() {
            if !ids[..kept].contains(&ids[i]) {
                ids.swap(kept, i);
                kept += 1;
            }
        }
        ids.truncate(kept);
        return ids;
    }
    let mut seen = HashSet::with_capacity(ids.len());
    ids.into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(max: usize) -> IdRules {
        IdRules::new(Regex::new("^[a-z0-9]{1,8}$").expect("regex"), max)
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lists_fold_duplicates_in_order_then_check_each() {
        let r = rules(3);
        assert_eq!(
            r.check_list("ids", v(&["b", "a", "b", "c", "a"])),
            Ok(v(&["b", "a", "c"]))
        );
        assert_eq!(
            r.check_list("ids", v(&["a", "B!"])),
            Err(IdError::Invalid {
                field: "ids[1]".into(),
                id: "B!".into()
            })
        );
        assert_eq!(
            r.check_list("ids", v(&["a", "b", "c", "d"])),
            Err(IdError::TooMany { count: 4, max: 3 })
        );
    }

    #[test]
    fn long_and_short_lists_fold_the_same_way() {
        let short = v(&["c", "a", "c", "b", "a"]);
        assert_eq!(dedup(short), v(&["c", "a", "b"]));
        let long: Vec<String> = (0..200).map(|i| format!("{}", i % 70)).collect();
        let want: Vec<String> = (0..70).map(|i| format!("{i}")).collect();
        assert_eq!(dedup(long), want);
    }

    #[test]
    fn single_ids_name_their_field() {
        let e = rules(1).check("userId", "../x").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "userId = \"../x\" does not match profiles.id_pattern"
        );
    }

    #[test]
    fn path_ids_are_checked_after_percent_decoding() {
        let any = IdRules::new(Regex::new("^.{1,64}$").expect("regex"), 1);
        assert_eq!(any.check_path("id", "a%20b").as_deref(), Ok("a b"));
        assert_eq!(any.check_path("id", "abc").as_deref(), Ok("abc"));
        for bad in [
            "%2e%2e", "%2E", "..", "a%2fb", "a%5cb", "%00", "%zz", "%e2%82", "a%", "a%+5",
        ] {
            assert!(any.check_path("id", bad).is_err(), "{bad} must be refused");
        }
        // The same rule holds for ids from bodies and events.
        assert!(any.check("userId", "..").is_err());
        assert!(any.check("userId", "a/b").is_err());
        assert!(
            rules(1).check_path("id", "a%41").is_err(),
            "decoded 'aA' fails the pattern"
        );
    }

    /// The byte-table path and the regex path refuse the same ids,
    /// unsafe ones included, whether or not the class admits `.` or `/`.
    #[test]
    fn the_fast_path_and_the_regex_agree_on_validity() {
        for class in ["[a-z0-9-]", "[a-z./]", "[ -~]"] {
            let fast = IdRules::new(Regex::new(&format!("^{class}{{1,8}}$")).expect("regex"), 1);
            let slow = IdRules::new(
                Regex::new(&format!("^(?:{class}{{1,8}})$")).expect("regex"),
                1,
            );
            assert!(fast.class.is_some() && slow.class.is_none());
            for id in [
                "",
                "a",
                "abc-9",
                ".",
                "..",
                "...",
                "a/b",
                "a\\b",
                "A",
                "a b",
                "a\u{7f}",
                "é",
                "abcdefgh",
                "abcdefghi",
                "./",
                "~",
            ] {
                assert_eq!(fast.is_valid(id), slow.is_valid(id), "{class} on {id:?}");
            }
        }
    }

    #[test]
    fn policy_lists_drop_what_is_invalid() {
        assert_eq!(
            rules(2).filter_list(v(&["a", "A", "a", "b", "c"])),
            v(&["a", "b"])
        );
    }
}
