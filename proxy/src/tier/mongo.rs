//! The MongoDB snapshot tier, between Redis and the origin: one document
//! per user id in `tiers.mongo.collection`, read with one `$in` query per
//! batch, written with one unordered `update` command per batch.
//!
//! A document holds the profile JSON as the origin sent it (`profile`, a
//! string), its times (`fetchedAt`, `freshUntil`, `staleUntil`), `expiresAt`
//! (the TTL index removes it then), and the fence: `version` and `order`
//! with the same meaning as in Redis (`Tier`'s contract). A write matches
//! only a document still at the version its load read (and of no higher
//! origin order) and upserts; if another document is there, the upsert's
//! duplicate `_id` refuses it. A removal is not a delete: it increments
//! `version` and leaves a tombstone (`kind: "tombstone"`), so that a load
//! that read the old version cannot insert its value back in the gap a
//! delete would leave.
//!
//! The client is made at the first call (parsing a `mongodb+srv://` string
//! resolves DNS), so a server that is down at start-up stops nothing: the
//! tier is skipped by its breaker until it is back. The TTL index is
//! created in the background, retried until the server takes it.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, IndexModel};

use super::breaker::Breaker;
use super::guard::{retry_removes, Guard, Pending, Retry};
use super::{now_ms, Entry, Stored, Tier, TierError, TierKind, Written};
use crate::config::{Config, MongoTierConfig, Problem};
use crate::lifecycle::{Drain, Tasks};
use crate::mongo::client::LazyClient;

const FOUND: &str = "found";
const NOT_FOUND: &str = "not_found";
const TOMBSTONE: &str = "tombstone";
/// MongoDB's duplicate key error: here, a conditional upsert that found
/// another document in its place.
const DUPLICATE_KEY: i32 = 11000;
const INDEX_RETRY: Duration = Duration::from_secs(2);

pub struct MongoTier {
    database: String,
    collection: String,
    ttl: Duration,
    max_stale: Duration,
    connect_timeout: Duration,
    client: LazyClient,
    guard: Guard,
    pending: Pending,
}

