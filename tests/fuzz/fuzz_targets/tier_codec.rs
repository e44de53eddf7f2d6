//! `tier::codec`: `decode` never panics and only accepts the canonical
//! encoding (`encode(decode(b)) == b`, tombstones included); any `Entry`
//! and any tombstone round-trip.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use profile_edge::tier::codec::{decode, encode, encode_tombstone, Record};
use profile_edge::tier::Entry;

#[derive(Arbitrary, Debug)]
struct AnyEntry {
    body: Option<Vec<u8>>,
    fetched_at: u64,
    fresh_until: u64,
    stale_until: u64,
    version: u64,
    order: u64,
}

fuzz_target!(|data: &[u8]| {
    // The bytes as a stored value.
    match decode(data) {
        Some(Record::Value(e)) => {
            assert_eq!(encode(&e), data, "decode accepted a non-canonical value: {e:?}");
        }
        Some(Record::Tombstone { version }) => {
            assert_eq!(encode_tombstone(version), data, "non-canonical tombstone");
        }
        None => {}
    }
    // The same bytes as the recipe for an entry.
    if let Ok(a) = AnyEntry::arbitrary_take_rest(Unstructured::new(data)) {
        let e = Entry {
            body: a.body.map(Bytes::from),
            fetched_at: a.fetched_at,
            fresh_until: a.fresh_until,
            stale_until: a.stale_until,
            version: a.version,
            order: a.order,
        };
        let bytes = encode(&e);
        assert_eq!(decode(&bytes), Some(Record::Value(e)), "round trip of {bytes:?}");
        let t = encode_tombstone(a.version);
        assert_eq!(decode(&t), Some(Record::Tombstone { version: a.version }));
    }
});
