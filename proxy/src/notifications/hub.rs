//! The fan-out of new-post events on one instance: every event gets the
//! next id, goes into a bounded replay buffer (for `Last-Event-ID`) and to
//! every subscriber through one broadcast channel of `client_queue`
//! events. The channel's buffer is shared, so memory is bounded by
//! `client_queue + replay` events whatever the number or speed of
//! subscribers; one that falls further behind than `client_queue` learns it
//! at its next read (`Lagged`), gets `event: resync` and continues from
//! the newest event.
//!
//! Ids start at the start-up time in microseconds and count up, so they
//! keep increasing across restarts; an id this instance does not hold
//! (older than the buffer, or from another instance or boot) is a resync.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::tier::now_ms;

/// One new post as every subscriber gets it.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    /// The author's followers, when a subscriber filtering by follower was
    /// there to need them (`None`: not loaded, no filtered subscriber gets
    /// it).
    pub followers: Option<Arc<HashSet<String>>>,
    /// The whole frame: `id:`, `event: post`, `data:`.
    pub frame: Bytes,
}

impl Event {
    /// Whether a subscriber following `user` (or every post, with `None`)
    /// gets this event.
    pub fn concerns(&self, user: Option<&str>) -> bool {
        match user {
            None => true,
            Some(u) => self.followers.as_ref().is_some_and(|f| f.contains(u)),
        }
    }
}

struct Replay {
    next: u64,
    events: VecDeque<Arc<Event>>,
}

pub struct Hub {
    replay: Mutex<Replay>,
    capacity: usize,
    tx: broadcast::Sender<Arc<Event>>,
}

/// A new subscriber: what it missed since its `Last-Event-ID`, then live
/// events from `rx`.
pub struct Subscription {
    pub backlog: VecDeque<Arc<Event>>,
    /// Its `Last-Event-ID` is not in the buffer: it starts with a resync.
    pub resync: bool,
    pub rx: broadcast::Receiver<Arc<Event>>,
}

impl Hub {
    pub fn new(replay: usize, client_queue: usize) -> Hub {
        let (tx, _) = broadcast::channel(client_queue.max(1));
        Hub {
            replay: Mutex::new(Replay {
                next: now_ms().saturating_mul(1000).max(1),
                events: VecDeque::with_capacity(replay.min(4096)),
            }),
            capacity: replay.max(1),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Replay> {
        self.replay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one post; answers its id and how many subscribers were there.
    pub fn publish(&self, followers: Option<Arc<HashSet<String>>>, data: &str) -> (u64, usize) {
        let mut r = self.lock();
        let id = r.next;
        r.next += 1;
        let frame = Bytes::from(format!("id: {id}\nevent: post\ndata: {data}\n\n"));
        let event = Arc::new(Event {
            id,
            followers,
            frame,
        });
        if r.events.len() == self.capacity {
            r.events.pop_front();
        }
        r.events.push_back(event.clone());
        // Under the lock, so a subscriber joining now gets each event once:
        // from its backlog or from the channel, never both or neither.
        let receivers = self.tx.send(event).unwrap_or(0);
        (id, receivers)
    }

    /// Joins the stream after `last_seen` (a `Last-Event-ID`), or at now.
    pub fn subscribe(&self, last_seen: Option<u64>) -> Subscription {
        let r = self.lock();
        let rx = self.tx.subscribe();
        let newest = r.next - 1;
        let oldest = r.events.front().map_or(r.next, |e| e.id);
        let (backlog, resync) = match last_seen {
            None => (VecDeque::new(), false),
            Some(l) if l == newest => (VecDeque::new(), false),
            Some(l) if l + 1 >= oldest && l < newest => (
                r.events.iter().filter(|e| e.id > l).cloned().collect(),
                false,
            ),
            Some(_) => (VecDeque::new(), true),
        };
        Subscription {
            backlog,
            resync,
            rx,
        }
    }

    /// Every subscriber now (for answers and stats).
    pub fn receivers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The newest id sent, if any.
    pub fn newest(&self) -> Option<u64> {
        let r = self.lock();
        r.events.back().map(|e| e.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(q: &VecDeque<Arc<Event>>) -> Vec<u64> {
        q.iter().map(|e| e.id).collect()
    }

    #[test]
    fn resume_replays_what_was_missed_or_asks_for_a_resync() {
        let hub = Hub::new(3, 8);
        let first = hub.publish(None, "{}").0;
        for _ in 0..4 {
            hub.publish(None, "{}");
        }
        // Buffer holds first+2 ..= first+4.
        let s = hub.subscribe(Some(first + 2));
        assert_eq!(
            (ids(&s.backlog), s.resync),
            (vec![first + 3, first + 4], false)
        );
        let s = hub.subscribe(Some(first + 1));
        assert_eq!(ids(&s.backlog), vec![first + 2, first + 3, first + 4]);
        let s = hub.subscribe(Some(first + 4));
        assert!(s.backlog.is_empty() && !s.resync);
        assert!(hub.subscribe(Some(first)).resync, "older than the buffer");
        assert!(
            hub.subscribe(Some(first + 99)).resync,
            "not an id of this hub"
        );
        assert!(!hub.subscribe(None).resync);
    }

    #[test]
    fn a_slow_receiver_lags_instead_of_holding_events() {
        let hub = Hub::new(100, 2);
        let mut s = hub.subscribe(None);
        for _ in 0..5 {
            hub.publish(None, "{}");
        }
        assert!(matches!(
            s.rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(3))
        ));
    }

    #[test]
    fn followers_decide_who_a_post_concerns() {
        let hub = Hub::new(4, 4);
        let mut s = hub.subscribe(None);
        let fans: HashSet<String> = ["f1".to_string()].into();
        hub.publish(Some(Arc::new(fans)), "{}");
        hub.publish(None, "{}");
        let with = s.rx.try_recv().expect("event");
        let without = s.rx.try_recv().expect("event");
        assert!(with.concerns(None) && with.concerns(Some("f1")) && !with.concerns(Some("f2")));
        assert!(!without.concerns(Some("f1")));
        assert!(String::from_utf8_lossy(&with.frame)
            .starts_with(&format!("id: {}\nevent: post\n", with.id)));
    }
}
