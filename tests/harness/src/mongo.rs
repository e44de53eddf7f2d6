//! A MongoDB-protocol server for tests and the bench. With `MONGODB_URI`
//! set, that server (a real replica set, say), with a database of the
//! caller's own; otherwise a SecantusDB process (`secantusd-py`, a server
//! speaking the MongoDB wire protocol over WiredTiger, GPL-2.0, run only
//! as a separate process) on a free loopback port with storage of its own.
//!
//! `secantusd-py` is looked up in `SECANTUSD`, then in the virtualenv
//! `tests/run.sh` makes (`target/secantus-venv`), then on `PATH`. When it
//! is missing, exits at start-up or does not answer, the error says so
//! with the tail of its log.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::child::ChildServer;
use crate::{free_port, loopback};

/// A cold SecantusDB (a Python process) takes a second or two; the room is
/// for a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The pinned server version `tests/run.sh` installs.
pub const SECANTUSDB_VERSION: &str = "0.7.0b3";

static NEXT_DB: AtomicU64 = AtomicU64::new(0);

pub struct MongoServer {
    uri: String,
    /// A database name unique to this server handle.
    database: String,
    /// `None` for `MONGODB_URI`'s server.
    server: Option<ChildServer>,
    dir: PathBuf,
    /// Extra `secantusd-py` arguments (`start_local_with`).
    args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl MongoServer {
    /// `MONGODB_URI`'s server, or a fresh SecantusDB.
    pub async fn start() -> io::Result<MongoServer> {
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let database = format!("pe_test_{}_{n}", std::process::id());
        if let Some(uri) = std::env::var("MONGODB_URI")
            .ok()
            .filter(|u| !u.trim().is_empty())
        {
            return Ok(MongoServer {
                uri,
                database,
                server: None,
                dir: PathBuf::new(),
                args: Vec::new(),
                _tmp: None,
            });
        }
        MongoServer::start_local_with(&[]).await
    }

    /// A fresh SecantusDB with extra server arguments (say, a short oplog),
    /// whatever `MONGODB_URI` says: for tests of server behaviour that a
    /// shared server cannot be configured for.
    pub async fn start_local_with(args: &[&str]) -> io::Result<MongoServer> {
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let database = format!("pe_test_{}_{n}", std::process::id());
        let tmp = tempfile::Builder::new().prefix("secantus-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        let port = free_port()?;
        let mut server = MongoServer {
            uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
            database,
            server: Some(ChildServer::new(
                "secantusd-py",
                port,
                dir.join("secantusd.log"),
            )),
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            _tmp: Some(tmp),
        };
        server.spawn().await?;
        Ok(server)
    }

    /// A connection string for the driver.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// A database name no other handle in this process uses.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Whether this is a server the harness started (so `kill` and
    /// `restart` can act on it).
    pub fn is_local(&self) -> bool {
        self.server.is_some()
    }

    /// Kills it (SIGKILL): to the proxy, a crashed server. Its data stays.
    pub fn kill(&mut self) {
        if let Some(s) = self.server.as_mut() {
            s.kill();
        }
    }

    /// Kills it if running and starts it again on the same port, on the
    /// same storage.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn().await
    }

    async fn spawn(&mut self) -> io::Result<()> {
        let bin = secantusd()?;
        let data = self.dir.join("data");
        let dir = self.dir.clone();
        let args = self.args.clone();
        let Some(server) = self.server.as_mut() else {
            return Err(io::Error::other(
                "MONGODB_URI's server is not ours to start",
            ));
        };
        let mut cmd = Command::new(&bin);
        cmd.args(["--host", "127.0.0.1", "--port", &server.port.to_string()])
            .arg("--storage-path")
            .arg(data)
            .args(["--log-level", "WARNING"])
            .args(&args)
            // Its own directory: no secantusd.toml of the caller's is found.
            .current_dir(dir);
        server
            .spawn(
                &mut cmd,
                START_TIMEOUT,
                Duration::from_millis(50),
                |port| async move { tokio::net::TcpStream::connect(loopback(port)).await.is_ok() },
            )
            .await
    }
}

/// Where `secantusd-py` is, or why it cannot be found.
fn secantusd() -> io::Result<PathBuf> {
    if let Ok(p) = std::env::var("SECANTUSD") {
        return Ok(PathBuf::from(p));
    }
    let venv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/secantus-venv/bin/secantusd-py");
    if venv.exists() {
        return Ok(venv);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("secantusd-py"))
        .find(|p| p.exists());
    on_path.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "secantusd-py not found (SECANTUSD, {}, PATH) and MONGODB_URI is not set: \
                 run `bash tests/run.sh`, which installs SecantusDB=={SECANTUSDB_VERSION} into target/secantus-venv",
                venv.display()
            ),
        )
    })
}
