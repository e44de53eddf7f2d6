//! One cached value as one allocation: the times, the origin order, the id
//! and the body packed into a single buffer. A `get` answers with the body
//! as a slice of it (a reference count, no copy), and the id stored beside
//! the times is what tells two ids apart when their hashes collide.

use bytes::Bytes;

use crate::tier::Entry;

/// fetched_at, fresh_until, stale_until, version, order (u64 each), the id
/// length (u32), whether there is a body (u8).
const TIMES: usize = 5 * 8;
const ID_LEN: usize = TIMES;
const HAS_BODY: usize = ID_LEN + 4;
const HEAD: usize = HAS_BODY + 1;

const FETCHED_AT: usize = 0;
const FRESH_UNTIL: usize = 8;
const STALE_UNTIL: usize = 16;
const VERSION: usize = 24;
const ORDER: usize = 32;

/// A packed entry. Cloning it is a reference count.
#[derive(Clone)]
pub(super) struct Record(Bytes);

impl Record {
    /// Packs `entry` under `id`; `None` for an id longer than 4 GiB.
    pub fn pack(id: &str, entry: &Entry) -> Option<Record> {
        let id_len = u32::try_from(id.len()).ok()?;
        let body = entry.body.as_deref();
        let mut buf = Vec::with_capacity(HEAD + id.len() + body.map_or(0, <[u8]>::len));
        for t in [
            entry.fetched_at,
            entry.fresh_until,
            entry.stale_until,
            entry.version,
            entry.order,
        ] {
            buf.extend_from_slice(&t.to_ne_bytes());
        }
        buf.extend_from_slice(&id_len.to_ne_bytes());
        buf.push(u8::from(body.is_some()));
        buf.extend_from_slice(id.as_bytes());
        buf.extend_from_slice(body.unwrap_or_default());
        let bytes = Bytes::from(buf);
        // The first clone of a buffer built from a Vec allocates its shared
        // reference count; doing it here keeps that allocation (and its
        // compare-and-swap) out of the first `get`.
        drop(bytes.clone());
        Some(Record(bytes))
    }

    pub fn id(&self) -> &[u8] {
        &self.0[HEAD..self.body_start()]
    }

    pub fn stale_until(&self) -> u64 {
        self.u64_at(STALE_UNTIL)
    }

    pub fn order(&self) -> u64 {
        self.u64_at(ORDER)
    }

    /// The entry as callers know it; its body shares this buffer.
    pub fn entry(&self) -> Entry {
        let body = (self.0[HAS_BODY] != 0).then(|| self.0.slice(self.body_start()..));
        Entry {
            body,
            fetched_at: self.u64_at(FETCHED_AT),
            fresh_until: self.u64_at(FRESH_UNTIL),
            stale_until: self.stale_until(),
            version: self.u64_at(VERSION),
            order: self.order(),
        }
    }

    fn body_start(&self) -> usize {
        let mut len = [0; 4];
        len.copy_from_slice(&self.0[ID_LEN..ID_LEN + 4]);
        HEAD + u32::from_ne_bytes(len) as usize
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_ne_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_comes_back_as_it_was_packed() {
        let e = Entry {
            body: Some(Bytes::from_static(b"{\"id\":\"a\"}")),
            fetched_at: 1,
            fresh_until: 2,
            stale_until: 3,
            version: 4,
            order: u64::MAX,
        };
        let r = Record::pack("user-a", &e).expect("packed");
        assert_eq!(r.id(), b"user-a");
        assert_eq!((r.stale_until(), r.order()), (3, u64::MAX));
        assert_eq!(r.entry(), e);
    }

    #[test]
    fn a_not_found_and_an_empty_body_stay_apart() {
        let none = Entry::from_origin(None, 10, std::time::Duration::from_secs(1));
        let empty = Entry {
            body: Some(Bytes::new()),
            ..none.clone()
        };
        for e in [none, empty] {
            let r = Record::pack("", &e).expect("packed");
            assert_eq!(r.id(), b"");
            assert_eq!(r.entry(), e);
        }
    }
}