impl MongoTier {
    /// Creates the tier without connecting; must run inside the tokio
    /// runtime (it starts the index and retry tasks).
    pub fn new(cfg: &MongoTierConfig, max_stale: Duration, tasks: &Tasks) -> Arc<MongoTier> {
        let tier = Arc::new(MongoTier {
            database: cfg.database.clone(),
            collection: cfg.collection.clone(),
            ttl: cfg.ttl.get(),
            max_stale,
            connect_timeout: cfg.connect_timeout.get(),
            client: LazyClient::new(&cfg.uri, cfg.connect_timeout.get()),
            guard: Guard {
                tier: "mongo",
                timeout: cfg.timeout.get(),
                breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown.get()),
            },
            pending: Pending::default(),
        });
        let weak = Arc::downgrade(&tier);
        tasks.spawn("mongo-remove-retry", move |drain| {
            retry_removes(weak, drain)
        });
        let weak = Arc::downgrade(&tier);
        tasks.spawn("mongo-ttl-index", move |drain| ensure_index(weak, drain));
        tier
    }

    async fn client(&self) -> Result<&Client, mongodb::error::Error> {
        self.client.get().await
    }

    async fn coll(&self) -> Result<Collection<Document>, mongodb::error::Error> {
        Ok(self
            .client()
            .await?
            .database(&self.database)
            .collection(&self.collection))
    }

    /// One `update` command with many statements, unordered; answers the
    /// indexes that failed and their codes.
    async fn update(
        &self,
        statements: Vec<Document>,
    ) -> Result<HashMap<usize, i32>, mongodb::error::Error> {
        let db = self.client().await?.database(&self.database);
        let reply = db
            .run_command(doc! {
                "update": &self.collection,
                "updates": statements,
                "ordered": false,
            })
            .await?;
        let mut failed = HashMap::new();
        if let Ok(errors) = reply.get_array("writeErrors") {
            for e in errors.iter().filter_map(Bson::as_document) {
                let index = e
                    .get_i32("index")
                    .ok()
                    .and_then(|i| usize::try_from(i).ok());
                let code = e.get_i32("code").unwrap_or(0);
                if let Some(i) = index {
                    failed.insert(i, code);
                }
            }
        }
        Ok(failed)
    }

    /// Versions of `ids` as stored now (0 for none).
    async fn versions(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, u64>, mongodb::error::Error> {
        let coll = self.coll().await?;
        let cursor = coll
            .find(doc! {"_id": {"$in": ids}})
            .projection(doc! {"version": 1})
            .await?;
        let docs: Vec<Document> = cursor.try_collect().await?;
        Ok(docs
            .iter()
            .filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), int(d, "version"))))
            .collect())
    }

    /// The update that turns a document into a tombstone with the next
    /// version.
    fn tombstone_update(&self) -> Document {
        let expires = DateTime::from_millis(millis_i64(
            now_ms().saturating_add(super::millis(self.ttl + self.max_stale)),
        ));
        doc! {
            "$inc": {"version": 1_i64},
            "$set": {"kind": TOMBSTONE, "order": 0_i64, "expiresAt": expires},
            "$unset": {"profile": "", "fetchedAt": "", "freshUntil": "", "staleUntil": ""},
        }
    }

    /// Tombstones with the next version for `ids`; answers the versions.
    async fn tombstone(&self, ids: &[String]) -> Result<Vec<u64>, mongodb::error::Error> {
        let update = self.tombstone_update();
        let statements = ids
            .iter()
            .map(|id| doc! {"q": {"_id": id}, "u": update.clone(), "upsert": true})
            .collect();
        let failed = self.update(statements).await?;
        if let Some((_, code)) = failed.iter().next() {
            return Err(mongodb::error::Error::custom(format!(
                "{} of {} tombstones refused (code {code})",
                failed.len(),
                ids.len()
            )));
        }
        let versions = self.versions(ids).await?;
        Ok(ids
            .iter()
            .map(|id| versions.get(id).copied().unwrap_or(0))
            .collect())
    }
}

/// The tier `[tiers.mongo]` describes, if the section is present.
pub fn build(cfg: &Config, tasks: &Tasks) -> Option<Result<Arc<dyn Tier>, Problem>> {
    let m = cfg.tiers.mongo.as_ref()?;
    Some(Ok(
        MongoTier::new(m, cfg.fail_safe.max_stale.get(), tasks) as Arc<dyn Tier>
    ))
}

/// Creates the TTL index on `expiresAt` (a no-op when it exists), retrying
/// while the server is away; stops on the drain or when the tier is gone.
async fn ensure_index(tier: Weak<MongoTier>, drain: Drain) {
    let mut warned = false;
    loop {
        let Some(t) = tier.upgrade() else { return };
        let made = async {
            let index = IndexModel::builder()
                .keys(doc! {"expiresAt": 1})
                .options(
                    IndexOptions::builder()
                        .name("expiresAt_ttl".to_string())
                        .expire_after(Duration::ZERO)
                        .build(),
                )
                .build();
            t.coll().await?.create_index(index).await
        };
        match tokio::time::timeout(t.connect_timeout * 5, made).await {
            Ok(Ok(_)) => {
                tracing::debug!(collection = %t.collection, "mongo TTL index in place");
                return;
            }
            Ok(Err(e)) if !warned => {
                tracing::warn!(error = %e, "cannot create the mongo TTL index yet; retrying");
                warned = true;
            }
            _ => {}
        }
        drop(t);
        tokio::select! {
            _ = tokio::time::sleep(INDEX_RETRY) => {}
            _ = drain.wait() => return,
        }
    }
}

#[async_trait::async_trait]
impl Retry for MongoTier {
    fn pending(&self) -> &Pending {
        &self.pending
    }

    fn name(&self) -> &'static str {
        "mongo"
    }

    async fn retry_remove(&self, ids: &[String]) -> bool {
        self.guard.call(self.tombstone(ids)).await.is_ok()
    }
}

