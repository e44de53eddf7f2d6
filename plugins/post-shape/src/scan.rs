//! A validating JSON scanner that builds nothing: it walks a document once,
//! accepts exactly what `serde_json` accepts when it skips a value (RFC
//! 8259), and hands the caller byte offsets:
//! where a string's text is, where a value ends, so that a post can be
//! found and rewritten in place instead of parsed into a tree and printed
//! again.

use std::borrow::Cow;
use std::ops::Range;

/// A syntax error at a byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanError {
    pub what: &'static str,
    pub at: usize,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

pub type Result<T> = std::result::Result<T, ScanError>;

/// A JSON string in the document: the bytes between its quotes, and
/// whether they hold an escape (then `decode` is needed to read it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Str {
    pub text: Range<usize>,
    pub escaped: bool,
}

/// Where an object ended: just past its last value (where an entry can be
/// appended), or, when it has none, just past its `{`; and whether it had
/// any entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectEnd {
    pub append_at: usize,
    pub empty: bool,
}

pub struct Scanner<'a> {
    src: &'a str,
    b: &'a [u8],
    i: usize,
    /// The containers `value` is inside (true: an object), kept across
    /// calls so that skipping allocates once per scan.
    open: Vec<bool>,
}

impl<'a> Scanner<'a> {
    pub fn new(src: &'a str) -> Scanner<'a> {
        Scanner {
            src,
            b: src.as_bytes(),
            i: 0,
            open: Vec::new(),
        }
    }

    /// The current offset.
    pub fn pos(&self) -> usize {
        self.i
    }

    pub fn error<T>(&self, what: &'static str) -> Result<T> {
        Err(ScanError { what, at: self.i })
    }

    pub fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    pub fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// Only whitespace is left.
    pub fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.error("trailing characters"),
        }
    }

    /// The text of a string, unescaped only when it has to be.
    pub fn decode(&self, s: &Str) -> Result<Cow<'a, str>> {
        let text = &self.src[s.text.clone()];
        if !s.escaped {
            return Ok(Cow::Borrowed(text));
        }
        // Rare: the quotes are part of the JSON string `serde_json` reads.
        let quoted = &self.src[s.text.start - 1..s.text.end + 1];
        serde_json::from_str::<String>(quoted)
            .map(Cow::Owned)
            .map_err(|_| ScanError {
                what: "invalid escape in string",
                at: s.text.start,
            })
    }

    /// Whether a key or string is exactly `name`.
    #[inline]
    pub fn is(&self, s: &Str, name: &str) -> Result<bool> {
        if !s.escaped {
            return Ok(same_bytes(&self.b[s.text.clone()], name.as_bytes()));
        }
        Ok(self.decode(s)? == name)
    }

    /// A string; the scanner must be at its opening quote.
    pub fn string(&mut self) -> Result<Str> {
        if self.peek() != Some(b'"') {
            return self.error("expected a string");
        }
        self.i += 1;
        let start = self.i;
        let escaped = self.string_rest()?;
        Ok(Str {
            text: start..self.i - 1,
            escaped,
        })
    }

    /// The rest of a string whose opening quote was read, its closing
    /// quote included; answers whether it had an escape.
    #[inline(always)]
    fn string_rest(&mut self) -> Result<bool> {
        let mut escaped = false;
        loop {
            // Most of a document is string text: look at 8 bytes at a time
            // and jump to the first quote, backslash or control byte.
            let mut chunks = self.b[self.i..].chunks_exact(8);
            for chunk in &mut chunks {
                let found = special(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
                if found != 0 {
                    self.i += (found.trailing_zeros() / 8) as usize;
                    break;
                }
                self.i += 8;
            }
            match self.b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(0..=0x1f) => return self.error("control character in string"),
                Some(_) => self.i += 1,
                None => return self.error("unterminated string"),
            }
        }
    }

    /// One escape, the scanner at its backslash.
    fn escape(&mut self) -> Result<()> {
        self.i += 1;
        match self.b.get(self.i) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
            Some(b'u') => {
                let hex = self.b.get(self.i + 1..self.i + 5);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return self.error("invalid \\u escape");
                }
                self.i += 5;
            }
            _ => return self.error("invalid escape"),
        }
        Ok(())
    }

    /// An object: `entry` is called with each key and must consume its value.
    pub fn object(
        &mut self,
        mut entry: impl FnMut(&mut Self, Str) -> Result<()>,
    ) -> Result<ObjectEnd> {
        if self.peek() != Some(b'{') {
            return self.error("expected an object");
        }
        self.i += 1;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(ObjectEnd {
                append_at: self.i - 1,
                empty: true,
            });
        }
        loop {
            let key = self.string()?;
            if self.peek() != Some(b':') {
                return self.error("expected ':'");
            }
            self.i += 1;
            entry(self, key)?;
            let after_value = self.i;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(ObjectEnd {
                        append_at: after_value,
                        empty: false,
                    });
                }
                _ => return self.error("expected ',' or '}'"),
            }
        }
    }

    /// An array: `element` is called at each element and must consume it.
    pub fn array(&mut self, mut element: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        if self.peek() != Some(b'[') {
            return self.error("expected an array");
        }
        self.i += 1;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.error("expected ',' or ']'"),
            }
        }
    }

    /// Skips one value, checking it. Iterative, like `serde_json`'s own
    /// skipping, so nesting costs no stack and has no limit (as there).
    pub fn value(&mut self) -> Result<()> {
        let r = self.skip();
        self.open.clear();
        r
    }

    fn skip(&mut self) -> Result<()> {
        loop {
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        self.open.push(true);
                        self.key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        self.open.push(false);
                        continue;
                    }
                }
                Some(b'"') => {
                    self.i += 1;
                    self.string_rest()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return self.error("expected a value"),
            }
            // A value ended: close what it ended, or go on to the next one.
            loop {
                let Some(&in_object) = self.open.last() else {
                    return Ok(());
                };
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if in_object {
                            self.key()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {
                        self.i += 1;
                        self.open.pop();
                    }
                    Some(b']') if !in_object => {
                        self.i += 1;
                        self.open.pop();
                    }
                    _ if in_object => return self.error("expected ',' or '}'"),
                    _ => return self.error("expected ',' or ']'"),
                }
            }
        }
    }

    /// A key and its colon.
    fn key(&mut self) -> Result<()> {
        if self.peek() != Some(b'"') {
            return self.error("expected a string");
        }
        self.i += 1;
        self.string_rest()?;
        if self.peek() != Some(b':') {
            return self.error("expected ':'");
        }
        self.i += 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.error("invalid literal")
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return self.error("invalid number"),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                return self.error("invalid number");
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if !self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                return self.error("invalid number");
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }
}

