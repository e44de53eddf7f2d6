//! `[post_snapshots]`: the stored posts that the `refresh-post-snapshots`
//! policy action rewrites (README "Stored post snapshots"). Absent means
//! the action is skipped.

use serde::Deserialize;

use super::tiers::{bad_collection_name, bad_database_name, redact};
use super::{Config, Problem};
use crate::units::Dur;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostSnapshotsConfig {
    /// Default: `tiers.mongo.uri`.
    pub uri: Option<String>,
    pub database: String,
    #[serde(default = "defaults::collection")]
    pub collection: String,
    /// The field of a post holding its author's id.
    #[serde(default = "defaults::user_field")]
    pub user_field: String,
    /// The field that gets the author's snapshot.
    #[serde(default = "defaults::snapshot_field")]
    pub snapshot_field: String,
    /// Most posts one `update_many` rewrites; a prolific author's posts
    /// are rewritten in several, so no single write holds the collection
    /// for long.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: u32,
    /// Budget of each read or write; a slower one fails the refresh (the
    /// posts keep their old snapshot, and it is logged and counted).
    #[serde(default = "defaults::timeout")]
    pub timeout: Dur,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Dur,
}

mod defaults {
    use crate::units::Dur;

    pub fn collection() -> String {
        "posts".into()
    }
    pub fn user_field() -> String {
        "userId".into()
    }
    pub fn snapshot_field() -> String {
        "userSnapshot".into()
    }
    pub fn batch_size() -> u32 {
        500
    }
    pub fn timeout() -> Dur {
        Dur::secs(5)
    }
    pub fn connect_timeout() -> Dur {
        Dur::secs(2)
    }
}

impl PostSnapshotsConfig {
    /// The connection string in force: its own, else `[tiers.mongo]`'s.
    pub fn resolved_uri<'a>(&'a self, cfg: &'a Config) -> Option<&'a str> {
        self.uri
            .as_deref()
            .or_else(|| cfg.tiers.mongo.as_ref().map(|m| m.uri.as_str()))
    }

    /// Problems under `post_snapshots.*`, found without connecting.
    pub fn validate(&self, cfg: &Config) -> Vec<Problem> {
        let mut out = Vec::new();
        match self.resolved_uri(cfg) {
            None => out.push(Problem::new(
                "post_snapshots.uri",
                "is required when [tiers.mongo] is absent",
            )),
            Some(uri) => {
                if let Err(e) = mongodb::options::ConnectionString::parse(uri) {
                    out.push(Problem::new(
                        "post_snapshots.uri",
                        format!("{:?}: {e}", redact(uri)),
                    ));
                }
            }
        }
        if let Some(why) = bad_database_name(&self.database) {
            out.push(Problem::new(
                "post_snapshots.database",
                format!("{:?} {why}", self.database),
            ));
        }
        if let Some(why) = bad_collection_name(&self.collection) {
            out.push(Problem::new(
                "post_snapshots.collection",
                format!("{:?} {why}", self.collection),
            ));
        }
        for (key, field) in [
            ("post_snapshots.user_field", &self.user_field),
            ("post_snapshots.snapshot_field", &self.snapshot_field),
        ] {
            if field.is_empty() || field.starts_with('$') || field.contains('\0') {
                out.push(Problem::new(key, format!("{field:?} must be a field name")));
            }
        }
        if self.snapshot_field == self.user_field || self.snapshot_field == "_id" {
            out.push(Problem::new(
                "post_snapshots.snapshot_field",
                "must differ from `user_field` and `_id`",
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            out.push(Problem::new(
                "post_snapshots.batch_size",
                "must be 1 to 10000",
            ));
        }
        for (key, d) in [
            ("post_snapshots.timeout", self.timeout),
            ("post_snapshots.connect_timeout", self.connect_timeout),
        ] {
            if d.get().is_zero() {
                out.push(Problem::new(key, "must be more than 0"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::config::problem_keys as keys;

    #[test]
    fn keys_are_named() {
        assert_eq!(
            keys("[post_snapshots]\ndatabase = \"social\"\n"),
            vec!["post_snapshots.uri"]
        );
        assert!(
            keys("[post_snapshots]\nuri = \"mongodb://h:1\"\ndatabase = \"social\"\n").is_empty()
        );
        let k = keys(
            "[post_snapshots]\nuri = \"mongodb://h:1\"\ndatabase = \"a/b\"\nsnapshot_field = \"userId\"\nbatch_size = 0\ntimeout = \"0s\"\n",
        );
        assert_eq!(
            k,
            vec![
                "post_snapshots.database",
                "post_snapshots.snapshot_field",
                "post_snapshots.batch_size",
                "post_snapshots.timeout"
            ]
        );
    }
}
