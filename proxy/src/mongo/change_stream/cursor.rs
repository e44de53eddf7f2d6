//! A change stream read batch by batch with the server's own commands
//! (`aggregate` with `$changeStream`, then `getMore`), so that the watcher
//! sees exactly where each batch the server returns ends: it applies a
//! batch as soon as it arrives and saves the position the server gives
//! for it (`postBatchResumeToken`), empty batches included. The driver's
//! `ChangeStream` hides batch boundaries: it only reports one when the
//! next read comes back empty, which would hold a trickle of changes for
//! up to `max_await`, or until `batch_size` under a steady flow.
//!
//! Resuming after an error is the watcher's job (from its saved
//! position), not this cursor's.

use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::Error;
use mongodb::Database;

/// One batch: its events and the position after it.
pub struct Batch {
    pub events: Vec<Document>,
    pub position: Option<Bson>,
}

pub struct Cursor {
    db: Database,
    collection: String,
    id: i64,
    batch_size: u32,
    max_await: Duration,
}

impl Cursor {
    /// Opens the stream after `resume` (a saved position), or at "now";
    /// answers the cursor and its first batch.
    pub async fn open(
        db: Database,
        collection: &str,
        resume: Option<Bson>,
        batch_size: u32,
        max_await: Duration,
    ) -> Result<(Cursor, Batch), Error> {
        let mut stage = doc! {"fullDocument": "updateLookup"};
        if let Some(token) = resume {
            stage.insert("resumeAfter", token);
        }
        let reply = db
            .run_command(doc! {
                "aggregate": collection,
                "pipeline": [{"$changeStream": stage}],
                "cursor": {"batchSize": i64::from(batch_size)},
            })
            .await?;
        let (id, batch) = read_reply(&reply, "firstBatch")?;
        Ok((
            Cursor {
                db,
                collection: collection.to_string(),
                id,
                batch_size,
                max_await,
            },
            batch,
        ))
    }

    /// The next batch; the server holds an empty one up to `max_await`.
    /// An error when the server closed the cursor (after an `invalidate`
    /// event, which the watcher has already acted on).
    pub async fn next(&mut self) -> Result<Batch, Error> {
        if self.id == 0 {
            return Err(Error::custom("the server closed the change stream"));
        }
        let reply = self
            .db
            .run_command(doc! {
                "getMore": self.id,
                "collection": &self.collection,
                "batchSize": i64::from(self.batch_size),
                "maxTimeMS": i64::try_from(self.max_await.as_millis()).unwrap_or(i64::MAX),
            })
            .await?;
        let (id, batch) = read_reply(&reply, "nextBatch")?;
        self.id = id;
        Ok(batch)
    }

    /// Frees the server's cursor (best effort: it also times out there).
    pub async fn close(self) {
        if self.id != 0 {
            let kill = self.db.run_command(doc! {
                "killCursors": &self.collection,
                "cursors": [self.id],
            });
            let _ = tokio::time::timeout(Duration::from_secs(1), kill).await;
        }
    }
}

/// The cursor id and the batch of an `aggregate` or `getMore` reply. The
/// position is the server's `postBatchResumeToken`, or (servers before
/// 4.0.7) the last event's `_id`.
fn read_reply(reply: &Document, field: &str) -> Result<(i64, Batch), Error> {
    let bad = |what: &str| Error::custom(format!("unexpected change stream reply: {what}"));
    let cursor = reply.get_document("cursor").map_err(|_| bad("no cursor"))?;
    let id = match cursor.get("id") {
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Int32(i)) => i64::from(*i),
        _ => return Err(bad("no cursor id")),
    };
    let events: Vec<Document> = cursor
        .get_array(field)
        .map_err(|_| bad(field))?
        .iter()
        .filter_map(|b| b.as_document().cloned())
        .collect();
    let position = cursor
        .get("postBatchResumeToken")
        .cloned()
        .or_else(|| events.last().and_then(|e| e.get("_id").cloned()));
    Ok((id, Batch { events, position }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_gives_its_batch_and_position() {
        let reply = doc! {"cursor": {"id": 42_i64, "nextBatch": [{"_id": {"_data": "a"}, "operationType": "insert"}], "postBatchResumeToken": {"_data": "b"}}, "ok": 1};
        let (id, b) = read_reply(&reply, "nextBatch").expect("reply");
        assert_eq!((id, b.events.len()), (42, 1));
        assert_eq!(b.position, Some(Bson::Document(doc! {"_data": "b"})));
        let old = doc! {"cursor": {"id": 0_i32, "firstBatch": [{"_id": {"_data": "c"}}]}};
        let (id, b) = read_reply(&old, "firstBatch").expect("reply");
        assert_eq!(id, 0);
        assert_eq!(b.position, Some(Bson::Document(doc! {"_data": "c"})));
        let empty = doc! {"cursor": {"id": 7_i64, "nextBatch": []}};
        assert_eq!(
            read_reply(&empty, "nextBatch").expect("reply").1.position,
            None
        );
        assert!(read_reply(&doc! {"ok": 1}, "nextBatch").is_err());
    }
}
