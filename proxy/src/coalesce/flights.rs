//! Single-flight per id, the first layer of coalescing below `lookup`: the
//! first request for a cold id registers a flight and loads it; every
//! concurrent request for the same id waits on that flight instead of
//! loading again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::origin::LoadError;

/// What a flight ends with.
#[derive(Clone, Debug)]
pub enum FlightEnd<T: Clone> {
    Done(T),
    /// An invalidation landed while the flight was loading; its value must
    /// not be used. Waiters look the id up again.
    Superseded,
}

pub type FlightRx<T> = watch::Receiver<Option<FlightEnd<T>>>;
pub type FlightTx<T> = watch::Sender<Option<FlightEnd<T>>>;

/// The registry of loads in flight, one per id. Keys are shared with the
/// loads (`join_each`), so an id is copied once per flight.
pub struct Flights<T: Clone> {
    map: Mutex<HashMap<Arc<str>, FlightRx<T>>>,
}

/// One id's part in the loads: this caller loads it, or waits on the
/// flight someone else started.
pub enum Part<T: Clone> {
    Owner(Arc<str>, FlightTx<T>),
    Waiter(FlightRx<T>),
}

/// How a caller takes part in the loads for its ids.
pub struct Joined<T: Clone> {
    /// Ids this caller must load, with the senders to finish them.
    pub owned: Vec<(String, FlightTx<T>)>,
    /// Every requested id with the flight that will answer it.
    pub waits: Vec<(String, FlightRx<T>)>,
    /// How many ids joined a flight someone else started.
    pub coalesced: usize,
}

impl<T: Clone> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Flights<T> {
    /// Joins the flights of `ids` that exist and starts the rest.
    pub fn join(&self, ids: &[String]) -> Joined<T> {
        let mut owned = Vec::new();
        let mut waits = Vec::with_capacity(ids.len());
        let mut coalesced = 0;
        let Ok(mut map) = self.map.lock() else {
            // A poisoned registry only loses coalescing, not correctness:
            // load everything ourselves.
            for id in ids {
                let (tx, rx) = watch::channel(None);
                owned.push((id.clone(), tx));
                waits.push((id.clone(), rx));
            }
            return Joined {
                owned,
                waits,
                coalesced,
            };
        };
        for id in ids {
            match map.get(id.as_str()) {
                Some(rx) => {
                    coalesced += 1;
                    waits.push((id.clone(), rx.clone()));
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(Arc::from(id.as_str()), rx.clone());
                    owned.push((id.clone(), tx));
                    waits.push((id.clone(), rx));
                }
            }
        }
        Joined {
            owned,
            waits,
            coalesced,
        }
    }

    /// Like `join`, for callers that answer their own ids without waiting
    /// on a channel: an owner gets the id (the registry's one copy) and the
    /// sender, and nothing to wait on. Answers in the order of `ids`, with
    /// how many ids joined a flight someone else started.
    pub fn join_each<'a>(&self, ids: impl Iterator<Item = &'a str>) -> (Vec<Part<T>>, usize) {
        let mut parts = Vec::with_capacity(ids.size_hint().0);
        let mut coalesced = 0;
        let mut map = self.map.lock().ok();
        for id in ids {
            let Some(map) = map.as_mut() else {
                // A poisoned registry only loses coalescing, not
                // correctness: load everything ourselves.
                let (tx, _) = watch::channel(None);
                parts.push(Part::Owner(Arc::from(id), tx));
                continue;
            };
            match map.get(id) {
                Some(rx) => {
                    coalesced += 1;
                    parts.push(Part::Waiter(rx.clone()));
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    let id: Arc<str> = Arc::from(id);
                    map.insert(id.clone(), rx);
                    parts.push(Part::Owner(id, tx));
                }
            }
        }
        (parts, coalesced)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.map.lock().map(|m| m.contains_key(id)).unwrap_or(false)
    }

    /// Forgets the flight of `id` if it is the one `tx` feeds (an
    /// invalidation may have replaced it with a newer one).
    pub fn finish(&self, id: &str, tx: &FlightTx<T>) {
        if let Ok(mut map) = self.map.lock() {
            if map
                .get(id)
                .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
            {
                map.remove(id);
            }
        }
    }

    /// Whether the flight of `id` is still the one `tx` feeds (no
    /// invalidation detached it).
    pub fn owns(&self, id: &str, tx: &FlightTx<T>) -> bool {
        self.map.lock().is_ok_and(|map| {
            map.get(id)
                .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
        })
    }

    /// Detaches the flight of `id` so that later requests start a new one.
    pub fn detach(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }

    /// Detaches every flight (memory was cleared: loads in flight are all
    /// superseded).
    pub fn detach_all(&self) {
        if let Ok(mut map) = self.map.lock() {
            map.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Waits for a flight's end; a flight whose owner vanished (its task was
/// cancelled or panicked) ends as a failure, never as a hang.
pub async fn wait<T: Clone>(mut rx: FlightRx<T>) -> Result<FlightEnd<T>, LoadError> {
    match rx.wait_for(|v| v.is_some()).await {
        Ok(v) => v
            .clone()
            .ok_or(LoadError::Abandoned("flight ended without a value")),
        Err(_) => Err(LoadError::Abandoned("the load for this id stopped")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_caller_owns_a_flight_and_later_ones_join_it() {
        let f: Flights<u32> = Flights::default();
        let a = f.join(&ids(&["x", "y"]));
        assert_eq!(a.owned.len(), 2);
        assert_eq!(a.coalesced, 0);
        let b = f.join(&ids(&["y", "z"]));
        assert_eq!(
            b.owned.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(),
            ["z"]
        );
        assert_eq!(b.coalesced, 1);
        assert_eq!(b.waits.len(), 2);
        assert_eq!(f.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn every_waiter_gets_the_owners_result() {
        let f: Flights<u32> = Flights::default();
        let a = f.join(&ids(&["x"]));
        let b = f.join(&ids(&["x"]));
        let (id, tx) = a.owned.into_iter().next().expect("owned");
        tx.send_replace(Some(FlightEnd::Done(7)));
        f.finish(&id, &tx);
        assert!(f.is_empty());
        for (_, rx) in a.waits.into_iter().chain(b.waits) {
            assert!(matches!(wait(rx).await, Ok(FlightEnd::Done(7))));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_detached_flight_does_not_remove_its_successor() {
        let f: Flights<u32> = Flights::default();
        let old = f.join(&ids(&["x"]));
        f.detach("x");
        let new = f.join(&ids(&["x"]));
        assert_eq!(new.owned.len(), 1, "after detach a new flight starts");
        let (id, tx) = old.owned.into_iter().next().expect("owned");
        tx.send_replace(Some(FlightEnd::Superseded));
        f.finish(&id, &tx);
        assert!(
            f.contains("x"),
            "the old owner finishing left the new flight"
        );
        let (_, rx) = old.waits.into_iter().next().expect("wait");
        assert!(matches!(wait(rx).await, Ok(FlightEnd::Superseded)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_that_vanishes_fails_its_waiters() {
        let f: Flights<u32> = Flights::default();
        let a = f.join(&ids(&["x"]));
        drop(a.owned);
        let (_, rx) = a.waits.into_iter().next().expect("wait");
        assert!(matches!(wait(rx).await, Err(LoadError::Abandoned(_))));
    }
}
