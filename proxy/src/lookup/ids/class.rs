//! The common shape of `profiles.id_pattern`, one character class with a
//! length bound (`^[0-9a-fA-F-]{1,64}$`, `^[0-9]{1,20}$`), checked as a
//! byte table instead of through the regex engine: every profile request
//! checks its id, and the table is a few instructions per byte where the
//! regex's lazy DFA costs several hundred per id. Any other pattern (or
//! any syntax this parser is not sure it reads exactly as the regex crate
//! does) is left to the regex.

/// `^[class]{min,max}$` over ASCII bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByteClass {
    /// Bit `b` set: ASCII byte `b` is in the class.
    allowed: u128,
    min: usize,
    max: usize,
}

impl ByteClass {
    /// `None` unless `pattern` is exactly an anchored ASCII class with a
    /// quantifier, in the regex crate's syntax.
    pub fn parse(pattern: &str) -> Option<ByteClass> {
        let body = pattern.strip_prefix('^')?.strip_suffix('$')?;
        let body = body.strip_prefix('[')?;
        let close = class_end(body)?;
        let allowed = parse_items(&body[..close])?;
        let (min, max) = quantifier(&body[close + 1..])?;
        Some(ByteClass { allowed, min, max })
    }

    pub fn is_match(&self, id: &str) -> bool {
        let b = id.as_bytes();
        // Class members are ASCII, so bytes and characters count the same.
        b.len() >= self.min
            && b.len() <= self.max
            && b.iter().all(|&c| c < 128 && self.allowed >> c & 1 == 1)
    }

    /// Whether an id the class accepts is always safe as a path segment
    /// and key (no `/`, `\`, control character or `.`), so that the
    /// separate safety check can be skipped.
    pub fn only_safe_ids(&self) -> bool {
        let unsafe_bytes = (1u128 << b'/')
            | (1u128 << b'\\')
            | (1u128 << b'.')
            | (1u128 << 127)
            | ((1u128 << 32) - 1);
        self.allowed & unsafe_bytes == 0
    }
}

/// Index of the `]` that closes the class. A `[` inside (a nested class or
/// a POSIX class), a leading `]` or `^`, or set operators (`&&`, `--`,
/// `~~`) mean a syntax this parser does not take on.
fn class_end(body: &str) -> Option<usize> {
    if body.starts_with([']', '^']) {
        return None;
    }
    let b = body.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'[' => return None,
            b']' => return Some(i),
            c @ (b'&' | b'-' | b'~') if b.get(i + 1) == Some(&c) => return None,
            _ => i += 1,
        }
    }
    None
}

/// The members of a class body (between `[` and `]`): literals, `a-z`
/// ranges, a `-` first or last, and escaped ASCII punctuation (`\-`, `\.`).
/// Escapes with a meaning of their own (`\d`, `\w`, `\p{..}`, `\x41`) are
/// Unicode-aware in the regex crate and are refused here.
fn parse_items(items: &str) -> Option<u128> {
    let b = items.as_bytes();
    let mut allowed = 0u128;
    let mut i = 0;
    while i < b.len() {
        let (lo, next) = literal(b, i)?;
        if lo == b'-' && b[i] == b'-' && i != 0 && next != b.len() {
            // A bare `-` in the middle that is not a range operator.
            return None;
        }
        if next < b.len() && b[next] == b'-' && next + 1 < b.len() {
            let (hi, after) = literal(b, next + 1)?;
            if hi < lo || b[next + 1] == b'-' {
                return None;
            }
            for c in lo..=hi {
                allowed |= 1u128 << c;
            }
            i = after;
        } else {
            allowed |= 1u128 << lo;
            i = next;
        }
    }
    (allowed != 0).then_some(allowed)
}

/// One literal byte at `i` and where the next item starts.
fn literal(b: &[u8], i: usize) -> Option<(u8, usize)> {
    match *b.get(i)? {
        b'\\' => {
            let c = *b.get(i + 1)?;
            // `\<` and `\>` are word boundaries in the regex crate.
            (c.is_ascii_punctuation() && c != b'<' && c != b'>').then_some((c, i + 2))
        }
        c if c.is_ascii_graphic() || c == b' ' => Some((c, i + 1)),
        _ => None,
    }
}

