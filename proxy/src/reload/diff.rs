//! What a config reload changes: `ConfigDiff` is computed once per reload
//! (in `reload_config`) from the running and the new `Config` and handed to
//! the components, so that none of them compares configs on its own.
//!
//! It works at section granularity, with the keys of the config file:
//! `server`, `admin`, `upstreams` and `upstreams.NAME`, `profiles`,
//! `coalescing`, `tiers`, `tiers.memory`, `tiers.redis` and `tiers.mongo`, `fail_safe`,
//! `plugins` and `plugins.NAME`, `enrich`, `invalidation`, `backplane`,
//! `change_streams`, `post_snapshots`, `warm_up`, `notifications`, `log`. A section
//! that was added or removed counts as changed. It compares config values
//! only: a certificate or plugin file whose content changed under the same
//! path is not in it (certificates are re-read on every reload, plugin
//! files have their own watcher).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;

/// The sections without a NAME part, in file order.
const SECTIONS: [&str; 19] = [
    "server",
    "admin",
    "upstreams",
    "profiles",
    "coalescing",
    "tiers",
    "tiers.memory",
    "tiers.redis",
    "tiers.mongo",
    "fail_safe",
    "plugins",
    "enrich",
    "invalidation",
    "backplane",
    "change_streams",
    "post_snapshots",
    "warm_up",
    "notifications",
    "log",
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Every changed key, `upstreams.NAME` and `plugins.NAME` included.
    changed: BTreeSet<String>,
    /// The NAMEs, kept apart so that a name with a dot in it stays whole.
    upstreams: BTreeSet<String>,
    plugins: BTreeSet<String>,
    needs_restart: Vec<String>,
}

impl ConfigDiff {
    /// What changes when `new` replaces `old`, the config in force.
    pub fn new(old: &Config, new: &Config) -> ConfigDiff {
        let mut diff = ConfigDiff {
            upstreams: changed_names(&old.upstreams, &new.upstreams),
            plugins: changed_names(&old.plugins, &new.plugins),
            needs_restart: restart_keys(old, new),
            ..ConfigDiff::default()
        };
        let sections = [
            ("server", old.server != new.server),
            ("admin", old.admin != new.admin),
            ("upstreams", !diff.upstreams.is_empty()),
            ("profiles", old.profiles != new.profiles),
            ("coalescing", old.coalescing != new.coalescing),
            ("tiers", old.tiers != new.tiers),
            ("tiers.memory", old.tiers.memory != new.tiers.memory),
            ("tiers.redis", old.tiers.redis != new.tiers.redis),
            ("tiers.mongo", old.tiers.mongo != new.tiers.mongo),
            ("fail_safe", old.fail_safe != new.fail_safe),
            ("plugins", !diff.plugins.is_empty()),
            ("enrich", old.enrich != new.enrich),
            ("invalidation", old.invalidation != new.invalidation),
            ("backplane", old.backplane != new.backplane),
            ("change_streams", old.change_streams != new.change_streams),
            ("post_snapshots", old.post_snapshots != new.post_snapshots),
            ("warm_up", old.warm_up != new.warm_up),
            ("notifications", old.notifications != new.notifications),
            ("log", old.log != new.log),
        ];
        for (key, changed) in sections {
            if changed {
                diff.changed.insert(key.to_string());
            }
        }
        for name in &diff.upstreams {
            diff.changed.insert(format!("upstreams.{name}"));
        }
        for name in &diff.plugins {
            diff.changed.insert(format!("plugins.{name}"));
        }
        diff
    }

