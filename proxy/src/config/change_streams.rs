//! `[[change_streams]]`: MongoDB collections whose changes become profile
//! events, or whose inserts are new posts for the notification stream
//! (README "Change streams", "Notifications"). Zero or more; each is
//! watched by one instance of the fleet at a time (a lease in
//! `state_collection`, which also keeps the stream's resume token).

use serde::Deserialize;

use super::tiers::{bad_collection_name, bad_database_name, redact};
use super::{Config, Problem};
use crate::units::Dur;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StreamKind {
    /// Each insert, update, replace or delete is a `profile-updated` event.
    ProfileUpdates,
    /// Each insert is a new post for `[notifications]`; its `userId` names
    /// the author.
    NewPosts,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChangeStreamConfig {
    /// Names the stream in logs, metrics, stats and its state document.
    pub name: String,
    /// Default: `tiers.mongo.uri`.
    pub uri: Option<String>,
    pub database: String,
    pub collection: String,
    pub kind: StreamKind,
    /// `profile-updates`: the field of the watched documents holding the
    /// user id.
    #[serde(default = "defaults::id_field")]
    pub id_field: String,
    /// Where the lease and the resume token live, in the same deployment
    /// as the watched collection (a resume token means nothing elsewhere).
    #[serde(default = "defaults::state_database")]
    pub state_database: String,
    #[serde(default = "defaults::state_collection")]
    pub state_collection: String,
    /// How long a watcher's claim lasts without renewal; another instance
    /// takes the stream over this long after its watcher died.
    #[serde(default = "defaults::lease")]
    pub lease: Dur,
    /// Most events applied (and acknowledged with one token write) at once.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: u32,
    /// How long the server holds an empty read open; a quiet stream still
    /// persists its position this often.
    #[serde(default = "defaults::max_await")]
    pub max_await: Dur,
    /// Budget for finding a server; a longer outage is retried with backoff.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Dur,
}

mod defaults {
    use crate::units::Dur;

    pub fn id_field() -> String {
        "_id".into()
    }
    pub fn state_database() -> String {
        "profile_edge".into()
    }
    pub fn state_collection() -> String {
        "change_stream_state".into()
    }
    pub fn lease() -> Dur {
        Dur::secs(10)
    }
    pub fn batch_size() -> u32 {
        500
    }
    pub fn max_await() -> Dur {
        Dur::secs(1)
    }
    pub fn connect_timeout() -> Dur {
        Dur::secs(2)
    }
}

impl ChangeStreamConfig {
    /// The connection string in force: its own, else `[tiers.mongo]`'s.
    pub fn resolved_uri<'a>(&'a self, cfg: &'a Config) -> Option<&'a str> {
        self.uri
            .as_deref()
            .or_else(|| cfg.tiers.mongo.as_ref().map(|m| m.uri.as_str()))
    }
}

/// Problems under `change_streams[i].*`, found without connecting.
pub fn validate_change_streams(cfg: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, s) in cfg.change_streams.iter().enumerate() {
        let key = |k: &str| format!("change_streams[{i}].{k}");
        if s.name.is_empty()
            || s.name.len() > 64
            || !s
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            out.push(Problem::new(
                key("name"),
                format!("{:?} must be 1 to 64 of A-Z a-z 0-9 - _ .", s.name),
            ));
        }
        if cfg.change_streams[..i].iter().any(|o| o.name == s.name) {
            out.push(Problem::new(
                key("name"),
                format!("{:?} is used by an earlier stream", s.name),
            ));
        }
        match s.resolved_uri(cfg) {
            None => out.push(Problem::new(
                key("uri"),
                "is required when [tiers.mongo] is absent",
            )),
            Some(uri) => {
                if let Err(e) = mongodb::options::ConnectionString::parse(uri) {
                    out.push(Problem::new(key("uri"), format!("{:?}: {e}", redact(uri))));
                }
            }
        }
        for (k, name) in [
            ("database", &s.database),
            ("state_database", &s.state_database),
        ] {
            if let Some(why) = bad_database_name(name) {
                out.push(Problem::new(key(k), format!("{name:?} {why}")));
            }
        }
        for (k, name) in [
            ("collection", &s.collection),
            ("state_collection", &s.state_collection),
        ] {
            if let Some(why) = bad_collection_name(name) {
                out.push(Problem::new(key(k), format!("{name:?} {why}")));
            }
        }
        if s.kind == StreamKind::NewPosts && cfg.notifications.is_none() {
            out.push(Problem::new(
                key("kind"),
                "\"new-posts\" sends its posts to [notifications], which is not configured",
            ));
        }
        if s.id_field.is_empty() || s.id_field.starts_with('$') {
            out.push(Problem::new(
                key("id_field"),
                format!("{:?} must be a field name", s.id_field),
            ));
        }
        if s.lease.get() < std::time::Duration::from_secs(1) {
            out.push(Problem::new(key("lease"), "must be at least 1s"));
        }
        if s.max_await.get().is_zero() || s.max_await.get() >= s.lease.get() / 2 {
            out.push(Problem::new(
                key("max_await"),
                "must be more than 0 and less than half of `lease` (the watcher renews its lease between reads)",
            ));
        }
        if s.connect_timeout.get().is_zero() {
            out.push(Problem::new(key("connect_timeout"), "must be more than 0"));
        }
        if !(1..=10_000).contains(&s.batch_size) {
            out.push(Problem::new(key("batch_size"), "must be 1 to 10000"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::problem_keys as keys;

    const STREAM: &str = "[[change_streams]]\nname = \"users\"\ndatabase = \"officer\"\ncollection = \"users\"\nkind = \"profile-updates\"\n";

    #[test]
    fn a_stream_needs_a_uri_from_somewhere() {
        assert_eq!(keys(STREAM), vec!["change_streams[0].uri"]);
        let with_tier = format!("[tiers.mongo]\nuri = \"mongodb://h:1\"\n{STREAM}");
        assert!(keys(&with_tier).is_empty());
    }

    #[test]
    fn keys_are_named() {
        let base = "[tiers.mongo]\nuri = \"mongodb://h:1\"\n";
        let bad = format!(
            "{base}[[change_streams]]\nname = \"a b\"\ndatabase = \"x.y\"\ncollection = \"system.x\"\nkind = \"profile-updates\"\nlease = \"500ms\"\nbatch_size = 0\n"
        );
        let k = keys(&bad);
        for want in [
            "change_streams[0].name",
            "change_streams[0].database",
            "change_streams[0].collection",
            "change_streams[0].lease",
            "change_streams[0].max_await",
            "change_streams[0].batch_size",
        ] {
            assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
        }
        let twice = format!("{base}{STREAM}{STREAM}");
        assert_eq!(keys(&twice), vec!["change_streams[1].name"]);
        let unknown_kind = format!("{base}{}", STREAM.replace("profile-updates", "posts"));
        assert_eq!(keys(&unknown_kind), vec!["change_streams[0].kind"]);
    }

    #[test]
    fn new_posts_need_notifications() {
        let base = "[tiers.mongo]\nuri = \"mongodb://h:1\"\n";
        let posts = STREAM.replace("profile-updates", "new-posts");
        assert_eq!(
            keys(&format!("{base}{posts}")),
            vec!["change_streams[0].kind"]
        );
        assert!(keys(&format!("{base}{posts}[notifications]\n")).is_empty());
    }
}
