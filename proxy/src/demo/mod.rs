//! `profile-edge demo`: the simulated Officer and Posts API from `sim`, the
//! proxy in front of them with `config/demo.toml` (compiled in, so the demo
//! needs no files), a new synthetic post every second on the notification
//! stream, and a printed list of curl commands to try.

pub(crate) mod sim;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::app::App;
use crate::config::Config;
use sim::{SimConfig, SimOrigin};

/// The demo's config; upstream URLs, listen addresses and plugin paths are
/// filled in at start.
pub const DEMO_CONFIG: &str = include_str!("../../../config/demo.toml");

/// How often the demo publishes a new post to the notification stream.
pub const POST_EVERY: Duration = Duration::from_secs(1);

/// The default policies, built into the binary so the demo needs no files
/// (`plugins/build.sh` rebuilds them; the test command runs it first).
const DEMO_PLUGINS: [(&str, &[u8]); 2] = [
    (
        "plugins/dist/enrich_posts.wasm",
        include_bytes!("../../../plugins/dist/enrich_posts.wasm"),
    ),
    (
        "plugins/dist/invalidate_profile.wasm",
        include_bytes!("../../../plugins/dist/invalidate_profile.wasm"),
    ),
];

#[derive(Clone, Debug, Default)]
pub struct DemoOptions {
    /// The proxy's address; `None`: the config's `server.listen`.
    pub listen: Option<SocketAddr>,
    /// The admin address; `None`: the config's `admin.listen`.
    pub admin: Option<SocketAddr>,
    pub users: usize,
    pub latency: Duration,
    /// A config file to run instead of the built-in `config/demo.toml`. Its
    /// `officer` and `posts` upstreams are pointed at the simulator; every
    /// other key, plugin paths included, is used as written.
    pub config: Option<PathBuf>,
    /// An enrichment policy to serve instead of the config's: every plugin
    /// an `[[enrich]]` route or `[notifications]` uses is pointed at it.
    pub plugin: Option<PathBuf>,
}

/// A running demo: the simulator and the proxy.
pub struct Demo {
    pub sim: SimOrigin,
    pub app: App,
    users: usize,
    plugin_dir: tempfile_dir::TempDir,
}

