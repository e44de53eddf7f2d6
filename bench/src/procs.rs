//! Child processes the bench starts (the proxy, nginx, redis-server,
//! SecantusDB), each behind a guard that stops its whole process group on
//! drop, including on errors and Ctrl-C; free loopback ports; the proxy's
//! generated config.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::load::{self, Req};

/// A free port on 127.0.0.1, never the same one twice in this process. One
/// registry with the Redis harness, so the proxy, nginx and redis-server are
/// never handed the same port.
pub fn free_port() -> Result<u16> {
    Ok(profile_edge_harness::free_port()?)
}

pub use profile_edge_harness::loopback;

/// A child in its own process group; dropping the guard sends SIGTERM to
/// the group, waits up to 3 s, then SIGKILLs it.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

fn signal_group(pid: u32, sig: &str) {
    // `kill -SIG -- -PGID` reaches every process of the group (nginx workers too).
    let _ = Command::new("kill")
        .args([format!("-{sig}"), "--".to_string(), format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<ChildGuard> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("dup {}", log.display()))?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name} ({:?})", cmd.get_program()))?;
        Ok(ChildGuard {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last lines of the child's output, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            // The leader is gone; its group may not be (nginx workers).
            signal_group(child.id(), "KILL");
            return;
        }
        signal_group(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                signal_group(child.id(), "KILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "  {} did not stop on SIGTERM within 3 s; killing",
            self.name
        );
        signal_group(child.id(), "KILL");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a generated proxy config contains.
#[derive(Clone, Debug)]
pub struct ProxyOpts {
    pub officer_url: String,
    /// `[upstreams.posts]`; required with `enrich_plugin`.
    pub posts_url: Option<String>,
    pub memory_capacity: u64,
    pub redis_url: Option<String>,
    /// `[tiers.redis]` with `mode = "cluster"` and these seed nodes
    /// (instead of `redis_url`).
    pub redis_cluster: Option<Vec<String>>,
    /// `[plugins.enrich-posts]` with this file, and the `/api/posts` enrich route.
    pub enrich_plugin: Option<PathBuf>,
    /// `[plugins.invalidate-profile]` with this file and `[invalidation]`.
    pub invalidation_plugin: Option<PathBuf>,
    pub negative_ttl: String,
    /// `[backplane]` on the Redis tier's connection.
    pub backplane: bool,
    /// Further TOML sections, written verbatim after the others (the Mongo
    /// tier, change streams, post snapshots).
    pub extra: String,
    /// Run the proxy under `taskset -c CPU` (one core, so one tokio worker).
    pub cpu: Option<usize>,
}

impl ProxyOpts {
    pub fn profiles(officer_url: String) -> ProxyOpts {
        ProxyOpts {
            officer_url,
            posts_url: None,
            memory_capacity: 100_000,
            redis_url: None,
            redis_cluster: None,
            enrich_plugin: None,
            invalidation_plugin: None,
            negative_ttl: "30s".into(),
            backplane: false,
            extra: String::new(),
            cpu: None,
        }
    }
}

pub fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

pub fn proxy_config(listen: SocketAddr, admin: SocketAddr, o: &ProxyOpts) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Generated by profile-edge-bench.\n\
         [server]\nlisten = \"{listen}\"\nmax_connections = 20000\nshutdown_timeout = \"1s\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [upstreams.officer]\nurl = {}\ntimeout = \"2s\"\n",
        toml_str(&o.officer_url)
    );
    if let Some(posts) = &o.posts_url {
        let _ = writeln!(
            t,
            "[upstreams.posts]\nurl = {}\ntimeout = \"2s\"\n",
            toml_str(posts)
        );
    }
    let _ = writeln!(
        t,
        "[profiles]\nnegative_ttl = {}\n\n[tiers.memory]\ncapacity = {}\nttl = \"5m\"\n",
        toml_str(&o.negative_ttl),
        o.memory_capacity
    );
    if let Some(url) = &o.redis_url {
        let _ = writeln!(t, "[tiers.redis]\nurl = {}\n", toml_str(url));
    }
    if let Some(nodes) = &o.redis_cluster {
        let nodes: Vec<String> = nodes.iter().map(|n| toml_str(n)).collect();
        let _ = writeln!(
            t,
            "[tiers.redis]\nmode = \"cluster\"\nnodes = [{}]\n",
            nodes.join(", ")
        );
    }
    if o.backplane {
        let _ = writeln!(t, "[backplane]\nchannel = \"pe:bench\"\n");
    }
    if let Some(p) = &o.enrich_plugin {
        let _ = writeln!(
            t,
            "[plugins.enrich-posts]\npath = {}\n\n[[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"enrich-posts\"\n",
            toml_str(&p.display().to_string())
        );
    }
    if let Some(p) = &o.invalidation_plugin {
        let _ = writeln!(
            t,
            "[plugins.invalidate-profile]\npath = {}\n\n[invalidation]\nplugin = \"invalidate-profile\"\n",
            toml_str(&p.display().to_string())
        );
    }
    if !o.extra.is_empty() {
        let _ = writeln!(t, "{}\n", o.extra.trim_end());
    }
    let _ = writeln!(t, "[log]\nlevel = \"warn\"");
    t
}

/// `program`, or `taskset -c CPU program` when a core is given; taskset
/// execs the program, so the child's pid is the program's.
pub fn pinned_command(program: &std::ffi::OsStr, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new(crate::pin::TASKSET);
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Writes `text` to `path` by writing a sibling temp file and renaming it
/// over `path` (what editors and ConfigMaps do).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", path.display()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{name}.bench-tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("rename {} -> {}", tmp.display(), path.display()))
}

/// A running proxy child.
pub struct Proxy {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
}

impl Proxy {
    /// Writes the config into `dir` (created), starts the binary there and
    /// waits for `/readyz`.
    pub async fn start(bin: &Path, dir: &Path, opts: ProxyOpts) -> Result<Proxy> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let addr = loopback(free_port()?);
        let admin = loopback(free_port()?);
        let config_path = dir.join("profile-edge.toml");
        std::fs::write(&config_path, proxy_config(addr, admin, &opts))
            .with_context(|| format!("write {}", config_path.display()))?;
        let mut cmd = pinned_command(bin.as_os_str(), opts.cpu);
        cmd.arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env_remove("PROFILE_EDGE_ADMIN_TOKEN");
        let mut guard = ChildGuard::spawn("profile-edge", &mut cmd, &dir.join("proxy.log"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = guard.exited() {
                bail!(
                    "profile-edge exited at start-up ({status}):\n{}",
                    guard.log_tail()
                );
            }
            if let Ok(r) = load::once(admin, &Req::get("/readyz")).await {
                if r.status == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("profile-edge not ready within 60 s:\n{}", guard.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Proxy {
            guard,
            addr,
            admin,
            config_path,
        })
    }

    /// Warnings and errors the proxy logged so far (`[log] level = "warn"`):
    /// their count and the first few distinct messages, or `None`.
    pub fn log_summary(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.guard.log_path()).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .map(strip_ansi)
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        if lines.is_empty() {
            return None;
        }
        let mut distinct: Vec<String> = Vec::new();
        for l in &lines {
            // Drop the timestamp so repeats of one message fold together.
            let msg = l
                .split_once(' ')
                .map_or(l.as_str(), |(_, rest)| rest)
                .trim();
            let msg: String = msg.chars().take(200).collect();
            if !distinct.contains(&msg) && distinct.len() < 3 {
                distinct.push(msg);
            }
        }
        Some(format!(
            "{} warning/error line(s), e.g. `{}`",
            lines.len(),
            distinct.join("`; `")
        ))
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> Result<u64> {
        proc_status_kib(self.guard.pid(), "VmRSS:").map(|k| k * 1024)
    }

    pub fn hwm(&self) -> Result<u64> {
        proc_status_kib(self.guard.pid(), "VmHWM:").map(|k| k * 1024)
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip a CSI sequence: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn proc_status_kib(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("{key} not in {path}"))
}

/// A redis-server on a free loopback port, without persistence: the harness
/// the integration tests use too (`tests/harness`), log in `dir/redis.log`.
pub struct Redis {
    pub guard: RedisGuard,
}

/// Stops the server on drop.
pub struct RedisGuard(profile_edge_harness::RedisServer);

impl RedisGuard {
    /// SIGKILL now (used to simulate a crash).
    pub fn kill_hard(&mut self) {
        self.0.kill();
    }
}

impl Redis {
    pub async fn start(dir: &Path) -> Result<Redis> {
        let server = profile_edge_harness::RedisServer::start_in(dir)
            .await
            .context("starting redis-server")?;
        Ok(Redis {
            guard: RedisGuard(server),
        })
    }

    pub fn url(&self) -> String {
        self.guard.0.url()
    }

    pub fn pid(&self) -> Option<u32> {
        self.guard.0.pid()
    }
}

/// A MongoDB-protocol server: the harness the integration tests use
/// (`tests/harness`), which starts SecantusDB (`secantusd-py`, GPL-2.0, run
/// only as a separate process) on a free loopback port, or names
/// `MONGODB_URI`'s server when that is set. Stopped on drop.
pub struct Mongo {
    server: profile_edge_harness::MongoServer,
    client: mongodb::Client,
}

impl Mongo {
    pub async fn start() -> Result<Mongo> {
        let server = profile_edge_harness::MongoServer::start()
            .await
            .context("starting a MongoDB-protocol server")?;
        let mut opts = mongodb::options::ClientOptions::parse(server.uri())
            .await
            .with_context(|| format!("MongoDB URI {}", server.uri()))?;
        opts.app_name = Some("profile-edge-bench".into());
        opts.server_selection_timeout = Some(Duration::from_secs(30));
        let client = mongodb::Client::with_options(opts).context("MongoDB client")?;
        Ok(Mongo { server, client })
    }

    pub fn uri(&self) -> &str {
        self.server.uri()
    }

    /// The bench's database (a name no other handle uses).
    pub fn db(&self) -> mongodb::Database {
        self.client.database(self.server.database())
    }

    pub fn database(&self) -> &str {
        self.server.database()
    }

    /// What the server is, for the report.
    pub fn describe(&self) -> String {
        if self.server.is_local() {
            format!(
                "SecantusDB {} (`secantusd-py`, a Python server speaking the MongoDB wire protocol over WiredTiger), a separate process on loopback",
                profile_edge_harness::SECANTUSDB_VERSION
            )
        } else {
            "the server `MONGODB_URI` names".to_string()
        }
    }
}

pub const NGINX: &str = "/usr/sbin/nginx";

/// nginx with `proxy_cache` in front of one origin: HTTP/1.1 on `port`, h2c
/// (prior knowledge) on `h2_port`.
pub struct Nginx {
    /// Stops nginx (master and workers) on drop.
    _guard: ChildGuard,
    pub port: u16,
    pub h2_port: u16,
}

impl Nginx {
    pub async fn start(dir: &Path, origin: SocketAddr) -> Result<Nginx> {
        let (port, h2_port) = (free_port()?, free_port()?);
        let location = format!(
            "location / {{\n      proxy_pass http://{origin};\n      proxy_cache pc;\n\
               proxy_cache_valid 200 5m;\n      proxy_cache_lock on;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
               add_header X-Cache-Status $upstream_cache_status;\n    }}"
        );
        Nginx::launch(dir, "auto", None, port, h2_port, &location).await
    }

    /// nginx answering every request with `return 200` of `body` as
    /// `application/json`: the floor a cache hit can be compared with. One
    /// worker; under `taskset -c CPU` when a core is given.
    pub async fn start_static(dir: &Path, body: &[u8], cpu: Option<usize>) -> Result<Nginx> {
        let text = std::str::from_utf8(body).context("the body is not UTF-8")?;
        // Inside nginx's single quotes only ' and \\ need escaping, and $
        // would start a variable.
        if text.contains(['\'', '\\', '$']) {
            bail!("the body holds ', \\ or $, which nginx's return would change: {text}");
        }
        let (port, h2_port) = (free_port()?, free_port()?);
        let location = format!(
            "location / {{\n      default_type application/json;\n      return 200 '{text}';\n    }}"
        );
        Nginx::launch(dir, "1", cpu, port, h2_port, &location).await
    }

    async fn launch(
        dir: &Path,
        workers: &str,
        cpu: Option<usize>,
        port: u16,
        h2_port: u16,
        location: &str,
    ) -> Result<Nginx> {
        if !Path::new(NGINX).exists() {
            bail!("{NGINX} not found (apt-get install -y nginx)");
        }
        std::fs::create_dir_all(dir.join("cache"))
            .with_context(|| format!("create {}/cache", dir.display()))?;
        let d = dir.display();
        // Run as root: the workers must be able to write the cache under our
        // private temp dir (the default `nobody` could not).
        let user = match std::fs::metadata("/proc/self") {
            Ok(m) if m.uid() == 0 => "user root;\n",
            _ => "",
        };
        let conf = format!(
            "{user}daemon off;\nmaster_process on;\nworker_processes {workers};\n\
             worker_rlimit_nofile 20000;\n\
             error_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy_temp;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               proxy_cache_path {d}/cache keys_zone=pc:10m;\n\
               http2_max_concurrent_streams 256;\n\
               server {{\n    listen 127.0.0.1:{port};\n    listen 127.0.0.1:{h2_port} http2;\n\
                 {location}\n  }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)
            .with_context(|| format!("write {}", conf_path.display()))?;
        let mut cmd = pinned_command(NGINX.as_ref(), cpu);
        cmd.arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(format!("{d}/"))
            .arg("-e")
            .arg(dir.join("error.log"));
        let mut guard = ChildGuard::spawn("nginx", &mut cmd, &dir.join("nginx.out"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = guard.exited() {
                let err = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}):\n{}\n{err}", guard.log_tail());
            }
            if tokio::net::TcpStream::connect(loopback(port)).await.is_ok()
                && tokio::net::TcpStream::connect(loopback(h2_port))
                    .await
                    .is_ok()
            {
                return Ok(Nginx {
                    _guard: guard,
                    port,
                    h2_port,
                });
            }
            if Instant::now() > deadline {
                bail!("nginx not listening within 10 s:\n{}", guard.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    pub fn h2_addr(&self) -> SocketAddr {
        loopback(self.h2_port)
    }
}