#[async_trait::async_trait]
impl Tier for MongoTier {
    fn kind(&self) -> TierKind {
        TierKind::Mongo
    }

    fn stats(&self) -> serde_json::Map<String, serde_json::Value> {
        self.guard.stats()
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Stored>, TierError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let docs: Vec<Document> = self
            .guard
            .call(async {
                let cursor = self.coll().await?.find(doc! {"_id": {"$in": ids}}).await?;
                cursor.try_collect::<Vec<Document>>().await
            })
            .await?;
        let mut by_id: HashMap<String, Document> = docs
            .into_iter()
            .filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), d)))
            .collect();
        let now = now_ms();
        let any_pending = !self.pending.is_empty();
        Ok(ids
            .iter()
            .map(|id| {
                let Some(d) = by_id.remove(id) else {
                    return Stored::reached(None, 0);
                };
                let version = int(&d, "version");
                let entry = if any_pending && self.pending.contains(id) {
                    None
                } else {
                    entry_of(&d).filter(|e| e.is_usable(now))
                };
                Stored::reached(entry, version)
            })
            .collect())
    }

    async fn put_many(&self, entries: &[(String, Entry)]) -> Result<Vec<Written>, TierError> {
        let mut out = vec![Written::Skipped; entries.len()];
        let send = self.pending.writable(entries);
        if send.is_empty() {
            return Ok(out);
        }
        let now = now_ms();
        let statements: Vec<Document> = send
            .iter()
            .map(|&i| {
                let (id, e) = &entries[i];
                write_statement(id, &e.restamped(now, self.ttl, self.max_stale))
            })
            .collect();
        let failed = self.guard.call(self.update(statements)).await?;
        for (k, &i) in send.iter().enumerate() {
            out[i] = match failed.get(&k) {
                None => Written::Yes,
                Some(&DUPLICATE_KEY) => Written::Superseded,
                Some(_) => Written::Skipped,
            };
        }
        // A refused write was either superseded (the version moved on) or
        // older (a higher origin order is there): the document tells.
        let refused: Vec<String> = send
            .iter()
            .filter(|&&i| out[i] == Written::Superseded)
            .map(|&i| entries[i].0.clone())
            .collect();
        if !refused.is_empty() {
            if let Ok(now_at) = self.guard.call(self.versions(&refused)).await {
                for &i in &send {
                    let (id, e) = &entries[i];
                    if out[i] == Written::Superseded && now_at.get(id) == Some(&e.version) {
                        out[i] = Written::Older;
                    }
                }
            }
        }
        Ok(out)
    }

    async fn remove(&self, ids: &[String]) -> Result<Vec<u64>, TierError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.guard.call(self.tombstone(ids)).await;
        if result.is_err() {
            self.pending.remember("mongo", ids);
        }
        result
    }

    async fn remove_all(&self) -> Result<u64, TierError> {
        // One multi-document update: the server walks the collection, so
        // the budget is the bulk one, not the per-lookup timeout.
        let update = self.tombstone_update();
        let call = async {
            self.coll()
                .await?
                .update_many(doc! {}, update)
                .await
                .map(|r| r.matched_count)
        };
        match tokio::time::timeout(REMOVE_ALL_TIMEOUT, call).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(TierError::Failed {
                tier: "mongo",
                detail: e.to_string(),
            }),
            Err(_) => Err(TierError::Timeout {
                tier: "mongo",
                timeout: REMOVE_ALL_TIMEOUT,
            }),
        }
    }
}

