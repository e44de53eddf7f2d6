//! `[notifications]`: the Server-Sent Events stream of new posts (README
//! "Notifications"). Absent means off.

use serde::Deserialize;

use super::plugins::unknown_plugin;
use super::{Config, Problem};
use crate::units::Dur;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// The stream's path on the main listener.
    pub path: String,
    /// A comment line this often keeps idle connections (and proxies in
    /// between) from timing out.
    pub heartbeat: Dur,
    /// Events kept for `Last-Event-ID` resume.
    pub replay: usize,
    /// Events one connection may be behind; past it, `event: resync`.
    pub client_queue: usize,
    /// The Officer route answering `{"followers": [...]}`; `{id}` is the
    /// author.
    pub followers_path: String,
    /// The enrichment policy applied once to each post; absent = posts go
    /// out as they came.
    pub plugin: Option<String>,
    /// Beyond SPEC: streams open at once on this instance; more get 503.
    pub max_streams: usize,
    /// Beyond SPEC: the longest a post waits for its enrichment (profile
    /// lookup and policy); past it, it goes out unenriched.
    pub enrich_deadline: Dur,
    /// Beyond SPEC: how long a follower list is kept in memory.
    pub followers_ttl: Dur,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            path: "/api/notifications/stream".into(),
            heartbeat: Dur::secs(15),
            replay: 10_000,
            client_queue: 256,
            followers_path: "/api/users/{id}/followers".into(),
            plugin: None,
            max_streams: 10_000,
            enrich_deadline: Dur::millis(500),
            followers_ttl: Dur::secs(60),
        }
    }
}

impl NotificationsConfig {
    /// Problems under `notifications.*`.
    pub fn validate(&self, cfg: &Config) -> Vec<Problem> {
        let mut out = Vec::new();
        if !self.path.starts_with('/') || self.path.contains(['?', '#', ' ']) {
            out.push(Problem::new(
                "notifications.path",
                format!("{:?} must be a path starting with / (no query)", self.path),
            ));
        }
        let user_prefix = super::user_path_prefix(&cfg.profiles.user_path).unwrap_or("");
        if self.path == cfg.profiles.batch_path
            || (!user_prefix.is_empty() && self.path.starts_with(&format!("{user_prefix}/")))
        {
            out.push(Problem::new(
                "notifications.path",
                "must not be a profile route (profiles.user_path, profiles.batch_path)",
            ));
        }
        if let Some(route) = cfg
            .enrich
            .iter()
            .position(|r| self.path.starts_with(&r.path_prefix))
        {
            out.push(Problem::new(
                "notifications.path",
                format!("is under enrich[{route}].path_prefix; pick a path no route covers"),
            ));
        }
        if !self.followers_path.starts_with('/') || !self.followers_path.contains("{id}") {
            out.push(Problem::new(
                "notifications.followers_path",
                format!(
                    "{:?} must start with / and contain {{id}}",
                    self.followers_path
                ),
            ));
        }
        if let Some(p) = &self.plugin {
            if let Some(unknown) = unknown_plugin(cfg, "notifications.plugin".into(), p) {
                out.push(unknown);
            } else if cfg.invalidation.as_ref().is_some_and(|i| i.plugin == *p) {
                out.push(Problem::new(
                    "notifications.plugin",
                    format!("{p:?} is the [invalidation] policy; it needs an enrichment policy"),
                ));
            }
        }
        for (key, d) in [
            ("notifications.heartbeat", self.heartbeat),
            ("notifications.enrich_deadline", self.enrich_deadline),
            ("notifications.followers_ttl", self.followers_ttl),
        ] {
            if d.get().is_zero() {
                out.push(Problem::new(key, "must be more than 0"));
            }
        }
        for (key, n, max) in [
            ("notifications.replay", self.replay, 1_000_000),
            ("notifications.client_queue", self.client_queue, 65_536),
            ("notifications.max_streams", self.max_streams, 1_000_000),
        ] {
            if !(1..=max).contains(&n) {
                out.push(Problem::new(key, format!("must be 1 to {max}")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::config::problem_keys as keys;

    #[test]
    fn defaults_pass_and_keys_are_named() {
        assert!(keys("[notifications]\n").is_empty());
        let k = keys(
            "[notifications]\npath = \"/api/users/stream\"\nfollowers_path = \"/f\"\nreplay = 0\nheartbeat = \"0s\"\nplugin = \"nope\"\n",
        );
        for want in [
            "notifications.path",
            "notifications.followers_path",
            "notifications.plugin",
            "notifications.heartbeat",
            "notifications.replay",
        ] {
            assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
        }
    }
}
