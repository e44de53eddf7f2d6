//! `tier::codec`: `decode` never panics and only accepts the canonical
//! encoding (`encode(decode(b)) == b`); any `Entry` round-trips.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use profile_edge::tier::codec::{decode, encode};
use profile_edge::tier::Entry;

#[derive(Arbitrary, Debug)]
struct AnyEntry {
    body: Option<Vec<u8>>,
    fetched_at: u64,
    fresh_until: u64,
    stale_until: u64,
}

fuzz_target!(|data: &[u8]| {
    // The bytes as a stored value.
    if let Some(e) = decode(data) {
        assert_eq!(
            encode(&e),
            data,
            "decode accepted a non-canonical value: {e:?}"
        );
    }
    // The same bytes as the recipe for an entry.
    if let Ok(a) = AnyEntry::arbitrary_take_rest(Unstructured::new(data)) {
        let e = Entry {
            body: a.body.map(Bytes::from),
            fetched_at: a.fetched_at,
            fresh_until: a.fresh_until,
            stale_until: a.stale_until,
        };
        let bytes = encode(&e);
        assert_eq!(decode(&bytes), Some(e), "round trip of {bytes:?}");
    }
});
