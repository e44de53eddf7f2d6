//! Messages waiting to be published. While Redis cannot be reached they
//! stay here, one per id (the newest wins: an older invalidation of the
//! same id says nothing the newer one does not), up to `max` ids.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::message::Message;

pub struct Outbox {
    inner: Mutex<Inner>,
    ready: Notify,
    max: usize,
}

#[derive(Default)]
struct Inner {
    /// Per id: the order it was queued in, and the message.
    waiting: HashMap<String, (u64, Message)>,
    next: u64,
    /// Taken and not yet sent or restored.
    in_flight: usize,
}

/// What `push` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// An older message for the same id was waiting; this one replaced it.
    Replaced,
    /// The outbox is full; the message is lost (counted by the caller).
    Dropped,
}

impl Outbox {
    pub fn new(max: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, m: Message) -> Pushed {
        let mut inner = self.lock();
        let seq = inner.next;
        inner.next += 1;
        let len = inner.waiting.len();
        let outcome = match inner.waiting.get_mut(&m.id) {
            Some(slot) => {
                *slot = (seq, m);
                Pushed::Replaced
            }
            None if len >= self.max => return Pushed::Dropped,
            None => {
                inner.waiting.insert(m.id.clone(), (seq, m));
                Pushed::Queued
            }
        };
        drop(inner);
        self.ready.notify_one();
        outcome
    }

    /// Up to `n` waiting messages, oldest first, taken out, each with its
    /// place in the queue (for `restore`).
    pub fn take(&self, n: usize) -> Vec<(u64, Message)> {
        let mut inner = self.lock();
        let mut all: Vec<(u64, String)> = inner
            .waiting
            .iter()
            .map(|(id, (seq, _))| (*seq, id.clone()))
            .collect();
        all.sort_unstable();
        all.truncate(n);
        let taken: Vec<(u64, Message)> = all
            .into_iter()
            .filter_map(|(_, id)| inner.waiting.remove(&id))
            .collect();
        inner.in_flight += taken.len();
        taken
    }

    /// `n` taken messages were sent.
    pub fn sent(&self, n: usize) {
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(n);
    }

    /// Puts back messages that could not be sent, in their old places
    /// (ahead of what was queued since), unless a newer message for the
    /// same id arrived meanwhile.
    pub fn restore(&self, batch: Vec<(u64, Message)>) {
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(batch.len());
        for (seq, m) in batch {
            if inner.waiting.contains_key(&m.id) {
                continue;
            }
            inner.waiting.insert(m.id.clone(), (seq, m));
        }
        drop(inner);
        self.ready.notify_one();
    }

    /// Messages waiting to be taken.
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages not yet appended: waiting, and taken by a send in progress.
    pub fn unsent(&self) -> usize {
        let inner = self.lock();
        inner.waiting.len() + inner.in_flight
    }

    /// Resolves once something may be waiting (a push since the last take).
    pub async fn ready(&self) {
        self.ready.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::super::message::Kind;
    use super::*;

    fn m(id: &str, version: u64) -> Message {
        Message {
            kind: Kind::Invalidate,
            id: id.into(),
            version,
            from: "i".into(),
            at_us: 0,
        }
    }

    #[test]
    fn newest_per_id_wins_and_order_is_kept() {
        let o = Outbox::new(10);
        assert_eq!(o.push(m("a", 1)), Pushed::Queued);
        assert_eq!(o.push(m("b", 1)), Pushed::Queued);
        assert_eq!(o.push(m("a", 2)), Pushed::Replaced);
        let out: Vec<Message> = o.take(10).into_iter().map(|(_, m)| m).collect();
        assert_eq!(out, vec![m("b", 1), m("a", 2)]);
        assert!(o.is_empty());
    }

    #[test]
    fn a_full_outbox_drops_new_ids_but_still_replaces() {
        let o = Outbox::new(2);
        o.push(m("a", 1));
        o.push(m("b", 1));
        assert_eq!(o.push(m("c", 1)), Pushed::Dropped);
        assert_eq!(o.push(m("a", 2)), Pushed::Replaced);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn restored_messages_go_first_unless_superseded() {
        let o = Outbox::new(10);
        o.push(m("a", 1));
        o.push(m("b", 1));
        let failed = o.take(10);
        o.push(m("c", 1));
        o.push(m("b", 2));
        assert_eq!(o.unsent(), 4, "2 in flight, 2 waiting");
        o.restore(failed);
        assert_eq!(
            o.unsent(),
            3,
            "a restored, b superseded by its newer message"
        );
        let out: Vec<Message> = o.take(10).into_iter().map(|(_, m)| m).collect();
        assert_eq!(out, vec![m("a", 1), m("c", 1), m("b", 2)]);
        o.sent(3);
        assert_eq!(o.unsent(), 0);
    }
}
