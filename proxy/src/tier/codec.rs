//! The byte layout of an `Entry` in shared tiers (Redis, Mongo), versioned
//! so that a future layout can be told apart: magic `PE1`, a kind byte,
//! three big-endian u64 timestamps, then the profile JSON.

use bytes::Bytes;

use super::Entry;

const MAGIC: &[u8; 3] = b"PE1";
const FOUND: u8 = 1;
const NOT_FOUND: u8 = 0;
const HEADER: usize = 3 + 1 + 8 * 3;

pub fn encode(e: &Entry) -> Vec<u8> {
    let body = e.body.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.push(if e.body.is_some() { FOUND } else { NOT_FOUND });
    out.extend_from_slice(&e.fetched_at.to_be_bytes());
    out.extend_from_slice(&e.fresh_until.to_be_bytes());
    out.extend_from_slice(&e.stale_until.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// `None` for anything that is not a well-formed entry: a value written by
/// something else under our prefix is a miss, never an error for a client.
pub fn decode(bytes: &[u8]) -> Option<Entry> {
    if bytes.len() < HEADER || &bytes[..3] != MAGIC {
        return None;
    }
    let u64_at =
        |i: usize| -> Option<u64> { bytes.get(i..i + 8)?.try_into().ok().map(u64::from_be_bytes) };
    let body = match bytes[3] {
        FOUND => Some(Bytes::copy_from_slice(&bytes[HEADER..])),
        NOT_FOUND if bytes.len() == HEADER => None,
        _ => return None,
    };
    Some(Entry {
        body,
        fetched_at: u64_at(4)?,
        fresh_until: u64_at(12)?,
        stale_until: u64_at(20)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_found_and_not_found() {
        for body in [Some(Bytes::from_static(b"{\"id\":\"a\"}")), None] {
            let e = Entry {
                body,
                fetched_at: 1,
                fresh_until: 2,
                stale_until: 3,
            };
            assert_eq!(decode(&encode(&e)), Some(e));
        }
    }

    #[test]
    fn garbage_is_absent() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"{\"id\":\"a\"}"), None);
        let mut bad = encode(&Entry {
            body: None,
            fetched_at: 1,
            fresh_until: 2,
            stale_until: 3,
        });
        bad[3] = 9;
        assert_eq!(decode(&bad), None);
    }
}
