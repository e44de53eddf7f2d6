//! Helpers the fuzz targets share: the id rules they check against, and
//! reference versions of the properties the proxy promises, written
//! independently of the code under test.

use std::sync::OnceLock;

use profile_edge::config::ProfilesConfig;
use profile_edge::lookup::IdRules;
use regex::Regex;

/// `profiles.id_pattern` as the proxy ships it (read from its default, so
/// the target follows the default if it changes).
pub fn default_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(&ProfilesConfig::default().id_pattern).expect("default id_pattern compiles")
    })
}

/// A pattern that lets the safety checks (not the pattern) do the work.
pub fn permissive_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new("^.{1,128}$").expect("permissive pattern compiles"))
}

/// Rules picked by one input byte: bit 0 chooses the pattern, the other
/// bits `max_request_ids` (0 means the default, 1000). Returns the max too,
/// since `IdRules` does not expose it.
pub fn rules_from(selector: u8) -> (IdRules, usize) {
    let re = if selector & 1 == 0 {
        default_pattern()
    } else {
        permissive_pattern()
    };
    let max = match selector >> 1 {
        0 => ProfilesConfig::default().max_request_ids,
        n => usize::from(n),
    };
    (IdRules::new(re.clone(), max), max)
}

/// What an accepted id must never be, whatever the pattern: a path
/// separator, a control character, or a dot segment.
pub fn is_path_safe(id: &str) -> bool {
    id != "." && id != ".." && !id.contains(['/', '\\']) && !id.chars().any(char::is_control)
}

/// Strict percent-decoding: every `%` starts exactly two hex digits, and
/// the bytes must be UTF-8.
pub fn reference_percent_decode(raw: &str) -> Option<String> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = (*b.get(i + 1)? as char).to_digit(16)?;
            let lo = (*b.get(i + 2)? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// First occurrences, in order.
pub fn reference_dedup(ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    out
}

/// No id twice.
pub fn all_distinct(ids: &[String]) -> bool {
    let mut seen = std::collections::HashSet::new();
    ids.iter().all(|id| seen.insert(id))
}
