//! The registry with real components from `plugins/dist` (built by
//! `plugins/build.sh`): loads, reuse across reloads, a rejected file that
//! keeps the last good version, removal, and a swap on a file change.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::Plugins;
use crate::config::Config;
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;
use crate::plugin::bindings::CallInfo;
use crate::plugin::calls::World;
use crate::plugin::error::PluginError;
use crate::reload::ConfigDiff;

use crate::plugin::dist;

/// A config whose enrich route uses plugin `feed` at `path`; `with` false
/// leaves the plugin out entirely.
fn config(path: &Path, with: bool) -> Config {
    let plugin = if with {
        format!(
            "[plugins.feed]\npath = \"{}\"\n\n[[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"officer\"\nplugin = \"feed\"\n",
            path.display()
        )
    } else {
        String::new()
    };
    let text = format!("[upstreams.officer]\nurl = \"http://127.0.0.1:9\"\n\n{plugin}");
    Config::parse(&text, "t.toml").expect("valid config")
}

fn plugins() -> (Arc<Plugins>, Tasks) {
    let tasks = Tasks::new();
    let p = Plugins::new(Arc::new(Metrics::new()), tasks.clone()).expect("runtime");
    (p, tasks)
}

#[tokio::test]
async fn loads_reuses_rejects_and_removes() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("feed.wasm");
    std::fs::copy(dist("enrich_posts.wasm"), &path).expect("copy");
    let (plugins, tasks) = plugins();

    let c1 = config(&path, true);
    assert!(plugins.apply(&c1, None).await.is_empty());
    let first = plugins.get("feed").expect("loaded");
    assert_eq!(first.world(), World::Enrich);

    // A reload that changes nothing of the plugin keeps the very same load.
    let mut c2 = c1.clone();
    c2.profiles.negative_ttl = "5s".parse().expect("duration");
    let diff = ConfigDiff::new(&c1, &c2);
    assert!(plugins.apply(&c2, Some(&diff)).await.is_empty());
    assert!(Arc::ptr_eq(&first, &plugins.get("feed").expect("kept")));

    // Re-pointed at random bytes: refused by type, the last good version
    // keeps serving, and the listing says why.
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, [7u8; 64]).expect("write");
    let c3 = config(&bad, true);
    let problems = plugins.apply(&c3, Some(&ConfigDiff::new(&c2, &c3))).await;
    assert_eq!(problems.len(), 1);
    assert!(
        matches!(problems[0].1, PluginError::NotAComponent(_)),
        "{:?}",
        problems[0].1
    );
    assert!(Arc::ptr_eq(
        &first,
        &plugins.get("feed").expect("last good")
    ));
    let listed = plugins.list();
    assert!(
        listed["plugins"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not a valid WebAssembly component")),
        "{listed}"
    );

    // Gone from the config: gone from the registry.
    let c4 = config(&path, false);
    assert!(plugins
        .apply(&c4, Some(&ConfigDiff::new(&c3, &c4)))
        .await
        .is_empty());
    assert!(plugins.get("feed").is_none());
    plugins.stop_watching();
    tasks.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_component_of_the_wrong_world_is_refused() {
    let (plugins, tasks) = plugins();
    let c = config(&dist("invalidate_profile.wasm"), true);
    let problems = plugins.apply(&c, None).await;
    assert_eq!(problems.len(), 1);
    assert!(
        matches!(&problems[0].1, PluginError::WrongWorld { world, .. } if *world == "enrich-policy"),
        "{:?}",
        problems[0].1
    );
    assert!(plugins.get("feed").is_none());
    plugins.stop_watching();
    tasks.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_changed_file_is_swapped_in_by_reload_changed() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("feed.wasm");
    std::fs::copy(dist("enrich_posts.wasm"), &path).expect("copy");
    let (plugins, tasks) = plugins();
    assert!(plugins.apply(&config(&path, true), None).await.is_empty());
    let v1 = plugins.get("feed").expect("v1").sha256.clone();
    std::fs::copy(dist("enrich_fields.wasm"), &path).expect("copy v2");
    plugins.reload_changed().await;
    let v2 = plugins.get("feed").expect("v2").sha256.clone();
    assert_ne!(v1, v2, "the new file serves");
    // The same content again: nothing reloads.
    let before = plugins.get("feed").expect("v2");
    plugins.reload_changed().await;
    assert!(Arc::ptr_eq(&before, &plugins.get("feed").expect("same")));
    plugins.stop_watching();
    tasks.shutdown(Duration::from_secs(5)).await;
}

/// A config whose enrich route uses plugin `feed` at `path` with the
/// given `config` table (TOML inline table).
fn config_with(path: &Path, table: &str) -> Config {
    let text = format!(
        "[upstreams.officer]\nurl = \"http://127.0.0.1:9\"\n\n[plugins.feed]\npath = \"{}\"\nconfig = {table}\n\n\
         [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"officer\"\nplugin = \"feed\"\n",
        path.display()
    );
    Config::parse(&text, "t.toml").expect("valid config")
}

#[test]
fn a_current_guest_is_told_each_kind_of_call() {
    let c = config_with(
        &dist("testing/hostile_enrich.wasm"),
        r#"{ mode = "call-info" }"#,
    );
    let p = super::load_for_bench(&c, "feed").expect("loads");
    assert_eq!(p.wit_version(), "0.2.0");
    for (call, kind) in [
        (
            CallInfo::response("/api/posts?x=1", "/api/posts"),
            "response",
        ),
        (CallInfo::notification(), "notification"),
        (CallInfo::event(), "event"),
    ] {
        let out = p.enrich(&call, r#"{"posts":[]}"#, &[]).expect("enriches");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["callInfo"]["kind"], kind, "{out}");
        assert_eq!(v["callInfo"]["path"], call.path.as_str(), "{out}");
        assert_eq!(v["callInfo"]["route"], call.route.as_str(), "{out}");
    }
}

#[test]
fn guests_of_the_previous_version_load_and_others_are_refused_by_version() {
    let c = config_with(&dist("testing/previous_wit.wasm"), "{}");
    let p = super::load_for_bench(&c, "feed").expect("loads");
    assert_eq!((p.world(), p.wit_version()), (World::Enrich, "0.1.0"));

    let c = config_with(&dist("testing/wrong_version.wasm"), "{}");
    let err = super::load_for_bench(&c, "feed").err().expect("refused");
    assert!(
        matches!(&err, PluginError::WrongVersion { built_for, world: Some("enrich-policy") } if built_for == "0.0.9"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        msg.contains("@0.0.9; this proxy accepts @0.2 (current) and @0.1 (previous)"),
        "{msg}"
    );
}

/// The calls of one response run on one instance, kept only while calls
/// succeed, and `release` lets it go (what the route does while its lookup
/// waits on the origin).
#[test]
fn the_calls_of_one_response_share_an_instance() {
    let instance_calls = |out: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(out).expect("json")["instanceCalls"].clone()
    };
    let c = config_with(
        &dist("testing/hostile_enrich.wasm"),
        r#"{ mode = "instance" }"#,
    );
    let p = super::load_for_bench(&c, "feed").expect("loads");
    let call = CallInfo::response("/api/posts", "/api/posts");
    let body = r#"{"posts":[{"userId":"a"},{"userId":"b"}]}"#;

    let mut calls = p.enrich_calls(&call);
    assert!(!calls.holds_instance(), "made at the first call");
    assert_eq!(calls.needed_ids(body).expect("ids"), ["a", "b"]);
    assert!(calls.holds_instance());
    assert_eq!(
        instance_calls(&calls.enrich(body, &[]).expect("enriches")),
        2
    );

    let mut calls = p.enrich_calls(&call);
    calls.needed_ids(body).expect("ids");
    calls.release();
    assert_eq!(
        instance_calls(&calls.enrich(body, &[]).expect("enriches")),
        1
    );

    // Alone, each call has an instance of its own.
    assert_eq!(
        instance_calls(&p.enrich(&call, body, &[]).expect("enriches")),
        1
    );

    // A failed call keeps nothing.
    let c = config_with(
        &dist("testing/hostile_enrich.wasm"),
        r#"{ mode = "error" }"#,
    );
    let p = super::load_for_bench(&c, "feed").expect("loads");
    let mut calls = p.enrich_calls(&call);
    assert!(calls.needed_ids(body).is_err());
    assert!(!calls.holds_instance());
}

/// Posts that already carry a snapshot (stale, or `null`) get it written
/// over in place by the default policy: the rest of the text is the
/// upstream's, byte for byte, and no post has the field twice.
#[test]
fn the_default_policy_writes_over_stale_snapshots() {
    let c = config_with(&dist("enrich_posts.wasm"), "{}");
    let p = super::load_for_bench(&c, "feed").expect("loads");
    let call = CallInfo::response("/api/posts", "/api/posts");
    let body = concat!(
        r#"{"posts":[{"id":"p1","userId":"a","userSnapshot":{"id":"a","displayName":"Old","avatarUrl":"old"},"text":"x"},"#,
        r#"{"id":"p2","userSnapshot":null,"userId":"b"},{"id":"p3","userId":"gone","userSnapshot":{"id":"gone"}},"#,
        r#"{"id":"p4","userId":"a"}],"nextOffset":4}"#
    );
    let profiles = vec![
        crate::plugin::bindings::Profile {
            id: "a".into(),
            json: r#"{"id":"a","displayName":"Ann","avatarUrl":"https://a/new.png","bio":"x"}"#
                .into(),
        },
        crate::plugin::bindings::Profile {
            id: "b".into(),
            json: r#"{"id":"b","displayName":"Bo"}"#.into(),
        },
    ];
    let mut calls = p.enrich_calls(&call);
    assert_eq!(calls.needed_ids(body).expect("ids"), ["a", "b", "gone"]);
    let out = calls
        .enrich(body, &crate::plugin::bindings::lend(&profiles))
        .expect("enriches");
    let a = r#"{"id":"a","displayName":"Ann","avatarUrl":"https://a/new.png"}"#;
    let b = r#"{"id":"b","displayName":"Bo","avatarUrl":null}"#;
    assert_eq!(
        out,
        concat!(
            r#"{"posts":[{"id":"p1","userId":"a","userSnapshot":@A,"text":"x"},"#,
            r#"{"id":"p2","userSnapshot":@B,"userId":"b"},{"id":"p3","userId":"gone","userSnapshot":null},"#,
            r#"{"id":"p4","userId":"a","userSnapshot":@A}],"nextOffset":4}"#
        )
        .replace("@A", a)
        .replace("@B", b)
    );
}