/// The high bit of each of the 8 bytes that is `"`, `\\` or below 0x20
/// (SWAR: after the xor a byte is zero exactly where it matched). A borrow
/// can mark a byte above a match too, never one below: the lowest mark is
/// the first special byte.
fn special(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    // Bytes below 0x20: subtracting 0x20 borrows into the high bit.
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    quote | backslash | control
}

/// Byte equality, 8 bytes at a time: a guest's `memcmp` (wasi-libc's)
/// compares one byte at a time, which made comparing a body with itself
/// cost as much as scanning it.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    for (p, q) in (&mut x).zip(&mut y) {
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        if word(p) != word(q) {
            return false;
        }
    }
    x.remainder().iter().zip(y.remainder()).all(|(p, q)| p == q)
}

/// Checks that `text` is one JSON value and nothing else.
pub fn validate(text: &str) -> Result<()> {
    let mut s = Scanner::new(text);
    s.value()?;
    s.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scanner accepts what `serde_json` accepts, and nothing else.
    #[test]
    fn agrees_with_serde_json() {
        // Deeper than serde_json's recursion limit, which skipping ignores.
        let deep = format!("{}{}", "[{\"a\":".repeat(5000), "}]".repeat(5000));
        let unclosed = "[{\"a\":".repeat(5000);
        let cases: Vec<String> = [
            r#"{}"#,
            r#"[]"#,
            r#" { "a" : [ 1 , -2.5e+3 , true , false , null , "x" ] } "#,
            r#"{"a":"\"\\\/\b\f\n\r\t\u00e9 \ud83d\ude00"}"#,
            r#""\ud800""#,
            r#"{"posts":[{"userId":"a","userSnapshot":{"old":true}}]}"#,
            "\"caf\u{e9} \u{1f600} long enough to use the wide loop\"",
            r#"0"#,
            r#"-0"#,
            r#"0.5"#,
            r#"1E5"#,
            r#"1e-5"#,
            // Rejected:
            r#""#,
            r#"{"#,
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"[1,]"#,
            r#"[1 2]"#,
            r#"{a:1}"#,
            r#"{"a":1}}"#,
            r#"{"a":1} x"#,
            r#"01"#,
            r#"-"#,
            r#"1."#,
            r#".5"#,
            r#"1e"#,
            r#"+1"#,
            r#"tru"#,
            r#"nul"#,
            r#"truex"#,
            r#""\x""#,
            r#""\u12G4""#,
            "\"tab\there\"",
            "\"nl\nhere in a longer string\"",
            r#""unterminated"#,
            r#"{"a":1,"b"}"#,
            r#"[1]]"#,
            "\u{feff}{}",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([deep, unclosed])
        .collect();
        for text in &cases {
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(validate(text).is_ok(), serde, "{text}");
        }
    }

    #[test]
    fn the_wide_check_finds_the_first_special_byte() {
        for first in [b'"', b'\\', 0u8, 0x1f, b'\n'] {
            for at in 0..8 {
                for later in [b'"', 0u8, b'x'] {
                    let mut w = *b"abcdefgh";
                    w[at] = first;
                    if at < 7 {
                        w[7] = later;
                    }
                    let found = special(u64::from_le_bytes(w));
                    assert_eq!(found.trailing_zeros() / 8, at as u32, "{first} at {at}");
                }
            }
        }
        assert_eq!(special(u64::from_le_bytes(*b" ~!#[]{}")), 0);
        assert_eq!(
            special(u64::from_le_bytes([
                0xc3, 0xa9, 0x7f, 0x20, 0xff, 0x80, b'z', b'A'
            ])),
            0
        );
    }

    #[test]
    fn same_bytes_is_equality() {
        let long = "0123456789abcdefghij";
        for (a, b) in [
            ("", ""),
            ("a", "a"),
            ("a", "b"),
            (long, long),
            (long, "0123456789abcdefghiX"),
            ("01234567", "0123456X"),
            (long, "0123"),
        ] {
            assert_eq!(same_bytes(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
        }
    }

    #[test]
    fn strings_report_where_their_text_is() {
        let src = r#"{"k\u0065y":"v"}"#;
        let mut s = Scanner::new(src);
        let mut seen = Vec::new();
        let end = s
            .object(|s, key| {
                let v = s.string()?;
                seen.push((s.decode(&key)?.into_owned(), s.is(&key, "key")?, v));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen[0].0, "key");
        assert!(seen[0].1);
        assert_eq!(&src[seen[0].2.text.clone()], "v");
        assert_eq!(
            end,
            ObjectEnd {
                append_at: 15,
                empty: false
            }
        );
    }
}
