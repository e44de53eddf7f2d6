//! The byte layout of what shared tiers (Redis, Mongo) store for an id,
//! versioned so that a future layout can be told apart: magic `PE2`, a kind
//! byte (not found, found, tombstone), three big-endian u64 timestamps, the
//! id's fleet version and the value's origin order as 16 lowercase hex
//! digits each, then the profile JSON.
//!
//! Version and order are text because the Redis tier's write script
//! (`tier::redis`) compares them inside Redis: fixed-width lowercase hex
//! compares as a string exactly as the numbers compare. Values of the old
//! `PE1` layout are not decoded: to this build they are misses, and its
//! conditional writes replace them.

use bytes::Bytes;

use super::Entry;

pub const MAGIC: &[u8; 3] = b"PE2";
const NOT_FOUND: u8 = 0;
const FOUND: u8 = 1;
const TOMBSTONE: u8 = 2;
/// Where the version's hex digits start (0-based); the Redis scripts use
/// the same offsets, 1-based.
pub const VERSION_AT: usize = 3 + 1 + 8 * 3;
pub const ORDER_AT: usize = VERSION_AT + 16;
pub const HEADER: usize = ORDER_AT + 16;

/// What a shared tier holds under an id's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A profile or a remembered "not found".
    Value(Entry),
    /// An invalidation's mark: nothing to serve, and the id's version, which
    /// writes of loads that started before it no longer match.
    Tombstone { version: u64 },
}

pub fn encode(e: &Entry) -> Vec<u8> {
    let body = e.body.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.push(if e.body.is_some() { FOUND } else { NOT_FOUND });
    out.extend_from_slice(&e.fetched_at.to_be_bytes());
    out.extend_from_slice(&e.fresh_until.to_be_bytes());
    out.extend_from_slice(&e.stale_until.to_be_bytes());
    out.extend_from_slice(hex16(e.version).as_bytes());
    out.extend_from_slice(hex16(e.order).as_bytes());
    out.extend_from_slice(body);
    out
}

/// The first bytes of every tombstone, up to its version (the Redis
/// removal script appends version and order).
pub fn tombstone_head() -> Vec<u8> {
    let mut out = Vec::with_capacity(VERSION_AT);
    out.extend_from_slice(MAGIC);
    out.push(TOMBSTONE);
    out.extend_from_slice(&[0u8; 24]);
    out
}

pub fn encode_tombstone(version: u64) -> Vec<u8> {
    let mut out = tombstone_head();
    out.extend_from_slice(hex16(version).as_bytes());
    out.extend_from_slice(hex16(0).as_bytes());
    out
}

/// A version or order as the stored text: 16 lowercase hex digits.
pub fn hex16(n: u64) -> String {
    format!("{n:016x}")
}

/// `None` for anything that is not a well-formed record: a value written by
/// something else under our prefix is a miss, never an error for a client.
/// Only the canonical encoding is accepted (`encode(decode(b)) == b`).
pub fn decode(bytes: &[u8]) -> Option<Record> {
    let mut r = decode_head(bytes)?;
    if let Record::Value(Entry { body: Some(b), .. }) = &mut r {
        *b = Bytes::copy_from_slice(&bytes[HEADER..]);
    }
    Some(r)
}

/// `decode` of a value read into a buffer of its own: the profile is that
/// buffer past the header, not a copy of it.
pub fn decode_vec(bytes: Vec<u8>) -> Option<Record> {
    let mut r = decode_head(&bytes)?;
    if let Record::Value(Entry { body: Some(b), .. }) = &mut r {
        *b = Bytes::from(bytes).slice(HEADER..);
    }
    Some(r)
}

/// `decode` with a found value's body left empty (the callers fill it).
fn decode_head(bytes: &[u8]) -> Option<Record> {
    if bytes.len() < HEADER || &bytes[..3] != MAGIC {
        return None;
    }
    let u64_at =
        |i: usize| -> Option<u64> { bytes.get(i..i + 8)?.try_into().ok().map(u64::from_be_bytes) };
    let version = parse_hex16(&bytes[VERSION_AT..ORDER_AT])?;
    let order = parse_hex16(&bytes[ORDER_AT..HEADER])?;
    let body = match bytes[3] {
        FOUND => Some(Bytes::new()),
        NOT_FOUND if bytes.len() == HEADER => None,
        TOMBSTONE if bytes.len() == HEADER && order == 0 && bytes[4..VERSION_AT] == [0u8; 24] => {
            return Some(Record::Tombstone { version });
        }
        _ => return None,
    };
    Some(Record::Value(Entry {
        body,
        fetched_at: u64_at(4)?,
        fresh_until: u64_at(12)?,
        stale_until: u64_at(20)?,
        version,
        order,
    }))
}

fn parse_hex16(text: &[u8]) -> Option<u64> {
    if text.len() != 16 || !text.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(text).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: Option<Bytes>) -> Entry {
        Entry {
            body,
            fetched_at: 1,
            fresh_until: 2,
            stale_until: 3,
            version: 7,
            order: 0x1_0000_0000,
        }
    }

    #[test]
    fn round_trips_found_not_found_and_tombstones() {
        for body in [Some(Bytes::from_static(b"{\"id\":\"a\"}")), None] {
            let e = entry(body);
            assert_eq!(decode(&encode(&e)), Some(Record::Value(e.clone())));
            assert_eq!(decode_vec(encode(&e)), Some(Record::Value(e)));
        }
        let t = encode_tombstone(u64::MAX);
        assert_eq!(decode(&t), Some(Record::Tombstone { version: u64::MAX }));
        assert_eq!(t.len(), HEADER);
    }

    #[test]
    fn version_and_order_are_fixed_width_lowercase_hex() {
        let bytes = encode(&entry(None));
        assert_eq!(&bytes[VERSION_AT..ORDER_AT], b"0000000000000007");
        assert_eq!(&bytes[ORDER_AT..HEADER], b"0000000100000000");
        // String order is number order, which the Redis script relies on.
        assert!(hex16(255) > hex16(16) && hex16(1 << 40) > hex16(u64::from(u32::MAX)));
    }

    #[test]
    fn garbage_and_other_layouts_are_absent() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"{\"id\":\"a\"}"), None);
        let mut bad = encode(&entry(None));
        bad[3] = 9;
        assert_eq!(decode(&bad), None);
        let mut upper = encode(&entry(None));
        upper[VERSION_AT] = b'A';
        assert_eq!(decode(&upper), None, "only the canonical text is read");
        let mut pe1 = encode(&entry(None));
        pe1[2] = b'1';
        assert_eq!(decode(&pe1), None, "the old layout is a miss");
        let mut t = encode_tombstone(3);
        t.push(b'x');
        assert_eq!(decode(&t), None, "a tombstone has no body");
    }
}
