//! Child processes shared by the integration tests (`tests/`) and the bench
//! (`bench/`): a real `redis-server` on a free loopback port, started and
//! stopped by the caller, the same over TLS with a certificate made in the
//! test (`redis_tls`), a six-node Redis Cluster that tests can fail over
//! and reshard (`cluster`), a MongoDB-protocol server (`mongo`), and the
//! free-port helpers they use.
//!
//! Failures are loud: when `redis-server` is missing, exits at start-up or
//! does not answer `PING`, the error says so and carries the tail of its log.

use std::collections::HashSet;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod child;
mod cluster;
mod mongo;
mod redis_tls;
mod resp;
use child::ChildServer;
pub use cluster::{free_cluster_port, slot_of, RedisCluster, SlotRange, NODE_TIMEOUT_MS, SLOTS};
pub use mongo::{MongoServer, SECANTUSDB_VERSION};
pub use redis_tls::{TlsFiles, TlsRedis};
pub use resp::Reply;

/// How long a starting `redis-server` gets to answer `PING`. It normally
/// takes milliseconds; the room is for a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Start attempts on fresh ports, in case another process takes the port
/// between [`free_port`] and `redis-server` binding it.
const START_ATTEMPTS: usize = 3;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free port on 127.0.0.1, never the same one twice in this process (so
/// that two servers started by one test run cannot be handed one port).
pub fn free_port() -> io::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if claim_ports(&[port]) {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free loopback port found in 100 tries"))
}

/// Marks all of `ports` handed out and says true, unless one of them was
/// already (then marks none): a cluster node claims its port and its bus
/// port together.
pub(crate) fn claim_ports(ports: &[u16]) -> bool {
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let set = handed_out.get_or_insert_with(HashSet::new);
    if ports.iter().any(|p| set.contains(p)) {
        return false;
    }
    set.extend(ports.iter().copied());
    true
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A `redis-server` without persistence on a free loopback port, in its own
/// process group. Killed (SIGKILL) when dropped.
pub struct RedisServer {
    server: ChildServer,
    dir: PathBuf,
    /// Set when the server lives in a temp dir of its own.
    _tmp: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts one in a private temp dir (removed on drop).
    pub async fn start() -> io::Result<RedisServer> {
        let tmp = tempfile::Builder::new().prefix("redis-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        RedisServer::launch(dir, Some(tmp)).await
    }

    /// Starts one with its working dir and `redis.log` in `dir` (created).
    pub async fn start_in(dir: &Path) -> io::Result<RedisServer> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
        RedisServer::launch(dir.to_path_buf(), None).await
    }

    async fn launch(dir: PathBuf, tmp: Option<tempfile::TempDir>) -> io::Result<RedisServer> {
        let mut server = RedisServer {
            server: ChildServer::new("redis-server", 0, dir.join("redis.log")),
            dir,
            _tmp: tmp,
        };
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            server.server.port = free_port()?;
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port())
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> PathBuf {
        self.server.log.clone()
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Kills it now (SIGKILL): to the proxy, a crashed Redis.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Kills it if running and starts it again, empty, on the same port.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn().await
    }

    async fn spawn(&mut self) -> io::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port().to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir);
        self.server
            .spawn(&mut cmd, START_TIMEOUT, Duration::from_millis(20), ping)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => io::Error::new(
                    e.kind(),
                    format!("{e}; install it (apt-get install -y redis-server; tests/run.sh does)"),
                ),
                _ => e,
            })
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

/// True when something on `port` answers `PING` with `+PONG` within 1 s.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(loopback(port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        buf[..n].starts_with(b"+PONG").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(()))
    )
}
