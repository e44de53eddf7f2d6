//! Follower lists for `?userId=F` subscribers: the Officer's
//! `followers_path` for an author, kept in memory for `followers_ttl` and
//! loaded once however many posts or subscribers want it at the same time
//! (a flight per author, as for profiles). A post is matched against its
//! author's list once, when it is sent, never once per subscriber.
//!
//! A profile event for an author forgets their list on every instance
//! (`lookup::Dependent`: the same call that drops the profile from
//! memory), and a load in flight at that moment does not keep what it
//! read: the next post loads the list again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use moka::sync::Cache;

use crate::coalesce::{self, FlightEnd, FlightTx, Flights};
use crate::http::body;
use crate::http::upstream::Upstream;
use crate::lookup::Dependent;

/// Largest follower list read (a list is ids, so this is generous).
const MAX_BODY: usize = 4 << 20;
/// Authors whose lists are kept.
const CAPACITY: u64 = 100_000;
/// Tries of one `get` whose flights were superseded or abandoned before
/// it gives up (each is a forget or a cancelled load racing it).
const ATTEMPTS: usize = 3;

type List = Arc<HashSet<String>>;

#[derive(Clone, Debug, thiserror::Error)]
pub enum FollowersError {
    #[error("followers of {author}: {detail}")]
    Failed { author: String, detail: String },
}

/// The cache as a config builds it (path and TTL); replaced whole when
/// either changes.
struct Store {
    cache: Cache<String, List>,
    path: String,
    ttl: Duration,
}

pub struct Followers {
    store: ArcSwap<Store>,
    flights: Flights<Result<List, String>>,
    loads: AtomicU64,
}

/// Finishes an owned flight however its owner ends (a post's deadline may
/// drop it mid-load): waiters then retry instead of joining a dead flight.
struct Owned<'a> {
    flights: &'a Flights<Result<List, String>>,
    id: String,
    tx: FlightTx<Result<List, String>>,
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        self.flights.finish(&self.id, &self.tx);
    }
}

impl Followers {
    pub fn new(path: &str, ttl: Duration) -> Followers {
        Followers {
            store: ArcSwap::from_pointee(Store::new(path, ttl)),
            flights: Flights::default(),
            loads: AtomicU64::new(0),
        }
    }

    /// Applies a (re)loaded config: another path or TTL starts an empty
    /// cache.
    pub fn reconfigure(&self, path: &str, ttl: Duration) {
        let s = self.store.load();
        if s.path != path || s.ttl != ttl {
            self.store.store(Arc::new(Store::new(path, ttl)));
            self.flights.detach_all();
        }
    }

    /// Lists loaded from the Officer so far.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// The author's followers, from memory or the Officer (an unknown
    /// author has none).
    pub async fn get(&self, officer: &Upstream, author: &str) -> Result<List, FollowersError> {
        let failed = |detail: String| FollowersError::Failed {
            author: author.to_string(),
            detail,
        };
        for _ in 0..ATTEMPTS {
            let store = self.store.load_full();
            if let Some(list) = store.cache.get(author) {
                return Ok(list);
            }
            let mut joined = self.flights.join(&[author.to_string()]);
            if let Some((id, tx)) = joined.owned.pop() {
                let owned = Owned {
                    flights: &self.flights,
                    id,
                    tx,
                };
                return self.load(&store, officer, owned).await.map_err(failed);
            }
            let Some((_, rx)) = joined.waits.pop() else {
                continue;
            };
            match coalesce::wait(rx).await {
                Ok(FlightEnd::Done(r)) => return r.map_err(failed),
                // Forgotten meanwhile, or its owner gave up: look again.
                Ok(FlightEnd::Superseded) | Err(_) => continue,
            }
        }
        Err(failed("its loads kept being superseded".into()))
    }

    async fn load(
        &self,
        store: &Store,
        officer: &Upstream,
        owned: Owned<'_>,
    ) -> Result<List, String> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        let path = store.path.replace(
            "{id}",
            &percent_encoding::utf8_percent_encode(&owned.id, crate::origin::ID_SEGMENT)
                .to_string(),
        );
        let result = fetch(officer, &path).await.map(Arc::new);
        if let Ok(list) = &result {
            store.cache.insert(owned.id.clone(), list.clone());
            // A forget detaches the flight before it drops the entry; one
            // that came after the read but before the insert is seen here.
            if !self.flights.owns(&owned.id, &owned.tx) {
                store.cache.invalidate(&owned.id);
                owned.tx.send_replace(Some(FlightEnd::Superseded));
                return result;
            }
        }
        owned.tx.send_replace(Some(FlightEnd::Done(result.clone())));
        result
    }
}

impl Store {
    fn new(path: &str, ttl: Duration) -> Store {
        Store {
            cache: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .build(),
            path: path.to_string(),
            ttl,
        }
    }
}

impl Dependent for Followers {
    fn forget(&self, id: &str) {
        self.flights.detach(id);
        self.store.load().cache.invalidate(id);
    }

    fn forget_all(&self) {
        self.flights.detach_all();
        self.store.load().cache.invalidate_all();
    }
}

async fn fetch(officer: &Upstream, path: &str) -> Result<HashSet<String>, String> {
    let uri = officer.uri_for(path).map_err(|e| e.to_string())?;
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::ACCEPT, "application/json")
        .body(body::empty())
        .map_err(|e| e.to_string())?;
    let resp = officer
        .send(req, officer.timeout())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if status == StatusCode::NOT_FOUND {
        return Ok(HashSet::new());
    }
    if !status.is_success() {
        return Err(format!("the Officer answered {status}"));
    }
    let limited = http_body_util::Limited::new(resp.into_body(), MAX_BODY);
    let bytes = tokio::time::timeout(officer.timeout(), limited.collect())
        .await
        .map_err(|_| "the Officer's answer did not arrive in time".to_string())?
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Result<HashSet<String>, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        followers: Vec<serde_json::Value>,
    }
    let a: Answer = serde_json::from_slice(bytes)
        .map_err(|e| format!("the answer is not {{\"followers\": [...]}}: {e}"))?;
    // Ids as strings; other entries (objects with an id) are read by `id`.
    Ok(a.followers
        .into_iter()
        .filter_map(|v| match v {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Object(o) => {
                o.get("id").and_then(|i| i.as_str()).map(str::to_string)
            }
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_of_ids_or_objects_are_read() {
        let f = super::parse(br#"{"followers": ["a", {"id": "b"}, 7]}"#).expect("parses");
        assert!(f.contains("a") && f.contains("b") && f.len() == 2);
        assert!(super::parse(b"[]").is_err());
    }
}