/// A directory removed when dropped, for the demo's plugin files.
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> std::io::Result<TempDir> {
            let dir =
                std::env::temp_dir().join(format!("profile-edge-demo-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            Ok(TempDir(dir))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The built-in `config/demo.toml`, its plugin paths pointed at copies of
/// the built-in policies written to `dir`.
fn builtin_config(dir: &tempfile_dir::TempDir) -> anyhow::Result<Config> {
    let mut text = DEMO_CONFIG.to_string();
    for (config_path, bytes) in DEMO_PLUGINS {
        let file = config_path.rsplit('/').next().unwrap_or(config_path);
        let path = dir.path().join(file);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        let quoted = toml::Value::String(path.display().to_string()).to_string();
        text = text.replace(&format!("\"{config_path}\""), &quoted);
    }
    toml::from_str(&text).context("the built-in demo config is invalid")
}

/// `--plugin FILE`: the plugins that enrich (`[[enrich]]` routes and
/// `[notifications]`) load FILE instead. The proxy watches it, so a rebuilt
/// policy is swapped in while the demo runs.
fn use_enrichment_policy(config: &mut Config, file: &std::path::Path) -> anyhow::Result<()> {
    let mut names: Vec<String> = config.enrich.iter().map(|r| r.plugin.clone()).collect();
    names.extend(config.notifications.iter().filter_map(|n| n.plugin.clone()));
    if names.is_empty() {
        anyhow::bail!(
            "--plugin: the config has no [[enrich]] route or [notifications] plugin to serve it"
        );
    }
    let path = std::path::absolute(file).with_context(|| format!("--plugin {}", file.display()))?;
    for name in names {
        if let Some(p) = config.plugins.get_mut(&name) {
            p.path = path.clone();
        }
    }
    Ok(())
}

impl Demo {
    pub async fn start(opts: &DemoOptions) -> anyhow::Result<Demo> {
        let mut sim = SimOrigin::start(SimConfig {
            users: opts.users,
            latency: opts.latency,
            ..SimConfig::default()
        })
        .await
        .context("starting the simulated Officer and Posts API")?;
        // A live feed for `/api/posts/stream`: a new post every second.
        sim.start_stream_ticker(POST_EVERY);
        // The plugin files first: the config names them and must find them.
        let plugin_dir =
            tempfile_dir::TempDir::new().context("creating the demo's plugin directory")?;
        let mut config = match &opts.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                // Parsed without validation: the upstream URLs are replaced
                // below, and the result is validated as a whole.
                toml::from_str::<Config>(&text)
                    .with_context(|| format!("{} is not a valid config", path.display()))?
            }
            None => builtin_config(&plugin_dir)?,
        };
        if let Some(listen) = opts.listen {
            config.server.listen = listen;
        }
        if let Some(admin) = opts.admin {
            config.admin.listen = admin;
        }
        for (name, url) in [("officer", sim.officer_url()), ("posts", sim.posts_url())] {
            if let Some(up) = config.upstreams.get_mut(name) {
                up.url = url;
            }
        }
        if let Some(plugin) = &opts.plugin {
            use_enrichment_policy(&mut config, plugin)?;
        }
        let file = opts
            .config
            .as_ref()
            .map_or("config/demo.toml".to_string(), |p| p.display().to_string());
        let problems = config.validate();
        if !problems.is_empty() {
            let e = crate::config::ConfigError { file, problems };
            anyhow::bail!("{e}");
        }
        let app = App::start(config).await.context("starting the proxy")?;
        start_posting(&app, opts.users);
        Ok(Demo {
            sim,
            app,
            users: opts.users,
            plugin_dir,
        })
    }

    /// Sends `n` concurrent lookups of cold ids through the proxy, as a
    /// feed fan-out would, and reports what reached the origin.
    pub async fn cold_burst(&self, n: usize) -> anyhow::Result<String> {
        // One HTTP/2 (h2c) connection carries every lookup, as a service's
        // pooled client would: the burst then reaches the proxy within the
        // batch window instead of trickling in over 1 000 TCP handshakes.
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let before = (
            self.sim.stats().origin_calls(),
            self.sim.stats().batch_sizes().len(),
        );
        let base = format!("http://{}/api/users", self.app.main_addr());
        // Open the connection first with a lookup the proxy refuses (a bad
        // id never reaches the origin), so the burst does not wait on it.
        if let Ok(uri) = format!("{base}/connect!").parse::<http::Uri>() {
            let _ = client.get(uri).await;
        }
        let start = std::time::Instant::now();
        // Ids from the top of the range, so the curl commands below still
        // show a first miss.
        let first = self.users.saturating_sub(n);
        let answers = futures_util::future::join_all((first..self.users).map(|i| {
            let uri = format!("{base}/{}", sim::user_id(i));
            let client = client.clone();
            async move {
                let uri: http::Uri = uri.parse().ok()?;
                client.get(uri).await.ok().map(|r| r.status().is_success())
            }
        }))
        .await;
        let ok = answers.iter().filter(|a| **a == Some(true)).count();
        let sizes = self.sim.stats().batch_sizes();
        let calls = self.sim.stats().origin_calls() - before.0;
        let batch_sizes: Vec<String> = sizes[before.1..].iter().map(|s| s.to_string()).collect();
        Ok(format!(
            "cold burst: {ok}/{} concurrent lookups answered in {:?} with {calls} origin calls (batch sizes {})",
            answers.len(),
            start.elapsed(),
            batch_sizes.join(", ")
        ))
    }

    /// The curl commands a newcomer can paste, first one first.
    pub fn curl_commands(&self) -> Vec<(String, &'static str)> {
        let p = self.app.main_addr();
        let a = self.app.admin_addr();
        let u1 = sim::user_id(1);
        let batch: Vec<String> = (1..=5).map(sim::user_id).collect();
        vec![
            (
                format!("curl -i http://{p}/api/users/{u1}"),
                "a profile: x-cache: miss, x-cache-tier: origin",
            ),
            (
                format!("curl -i http://{p}/api/users/{u1}"),
                "the same again: x-cache: hit, x-cache-tier: memory",
            ),
            (
                format!("curl -i http://{p}/api/users/{u1}/followers"),
                "any other Officer route passes through",
            ),
            (
                format!(
                    "curl -i -X POST http://{p}/api/users/batch -H 'content-type: application/json' -d '{{\"ids\": {}}}'",
                    serde_json::to_string(&batch).unwrap_or_default()
                ),
                "a batch lookup, served from the tiers",
            ),
            (
                format!("curl -i http://{p}/api/users/not-an-id!"),
                "a bad id: 400, never reaches the origin",
            ),
            (
                format!("curl -s 'http://{p}/api/posts?limit=3'"),
                "a Posts API feed, enriched by the enrich-posts policy with userSnapshot",
            ),
            (
                format!("curl -s http://{p}/api/posts/notifications/new"),
                "a new-post notification, enriched",
            ),
            (
                format!("curl -N http://{p}{NOTIFICATIONS_PATH}"),
                "the notification stream (SSE): a new post every second, each with its userSnapshot",
            ),
            (
                format!("curl -sN http://{p}/api/posts/stream"),
                "the Posts API's live stream, a post a second, each event enriched as it arrives (Ctrl-C ends it)",
            ),
            (
                format!(
                    "curl -s -X POST http://{a}/admin/events -d '{{\"type\": \"profile-updated\", \"userId\": \"{u1}\"}}'"
                ),
                "a profile event, handled by the invalidate-profile policy",
            ),
            (format!("curl -s http://{a}/admin/plugins"), "loaded policies"),
            (
                format!("curl -s http://{a}/admin/stats"),
                "hits, misses, origin calls and batch sizes",
            ),
            (
                format!("curl -s -X DELETE http://{a}/admin/cache/users/{u1}"),
                "invalidate one id in every tier",
            ),
            (format!("curl -s http://{a}/metrics | grep ^profile_edge_"), "metrics"),
            (format!("curl -s http://{a}/readyz"), "readiness"),
        ]
    }

    pub fn print_banner(&self, burst: Option<&str>) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "profile-edge demo is running");
        let _ = writeln!(out, "  proxy    http://{}", self.app.main_addr());
        let _ = writeln!(out, "  admin    http://{}", self.app.admin_addr());
        let _ = writeln!(
            out,
            "  origins  Officer {} and Posts {} (simulated, {} users)",
            self.sim.officer_url(),
            self.sim.posts_url(),
            self.users
        );
        if let Some(b) = burst {
            let _ = writeln!(out, "  {b}");
        }
        let _ = writeln!(out, "\nTry:");
        for (cmd, what) in self.curl_commands() {
            let _ = writeln!(out, "  {cmd}\n      # {what}");
        }
        let _ = writeln!(out, "\nCtrl-C stops the demo.");
        let _ = out.flush();
    }

    pub async fn shutdown(self) {
        self.app.shutdown().await;
        self.sim.shutdown().await;
        drop(self.plugin_dir);
    }
}

/// The notification stream's path in `config/demo.toml`.
const NOTIFICATIONS_PATH: &str = "/api/notifications/stream";

/// Publishes a synthetic post every `POST_EVERY`, as a `new-posts` change
/// stream or the Posts API calling `POST /admin/notifications` would; it
/// goes through the same enrichment and fan-out. A task of the app, so it
/// stops with it.
fn start_posting(app: &App, users: usize) {
    let state = std::sync::Arc::downgrade(app.state());
    app.state().tasks.spawn("demo-posts", move |drain| async move {
        let mut tick = tokio::time::interval(POST_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0usize.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = drain.wait() => return,
            }
            let Some(state) = state.upgrade() else { return };
            let post = serde_json::json!({
                "id": format!("demo-post-{n}"),
                "userId": sim::user_id(n.wrapping_mul(7919) % users.max(1)),
                "text": format!("Demo post {n}, published by the demo every second."),
                "createdAt": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            });
            state.notifications.publish(&state, post).await;
        }
    });
}
