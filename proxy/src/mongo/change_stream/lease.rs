//! One watcher per stream across the fleet, and where it left off: a
//! document per stream in `state_collection` holds the owner's instance id,
//! when its claim runs out, and the resume token of the last batch applied.
//!
//! Every write is conditional on the owner, so an instance that lost its
//! claim (paused past `lease`, cut off from the server) learns it at its
//! next token write and stops, and a token can only move forward under the
//! instance applying the events. Claims compare instance clocks with the
//! one that wrote `leaseUntil`: `lease` must exceed the fleet's clock skew;
//! if it does not, two watchers overlap for a while, which applies some
//! events twice (invalidations are idempotent) but loses none.

use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::Collection;

use crate::tier::now_ms;

/// MongoDB's duplicate key error: here, another instance holds the claim.
const DUPLICATE_KEY: i32 = 11000;

pub struct Lease {
    coll: Collection<Document>,
    stream: String,
    owner: String,
    lease: Duration,
}

#[derive(Debug, PartialEq)]
pub enum Claim {
    /// This instance watches; the token to resume from, if any.
    Held(Option<Bson>),
    /// Another instance does, until its claim runs out.
    Taken { owner: String },
}

impl Lease {
    pub fn new(coll: Collection<Document>, stream: &str, owner: &str, lease: Duration) -> Lease {
        Lease {
            coll,
            stream: stream.to_string(),
            owner: owner.to_string(),
            lease,
        }
    }

    fn until(&self) -> i64 {
        let ms = now_ms().saturating_add(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX));
        i64::try_from(ms).unwrap_or(i64::MAX)
    }

    /// Each call gets at most `lease`: past that the claim is worth
    /// nothing anyway, and a server that stopped answering must not hold
    /// the watcher.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.lease, fut)
            .await
            .unwrap_or_else(|_| {
                Err(Error::custom(format!(
                    "state collection did not answer within {:?}",
                    self.lease
                )))
            })
    }

    /// Takes the claim if it is free, ran out, or is already ours.
    pub async fn claim(&self) -> Result<Claim, Error> {
        self.bounded(self.try_claim()).await
    }

    async fn try_claim(&self) -> Result<Claim, Error> {
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        let filter = doc! {
            "_id": &self.stream,
            "$or": [{"owner": &self.owner}, {"leaseUntil": {"$lt": now}}],
        };
        let update = doc! {"$set": {"owner": &self.owner, "leaseUntil": self.until()}};
        match self.coll.update_one(filter, update).upsert(true).await {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {
                let owner = self
                    .coll
                    .find_one(doc! {"_id": &self.stream})
                    .await?
                    .and_then(|d| d.get_str("owner").ok().map(str::to_string))
                    .unwrap_or_default();
                return Ok(Claim::Taken { owner });
            }
            Err(e) => return Err(e),
        }
        let state = self.coll.find_one(doc! {"_id": &self.stream}).await?;
        match state {
            Some(d) if d.get_str("owner") == Ok(self.owner.as_str()) => Ok(Claim::Held(
                d.get("token").filter(|t| !matches!(t, Bson::Null)).cloned(),
            )),
            Some(d) => Ok(Claim::Taken {
                owner: d.get_str("owner").unwrap_or_default().to_string(),
            }),
            None => Ok(Claim::Taken {
                owner: String::new(),
            }),
        }
    }

    /// Records the position after a batch and renews the claim; `false`
    /// when the claim is no longer ours (stop watching). `None` forgets the
    /// position (history lost: start from now).
    pub async fn save(&self, token: Option<Bson>) -> Result<bool, Error> {
        let update = self.coll.update_one(
            doc! {"_id": &self.stream, "owner": &self.owner},
            doc! {"$set": {
                "token": token.unwrap_or(Bson::Null),
                "leaseUntil": self.until(),
                "savedAt": DateTime::now(),
            }},
        );
        let r = self.bounded(async { update.await }).await?;
        Ok(r.matched_count == 1)
    }

    /// Gives the claim up (shutdown, or a reload that removed the stream),
    /// so another instance takes over without waiting for it to run out.
    pub async fn release(&self) -> Result<(), Error> {
        self.coll
            .update_one(
                doc! {"_id": &self.stream, "owner": &self.owner},
                doc! {"$set": {"leaseUntil": 0_i64}},
            )
            .await?;
        Ok(())
    }
}

fn is_duplicate_key(e: &Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => e.to_string().contains("E11000"),
    }
}