/// Budget for tombstoning the whole collection.
const REMOVE_ALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The `update` statement for one conditional write: match the document at
/// the version the load read (none, or version 0, for 0) and of no higher
/// origin order, else the upsert collides on `_id`.
fn write_statement(id: &str, e: &Entry) -> Document {
    let mut q = doc! {"_id": id};
    if e.version == 0 {
        q.insert("version", doc! {"$in": [Bson::Null, 0_i64]});
    } else {
        q.insert("version", u64_i64(e.version));
    }
    if e.order != 0 {
        q.insert(
            "$or",
            vec![
                doc! {"order": {"$lte": u64_i64(e.order)}},
                doc! {"order": {"$exists": false}},
            ],
        );
    }
    let profile = match &e.body {
        None => Bson::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => Bson::String(text.to_string()),
            Err(_) => Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: b.to_vec(),
            }),
        },
    };
    let set = doc! {
        "kind": if e.body.is_some() { FOUND } else { NOT_FOUND },
        "profile": profile,
        "fetchedAt": DateTime::from_millis(millis_i64(e.fetched_at)),
        "freshUntil": DateTime::from_millis(millis_i64(e.fresh_until)),
        "staleUntil": DateTime::from_millis(millis_i64(e.stale_until)),
        "expiresAt": DateTime::from_millis(millis_i64(e.stale_until)),
        "version": u64_i64(e.version),
        "order": u64_i64(e.order),
    };
    doc! {"q": q, "u": {"$set": set}, "upsert": true}
}

/// The entry a document holds; `None` for a tombstone or a document that
/// is not ours (a miss, never an error for a client).
fn entry_of(d: &Document) -> Option<Entry> {
    let body = match d.get_str("kind").ok()? {
        FOUND => Some(match d.get("profile")? {
            Bson::String(s) => bytes::Bytes::from(s.clone()),
            Bson::Binary(b) => bytes::Bytes::from(b.bytes.clone()),
            _ => return None,
        }),
        NOT_FOUND => None,
        _ => return None,
    };
    let at =
        |k: &str| -> Option<u64> { u64::try_from(d.get_datetime(k).ok()?.timestamp_millis()).ok() };
    Some(Entry {
        body,
        fetched_at: at("fetchedAt")?,
        fresh_until: at("freshUntil")?,
        stale_until: at("staleUntil")?,
        version: int(d, "version"),
        order: int(d, "order"),
    })
}

/// A non-negative integer field (0 when absent or of another type).
fn int(d: &Document, key: &str) -> u64 {
    match d.get(key) {
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

fn u64_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn millis_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, order: u64, body: Option<&'static [u8]>) -> Entry {
        Entry {
            body: body.map(bytes::Bytes::from_static),
            fetched_at: 1_000,
            fresh_until: 2_000,
            stale_until: 3_000,
            version,
            order,
        }
    }

    #[test]
    fn documents_round_trip_entries() {
        for e in [
            entry(3, 7, Some(b"{\"id\":\"a\"}")),
            entry(0, 0, None),
            entry(1, 0, Some(&[0xff, 0x00])),
        ] {
            let st = write_statement("a", &e);
            let set = st
                .get_document("u")
                .and_then(|u| u.get_document("$set"))
                .expect("$set");
            assert_eq!(entry_of(set), Some(e));
        }
    }

    #[test]
    fn writes_match_the_version_read_and_no_higher_order() {
        let st = write_statement("a", &entry(0, 0, None));
        let q = st.get_document("q").expect("q");
        assert_eq!(
            q.get_document("version")
                .expect("$in")
                .get_array("$in")
                .map(Vec::len),
            Ok(2)
        );
        assert!(q.get("$or").is_none(), "no order, no order condition");
        let st = write_statement("a", &entry(5, 9, None));
        let q = st.get_document("q").expect("q");
        assert_eq!(q.get_i64("version"), Ok(5));
        assert!(q.get_array("$or").is_ok());
        assert_eq!(st.get_bool("upsert"), Ok(true));
    }

    #[test]
    fn tombstones_and_foreign_documents_hold_no_entry() {
        assert_eq!(
            entry_of(&doc! {"_id": "a", "kind": TOMBSTONE, "version": 2_i64}),
            None
        );
        assert_eq!(entry_of(&doc! {"_id": "a", "name": "someone else's"}), None);
        assert_eq!(int(&doc! {"version": "x"}, "version"), 0);
    }
}