/// `{m,n}`, `{n}`, `{m,}`, `+`, `*` or `?` (greedy; a lazy `?` suffix does
/// not change what matches, but is refused for simplicity).
fn quantifier(q: &str) -> Option<(usize, usize)> {
    match q {
        "+" => return Some((1, usize::MAX)),
        "*" => return Some((0, usize::MAX)),
        "?" => return Some((0, 1)),
        _ => {}
    }
    let inner = q.strip_prefix('{')?.strip_suffix('}')?;
    let number = |s: &str| -> Option<usize> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match inner.split_once(',') {
        None => {
            let n = number(inner)?;
            Some((n, n))
        }
        Some((m, "")) => Some((number(m)?, usize::MAX)),
        Some((m, n)) => {
            let (m, n) = (number(m)?, number(n)?);
            (m <= n).then_some((m, n))
        }
    }
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    /// Patterns the fast path must take, and check exactly as the regex.
    const TAKEN: &[&str] = &[
        "^[0-9a-fA-F-]{1,64}$",
        "^[0-9]{1,20}$",
        "^[A-Za-z0-9_-]{1,64}$",
        "^[a-z0-9]{1,8}$",
        "^[a-z]{1,8}$",
        "^[-a-z]{2,3}$",
        "^[a-z0-9]{4}$",
        "^[a-z]{0,}$",
        "^[a-z0-9]+$",
        "^[xyz]*$",
        "^[ab]?$",
        "^[A-Za-z0-9_\\-\\.]{1,10}$",
        "^[ !#-~]{1,5}$",
    ];

    /// Patterns it must leave to the regex.
    const LEFT: &[&str] = &[
        "^.{1,64}$",
        "[0-9]{1,20}",
        "^[0-9]{1,20}",
        "^[^/]{1,20}$",
        "^[\\d]{1,20}$",
        "^\\d{1,20}$",
        "^[\\w-]{1,64}$",
        "^[a-z&&[^x]]{1,3}$",
        "^[a-z--x]{1,3}$",
        "^[[:alpha:]]{1,3}$",
        "^[]a]{1,3}$",
        "^[a-z]{3,1}$",
        "^[a-z]{1, 3}$",
        "^[a-z]{1,3}?$",
        "(?i)^[a-z]{1,3}$",
        "^u[0-9]{1,20}$",
        "^[a-z]{1,3}|[0-9]$",
        "^[z-a]{1,3}$",
        "^[a-z-0]{1,3}$",
        "^[é]{1,3}$",
        "^[a-z]$",
    ];

    #[test]
    fn common_patterns_are_taken_and_others_left_to_the_regex() {
        for p in TAKEN {
            assert!(ByteClass::parse(p).is_some(), "{p} should be taken");
        }
        for p in LEFT {
            assert!(ByteClass::parse(p).is_none(), "{p} should be left");
        }
    }

    /// Every byte string up to a length, from an alphabet that straddles
    /// the classes' edges (plus non-ASCII and control characters).
    fn inputs() -> Vec<String> {
        let alphabet = [
            "0", "9", "a", "f", "g", "z", "A", "F", "Z", "-", "_", ".", "/", "\\", " ", "~", "\n",
            "\u{0}", "é", "٣", "[", "]", "^", "$",
        ];
        let mut out = vec![String::new()];
        let mut layer = vec![String::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for s in &layer {
                for a in alphabet {
                    next.push(format!("{s}{a}"));
                }
            }
            out.extend(next.iter().cloned());
            layer = next;
        }
        // Lengths around the bounds of every pattern above.
        for n in [4, 5, 7, 8, 9, 10, 11, 19, 20, 21, 63, 64, 65, 200] {
            out.push("1".repeat(n));
            out.push("a".repeat(n));
            out.push(format!("{}!", "1".repeat(n - 1)));
        }
        out
    }

    #[test]
    fn the_byte_check_agrees_with_the_regex() {
        let inputs = inputs();
        for p in TAKEN {
            let fast = ByteClass::parse(p).expect("taken");
            let re = Regex::new(p).expect("valid");
            for s in &inputs {
                assert_eq!(fast.is_match(s), re.is_match(s), "{p} on {s:?}");
            }
        }
    }

    #[test]
    fn safety_is_known_from_the_class() {
        let safe = |p: &str| ByteClass::parse(p).expect("taken").only_safe_ids();
        assert!(safe("^[0-9a-fA-F-]{1,64}$"));
        assert!(safe("^[A-Za-z0-9_-]{1,64}$"));
        assert!(!safe("^[A-Za-z0-9_\\-\\.]{1,10}$"));
        assert!(!safe("^[ !#-~]{1,5}$"));
    }
}
