//! Follower lists for `?userId=F` subscribers: the Officer's
//! `followers_path` for an author, kept in memory for `followers_ttl` and
//! loaded once however many posts or subscribers want it at the same time
//! (moka joins concurrent loads of one key). A post is matched against its
//! author's list once, when it is sent, never once per subscriber.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use moka::future::Cache;

use crate::http::body;
use crate::http::upstream::Upstream;

/// Largest follower list read (a list is ids, so this is generous).
const MAX_BODY: usize = 4 << 20;
/// Authors whose lists are kept.
const CAPACITY: u64 = 100_000;

#[derive(Clone, Debug, thiserror::Error)]
pub enum FollowersError {
    #[error("followers of {author}: {detail}")]
    Failed { author: String, detail: String },
}

pub struct Followers {
    cache: Cache<String, Arc<HashSet<String>>>,
    path: String,
}

impl Followers {
    pub fn new(path: &str, ttl: Duration) -> Followers {
        Followers {
            cache: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .build(),
            path: path.to_string(),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The author's followers, from memory or the Officer (an unknown
    /// author has none).
    pub async fn get(
        &self,
        officer: &Arc<Upstream>,
        author: &str,
    ) -> Result<Arc<HashSet<String>>, Arc<FollowersError>> {
        let path = self.path.replace(
            "{id}",
            &percent_encoding::utf8_percent_encode(author, crate::origin::ID_SEGMENT).to_string(),
        );
        let officer = officer.clone();
        let author_owned = author.to_string();
        self.cache
            .try_get_with(author.to_string(), async move {
                fetch(&officer, &path)
                    .await
                    .map(Arc::new)
                    .map_err(|detail| FollowersError::Failed {
                        author: author_owned,
                        detail,
                    })
            })
            .await
    }

    /// Drops an author's list (a profile event for that author).
    pub async fn forget(&self, author: &str) {
        self.cache.invalidate(author).await;
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
