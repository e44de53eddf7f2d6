//! Times policy calls in a tight loop through the real plugin runtime
//! (fresh instance per call, as in production):
//! `cargo run --release -p profile-edge --example policy_cost -- plugins/dist/enrich_posts.wasm`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use profile_edge::config::Config;
use profile_edge::plugin::bindings::{CallInfo, Profile};
use profile_edge::plugin::registry::check_plugin;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: policy_cost FILE.wasm");
    let text = format!(
        "[upstreams.officer]\nurl = \"http://127.0.0.1:1\"\n[upstreams.posts]\nurl = \"http://127.0.0.1:2\"\n\
         [plugins.p]\npath = \"{path}\"\ndeadline = \"1s\"\n[[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"p\"\n"
    );
    let config = Config::parse(&text, "bench").unwrap();
    // Load it the way the proxy does (compile, type-check, smoke test).
    check_plugin(&config, "p", &config.plugins["p"]).unwrap();
    let plugin = profile_edge::plugin::registry::load_for_bench(&config, "p").unwrap();

    let posts: Vec<serde_json::Value> = (0..20)
        .map(|i| serde_json::json!({"id": format!("p{i:06}"), "userId": format!("{i:08x}-0000-4000-8000-{i:012x}"),
            "text": "Post number: hello from the simulated feed.", "createdAt": "2026-02-01T00:00:00Z", "likes": i}))
        .collect();
    let body = serde_json::json!({"posts": posts, "nextOffset": 20}).to_string();
    let profiles: Vec<Profile> = (0..20)
        .map(|i| {
            let id = format!("{i:08x}-0000-4000-8000-{i:012x}");
            Profile {
                json: serde_json::json!({"id": id, "displayName": format!("User {i}"),
                    "avatarUrl": format!("https://cdn.example.com/avatars/{id}.png?v=1"),
                    "bio": "Synthetic profile from the profile-edge simulator. Enjoys warm caches.",
                    "location": "Nairobi, Kenya", "updatedAt": "2026-01-01T00:00:00Z", "version": 1})
                .to_string(),
                id,
            }
        })
        .collect();
    let call = CallInfo::response("/api/posts/feed?limit=20", "/api/posts");
    for round in 0..3 {
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            plugin.needed_ids(&call, &body).unwrap();
        }
        let ids = t.elapsed() / n;
        let t = Instant::now();
        for _ in 0..n {
            plugin.enrich(&call, &body, &profiles).unwrap();
        }
        let enrich = t.elapsed() / n;
        println!(
            "round {round}: needed-ids {ids:?}/call, enrich {enrich:?}/call, feed {:?}",
            ids + enrich
        );
    }
}