    /// Nothing in the config changed (the file may still differ, say in
    /// comments).
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }

    /// Whether the section `key` changed; `key` is one of the keys in this
    /// module's comment, such as `"tiers.redis"` or `"plugins.enrich-posts"`.
    pub fn changed(&self, key: &str) -> bool {
        // A misspelt key would be silently false forever; catch it in tests.
        debug_assert!(
            SECTIONS.contains(&key) || key.starts_with("upstreams.") || key.starts_with("plugins."),
            "ConfigDiff::changed: {key:?} is not a section key"
        );
        self.changed.contains(key)
    }

    /// Whether any of `keys` changed.
    pub fn any_changed(&self, keys: &[&str]) -> bool {
        keys.iter().any(|k| self.changed(k))
    }

    /// Every changed key, in sorted order.
    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.changed.iter().map(String::as_str)
    }

    /// The NAMEs of the `[upstreams.NAME]` tables added, removed or changed.
    pub fn upstreams_changed(&self) -> impl Iterator<Item = &str> {
        self.upstreams.iter().map(String::as_str)
    }

    /// The NAMEs of the `[plugins.NAME]` tables added, removed or changed.
    /// Which world a plugin serves comes from `enrich` and `invalidation`,
    /// so a caller that cares about that also checks those two keys.
    pub fn plugins_changed(&self) -> impl Iterator<Item = &str> {
        self.plugins.iter().map(String::as_str)
    }

    /// Changed keys that are bound at start-up (sockets, the connection
    /// semaphore, the log subscriber) and so only take effect after a
    /// restart.
    pub fn needs_restart(&self) -> Vec<String> {
        self.needs_restart.clone()
    }
}

fn changed_names<V: PartialEq>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
) -> BTreeSet<String> {
    old.keys()
        .chain(new.keys())
        .filter(|name| old.get(*name) != new.get(*name))
        .cloned()
        .collect()
}

