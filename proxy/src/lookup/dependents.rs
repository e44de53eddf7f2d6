//! Caches derived from users' profiles that must be forgotten with them:
//! the notification stream's follower lists are one. They register here
//! once; every forget of an id on this instance (a local invalidation, a
//! backplane message from another instance, a clear) reaches them in the
//! same call, so they follow the profile tiers without a wiring of their
//! own through every invalidation path.

use std::sync::{Arc, RwLock};

/// A cache keyed by user id.
pub trait Dependent: Send + Sync {
    /// Drops what is held for `id`, and keeps a load of it in flight from
    /// storing what it read.
    fn forget(&self, id: &str);
    /// Drops everything.
    fn forget_all(&self);
}

#[derive(Default)]
pub struct Dependents {
    list: RwLock<Vec<Arc<dyn Dependent>>>,
}

impl Dependents {
    pub fn add(&self, d: Arc<dyn Dependent>) {
        self.list.write().unwrap_or_else(|p| p.into_inner()).push(d);
    }

    pub fn forget(&self, id: &str) {
        for d in self.list.read().unwrap_or_else(|p| p.into_inner()).iter() {
            d.forget(id);
        }
    }

    pub fn forget_all(&self) {
        for d in self.list.read().unwrap_or_else(|p| p.into_inner()).iter() {
            d.forget_all();
        }
    }
}
