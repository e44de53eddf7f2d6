//! Invalidation fences: the one place that decides whether a value loaded
//! for an id may still be published after invalidations raced its load.
//!
//! This fence guards this instance's memory. Every id has a local version,
//! a counter bumped by each invalidation this instance learns of (its own,
//! or another instance's through the backplane). A load takes a `Ticket`
//! with the version it started under; its value is published to memory only
//! while that is still the id's version. Counters, not wall-clock times.
//!
//! The shared tiers have their own fence, kept inside them (`tier::Tier`):
//! an invalidation first leaves a versioned tombstone there, then bumps
//! this fence, then tells the other instances, which bump theirs. So a load
//! that started before an invalidation, here or anywhere, can write its old
//! value neither to a shared tier (the tombstone's version refuses it) nor
//! to memory once the invalidation is known here (this fence refuses it).
//!
//! State exists only for ids with loads alive, so the map is bounded by the
//! loads in flight and needs no expiry: with no ticket out, nobody needs to
//! know an id's version.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

const STRIPES: usize = 64;

#[derive(Default)]
struct IdState {
    version: u64,
    /// Tickets out for this id.
    live: u32,
}

/// Keys are the loads' own ids (shared, not copied).
type Stripe = HashMap<Arc<str>, IdState>;

/// Versions per id for the loads in flight.
pub struct Fence {
    stripes: Vec<Mutex<Stripe>>,
    hasher: RandomState,
}

/// A load's claim on publishing for one id: the version it started under.
/// Hand it back with `Fence::finish` when the load is over (`TicketGuard`
/// does that on drop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    id: Arc<str>,
    version: u64,
}

impl Ticket {
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Publishing under a fence: the closure runs with the id's stripe held, so
/// an invalidation of that id cannot land between the check and the write.
pub enum Admitted<T> {
    Yes(T),
    /// An invalidation landed since the ticket was taken.
    Superseded,
}

impl Default for Fence {
    fn default() -> Self {
        Fence {
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Fence {
    fn stripe(&self, id: &str) -> MutexGuard<'_, Stripe> {
        let i = (self.hasher.hash_one(id) as usize) % self.stripes.len();
        // Sections under a stripe do not panic (map updates and tier puts
        // that do not unwind), so a poisoned stripe is still consistent.
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a load of `id` under its current version.
    pub fn begin(&self, id: &str) -> Ticket {
        self.begin_shared(&Arc::from(id))
    }

    /// `begin` for an id the load already holds shared: the fence keeps
    /// that, no copy.
    pub fn begin_shared(&self, id: &Arc<str>) -> Ticket {
        let mut s = self.stripe(id);
        let st = s.entry(id.clone()).or_default();
        st.live += 1;
        Ticket {
            id: id.clone(),
            version: st.version,
        }
    }

    /// Ends a load; forgets the id once no load holds a ticket for it.
    pub fn finish(&self, ticket: &Ticket) {
        let mut s = self.stripe(&ticket.id);
        let Some(st) = s.get_mut(&*ticket.id) else {
            return;
        };
        st.live = st.live.saturating_sub(1);
        if st.live == 0 {
            s.remove(&*ticket.id);
        }
    }

    /// Whether no invalidation of the ticket's id landed since it was taken.
    pub fn admits(&self, ticket: &Ticket) -> bool {
        admitted(&self.stripe(&ticket.id), ticket)
    }

    /// Runs `write` if the ticket is still admitted, with the id's stripe
    /// held so no invalidation can slip in between.
    pub fn publish<T>(&self, ticket: &Ticket, write: impl FnOnce() -> T) -> Admitted<T> {
        let s = self.stripe(&ticket.id);
        if !admitted(&s, ticket) {
            return Admitted::Superseded;
        }
        let out = write();
        drop(s);
        Admitted::Yes(out)
    }

    /// An invalidation of `id`: every ticket taken before it is superseded.
    /// `clear` runs under the id's stripe (the memory removal), so a load
    /// cannot publish between the bump and the removal.
    pub fn invalidate(&self, id: &str, clear: impl FnOnce()) {
        let mut s = self.stripe(id);
        if let Some(st) = s.get_mut(id) {
            st.version += 1;
        }
        clear();
    }

    /// Every ticket out, for every id, is superseded (the backplane lost
    /// track of invalidations). `clear` runs with every stripe held.
    pub fn invalidate_all(&self, clear: impl FnOnce()) {
        // Stripes are always taken in index order, and only here more than
        // one at a time, so this cannot deadlock.
        let mut held: Vec<MutexGuard<'_, Stripe>> = self
            .stripes
            .iter()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        for stripe in &mut held {
            for st in stripe.values_mut() {
                st.version += 1;
            }
        }
        clear();
    }

    /// Ids with loads alive (for tests and stats).
    pub fn tracked(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

/// The one admission rule, for a stripe already held: the id's version is
/// still the one the ticket was taken under.
fn admitted(stripe: &Stripe, ticket: &Ticket) -> bool {
    stripe
        .get(&*ticket.id)
        .is_none_or(|st| st.version == ticket.version)
}

/// Returns a ticket to its fence when dropped, however the load ends.
pub struct TicketGuard<'a> {
    fence: &'a Fence,
    pub ticket: Ticket,
}

impl<'a> TicketGuard<'a> {
    pub fn new(fence: &'a Fence, id: &str) -> TicketGuard<'a> {
        TicketGuard {
            fence,
            ticket: fence.begin(id),
        }
    }
}

impl Drop for TicketGuard<'_> {
    fn drop(&mut self) {
        self.fence.finish(&self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_started_before_an_invalidation_is_superseded() {
        let f = Fence::default();
        let old = f.begin("a");
        f.invalidate("a", || {});
        let new = f.begin("a");
        assert!(!f.admits(&old));
        assert!(f.admits(&new));
        assert!(matches!(f.publish(&old, || 1), Admitted::Superseded));
        assert!(matches!(f.publish(&new, || 2), Admitted::Yes(2)));
    }

    #[test]
    fn other_ids_are_not_fenced() {
        let f = Fence::default();
        let a = f.begin("a");
        let b = f.begin("b");
        f.invalidate("a", || {});
        assert!(!f.admits(&a));
        assert!(f.admits(&b));
    }

    #[test]
    fn invalidating_an_id_nobody_loads_keeps_no_state() {
        let f = Fence::default();
        f.invalidate("a", || {});
        assert_eq!(f.tracked(), 0);
        let t = f.begin("a");
        assert!(f.admits(&t));
    }

    #[test]
    fn invalidate_all_supersedes_every_ticket_out() {
        let f = Fence::default();
        let a = f.begin("a");
        let b = f.begin("b");
        let mut cleared = false;
        f.invalidate_all(|| cleared = true);
        assert!(cleared);
        assert!(!f.admits(&a) && !f.admits(&b));
        let a2 = f.begin("a");
        assert!(f.admits(&a2), "loads after it are admitted");
        f.finish(&a);
        f.finish(&b);
        f.finish(&a2);
        assert_eq!(f.tracked(), 0);
    }

    #[test]
    fn guards_return_tickets_on_drop() {
        let f = Fence::default();
        {
            let _g = TicketGuard::new(&f, "a");
            let _h = TicketGuard::new(&f, "a");
            assert_eq!(f.tracked(), 1);
        }
        assert_eq!(f.tracked(), 0);
    }
}