/// Finer than sections on purpose: most of `[server]` applies on reload,
/// and operators need to be told exactly which key did not.
fn restart_keys(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    if old.server.listen != new.server.listen {
        keys.push("server.listen".into());
    }
    let tls_listen = |c: &Config| c.server.tls.as_ref().map(|t| t.listen);
    let tls_on = |c: &Config| c.server.tls.is_some();
    if tls_on(old) != tls_on(new) || tls_listen(old) != tls_listen(new) {
        keys.push("server.tls".into());
    }
    if old.server.max_connections != new.server.max_connections {
        keys.push("server.max_connections".into());
    }
    if old.admin.listen != new.admin.listen {
        keys.push("admin.listen".into());
    }
    if old.log != new.log {
        keys.push("log".into());
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PluginConfig, RedisTierConfig, TlsConfig, UpstreamConfig};
    use crate::units::Dur;

    fn upstream(url: &str) -> UpstreamConfig {
        toml::from_str(&format!("url = {url:?}")).expect("parses")
    }

    fn plugin(path: &str) -> PluginConfig {
        toml::from_str(&format!("path = {path:?}")).expect("parses")
    }

    fn sections(d: &ConfigDiff) -> Vec<&str> {
        d.sections().collect()
    }

    #[test]
    fn same_config_changes_nothing() {
        let c = Config::default();
        let d = ConfigDiff::new(&c, &c.clone());
        assert!(d.is_empty());
        assert!(d.needs_restart().is_empty());
        assert!(!d.any_changed(&SECTIONS));
        assert_eq!(d.plugins_changed().count(), 0);
    }

    #[test]
    fn one_section_at_a_time() {
        let old = Config::default();
        let mut new = old.clone();
        new.coalescing.max_batch = 10;
        new.fail_safe.throttle = Dur::secs(1);
        let d = ConfigDiff::new(&old, &new);
        assert_eq!(sections(&d), vec!["coalescing", "fail_safe"]);
        assert!(d.changed("coalescing"));
        assert!(!d.changed("profiles"));
        assert!(d.any_changed(&["profiles", "fail_safe"]));
        assert!(!d.any_changed(&["profiles", "tiers"]));
        assert!(d.needs_restart().is_empty());
    }

    #[test]
    fn named_tables_added_changed_and_removed() {
        let mut old = Config::default();
        old.upstreams.insert("officer".into(), upstream("http://a"));
        old.upstreams.insert("posts".into(), upstream("http://p"));
        old.plugins.insert("feed".into(), plugin("feed.wasm"));
        old.plugins.insert("gone".into(), plugin("gone.wasm"));
        let mut new = old.clone();
        new.upstreams.insert("officer".into(), upstream("http://b"));
        new.plugins.remove("gone");
        new.plugins.insert("with.dot".into(), plugin("dot.wasm"));

        let d = ConfigDiff::new(&old, &new);
        assert_eq!(d.upstreams_changed().collect::<Vec<_>>(), vec!["officer"]);
        assert_eq!(
            d.plugins_changed().collect::<Vec<_>>(),
            vec!["gone", "with.dot"]
        );
        assert_eq!(
            sections(&d),
            vec![
                "plugins",
                "plugins.gone",
                "plugins.with.dot",
                "upstreams",
                "upstreams.officer",
            ]
        );
        assert!(!d.changed("upstreams.posts"));
        assert!(!d.changed("plugins.feed"));
    }

    #[test]
    fn tiers_are_told_apart() {
        let old = Config::default();
        let mut new = old.clone();
        new.tiers.redis =
            Some(toml::from_str::<RedisTierConfig>("url = \"redis://127.0.0.1\"").expect("parses"));
        let d = ConfigDiff::new(&old, &new);
        assert!(d.changed("tiers") && d.changed("tiers.redis"));
        assert!(!d.changed("tiers.memory"));
    }

    #[test]
    fn warm_up_added_changed_and_removed() {
        let old = Config::default();
        let mut on = old.clone();
        on.warm_up = Some(crate::config::WarmUpConfig::default());
        let mut shorter = on.clone();
        if let Some(w) = shorter.warm_up.as_mut() {
            w.interval = Dur::secs(60);
        }
        for (a, b) in [(&old, &on), (&on, &shorter), (&shorter, &old)] {
            let d = ConfigDiff::new(a, b);
            assert_eq!(sections(&d), vec!["warm_up"]);
            assert!(d.needs_restart().is_empty(), "applied on reload");
        }
        assert!(ConfigDiff::new(&on, &on.clone()).is_empty());
    }

    #[test]
    fn listen_changes_need_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.server.listen = "127.0.0.1:1".parse().expect("addr");
        new.admin.listen = "127.0.0.1:2".parse().expect("addr");
        let d = ConfigDiff::new(&old, &new);
        assert_eq!(d.needs_restart(), vec!["server.listen", "admin.listen"]);
        assert_eq!(sections(&d), vec!["admin", "server"]);
    }

    #[test]
    fn restart_keys_keep_their_order_and_granularity() {
        let old = Config::default();
        let mut new = old.clone();
        new.log.level = "debug".into();
        new.server.max_connections = 5;
        new.server.tls = Some(TlsConfig {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            listen: None,
        });
        // Applied on reload: not a restart key, though `server` changed.
        new.server.max_body_size = crate::units::ByteSize::mib(2);
        let d = ConfigDiff::new(&old, &new);
        assert_eq!(
            d.needs_restart(),
            vec!["server.tls", "server.max_connections", "log"]
        );

        let mut moved = new.clone();
        if let Some(t) = moved.server.tls.as_mut() {
            t.listen = Some("127.0.0.1:8443".parse().expect("addr"));
        }
        assert_eq!(
            ConfigDiff::new(&new, &moved).needs_restart(),
            vec!["server.tls"]
        );
        // Other TLS settings (the files) are re-read on reload.
        let mut renamed = new.clone();
        if let Some(t) = renamed.server.tls.as_mut() {
            t.cert = "other.pem".into();
        }
        assert!(ConfigDiff::new(&new, &renamed).needs_restart().is_empty());
    }

    #[test]
    #[should_panic(expected = "not a section key")]
    #[cfg(debug_assertions)]
    fn misspelt_key_is_caught_in_debug_builds() {
        ConfigDiff::default().changed("tier.redis");
    }
}
