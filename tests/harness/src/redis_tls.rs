//! A `redis-server` that speaks only TLS (`--port 0 --tls-port P`), with a
//! certificate authority and server certificate made in the test by rcgen
//! (nothing checked in, nothing expiring), and optionally an ACL user with
//! a password (the default user then needs a password too, so a client
//! that forgets to authenticate is refused rather than let in).
//!
//! The server certificate names IP 127.0.0.1 and DNS `localhost`, so a
//! client that verifies the host name (rustls does) accepts it when it
//! trusts [`TlsRedis::ca_pem_path`]. Clients are not asked for a
//! certificate (`--tls-auth-clients no`).
//!
//! Readiness is `PING` over TLS (a plain-TCP `PING` gets nothing back from
//! a TLS port), with `AUTH` first when there is a user.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::child::ChildServer;
use crate::free_port;
use crate::resp::{Dialer, Reply};

/// How long a starting TLS `redis-server` gets to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Start attempts on fresh ports, as for [`crate::RedisServer`].
const START_ATTEMPTS: usize = 3;

/// A CA and a server certificate signed by it, as PEM files in one dir.
/// The server key doubles as the client key when redis-server nodes talk
/// TLS to each other (cluster bus, replication): rcgen sets no extended
/// key usage, so the one certificate serves both ends.
pub struct TlsFiles {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    ca_der: Vec<u8>,
}

impl TlsFiles {
    /// Makes a fresh CA and server certificate (IP 127.0.0.1, DNS
    /// `localhost`) and writes `ca.pem`, `server.pem`, `server.key` in
    /// `dir`.
    pub fn generate(dir: &Path) -> io::Result<TlsFiles> {
        let err = |e: rcgen::Error| io::Error::other(format!("rcgen: {e}"));
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "profile-edge test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(err)?;

        let key = KeyPair::generate().map_err(err)?;
        // Strings that parse as IP addresses become IP SANs.
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .map_err(err)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = server.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;

        let files = TlsFiles {
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("server.pem"),
            key_pem: dir.join("server.key"),
            ca_der: ca_cert.der().to_vec(),
        };
        let write = |p: &Path, text: String| {
            std::fs::write(p, text)
                .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", p.display())))
        };
        write(&files.ca_pem, ca_cert.pem())?;
        write(&files.cert_pem, cert.pem())?;
        write(&files.key_pem, key.serialize_pem())?;
        Ok(files)
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// A rustls client config trusting only this CA. The aws-lc provider is
    /// named explicitly: the process default is not relied on (a second
    /// provider compiled in elsewhere would make it ambiguous).
    pub fn client_config(&self) -> io::Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from(self.ca_der.clone()))
            .map_err(|e| io::Error::other(format!("test CA rejected by rustls: {e}")))?;
        let config = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(format!("rustls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// `redis-server` arguments that make it use these files.
    pub(crate) fn server_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        for (flag, path) in [
            ("--tls-cert-file", &self.cert_pem),
            ("--tls-key-file", &self.key_pem),
            ("--tls-ca-cert-file", &self.ca_pem),
        ] {
            args.push(flag.into());
            args.push(path.into());
        }
        args.push("--tls-auth-clients".into());
        args.push("no".into());
        args
    }
}

/// A TLS-only `redis-server` on a free loopback port, in its own process
/// group, in a private temp dir (certificates and `redis.log` included).
/// Killed (SIGKILL) when dropped.
pub struct TlsRedis {
    server: ChildServer,
    dir: PathBuf,
    files: TlsFiles,
    auth: Option<(String, String)>,
    dialer: Dialer,
    _tmp: tempfile::TempDir,
}

impl TlsRedis {
    /// Starts one that lets any client in (TLS still required).
    pub async fn start() -> io::Result<TlsRedis> {
        TlsRedis::launch(None).await
    }

    /// Starts one with an ACL user `user` (all keys, channels, commands)
    /// whose password is `password`; the default user needs the same
    /// password (`--requirepass`), so no connection gets in without `AUTH`.
    pub async fn start_with_auth(user: &str, password: &str) -> io::Result<TlsRedis> {
        if user.is_empty() || password.is_empty() || user.contains(char::is_whitespace) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS redis user and password must be non-empty, the user without spaces",
            ));
        }
        TlsRedis::launch(Some((user.to_string(), password.to_string()))).await
    }

    async fn launch(auth: Option<(String, String)>) -> io::Result<TlsRedis> {
        let tmp = tempfile::Builder::new().prefix("redis-tls-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        let files = TlsFiles::generate(&dir)?;
        let dialer = Dialer {
            tls: Some(files.client_config()?),
            auth: auth.clone(),
        };
        let mut server = TlsRedis {
            server: ChildServer::new("redis-server (TLS)", 0, dir.join("redis.log")),
            dir,
            files,
            auth,
            dialer,
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
        Err(last_err.unwrap_or_else(|| io::Error::other("TLS redis-server did not start")))
    }

    /// The TLS port (there is no plain one).
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// `rediss://127.0.0.1:P`, without credentials.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port())
    }

    /// `rediss://USER:PASSWORD@127.0.0.1:P` when there is a user, else
    /// [`TlsRedis::url`]. The harness picks neither from user input, but
    /// callers passing their own should keep them URL-safe.
    pub fn url_with_auth(&self) -> String {
        match &self.auth {
            Some((u, p)) => format!("rediss://{u}:{p}@127.0.0.1:{}", self.port()),
            None => self.url(),
        }
    }

    /// The CA certificate (PEM) a client must trust.
    pub fn ca_pem_path(&self) -> &Path {
        &self.files.ca_pem
    }

    /// The certificate files, for clients that want the DER or a rustls
    /// config.
    pub fn tls_files(&self) -> &TlsFiles {
        &self.files
    }

    pub fn user(&self) -> Option<&str> {
        self.auth.as_ref().map(|(u, _)| u.as_str())
    }

    pub fn password(&self) -> Option<&str> {
        self.auth.as_ref().map(|(_, p)| p.as_str())
    }

    /// Sends one command over TLS (authenticated when there is a user).
    pub async fn command<A: AsRef<[u8]>>(&self, args: &[A]) -> io::Result<Reply> {
        self.dialer.cmd(self.port(), args).await
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> PathBuf {
        self.server.log.clone()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }

    /// Kills it now (SIGKILL): to the proxy, a crashed Redis.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Kills it if running and starts it again, empty, on the same port
    /// with the same certificates and user.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn().await
    }

    async fn spawn(&mut self) -> io::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--tls-port", &self.port().to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(self.files.server_args())
            .arg("--dir")
            .arg(&self.dir);
        if let Some((user, password)) = &self.auth {
            // redis-server quotes each argument, so this is the config
            // line `user NAME on >PASSWORD ~* &* +@all`.
            cmd.args([
                "--user",
                user,
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
            ])
            .args(["--requirepass", password]);
        }
        let dialer = self.dialer.clone();
        self.server
            .spawn(&mut cmd, START_TIMEOUT, Duration::from_millis(20), |port| {
                let dialer = dialer.clone();
                async move { is_pong(dialer.cmd(port, &["PING"]).await) }
            })
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => io::Error::new(
                    e.kind(),
                    format!("{e}; install it (apt-get install -y redis-server; tests/run.sh does)"),
                ),
                _ => e,
            })
    }
}

pub(crate) fn is_pong(r: io::Result<Reply>) -> bool {
    matches!(r, Ok(Reply::Simple(s)) if s == "PONG")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_cli(server: &TlsRedis, auth: bool, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--tls")
            .arg("--cacert")
            .arg(server.ca_pem_path())
            .args(["-h", "127.0.0.1", "-p", &server.port().to_string()]);
        if auth {
            cmd.args(["--user", server.user().expect("user")])
                .args(["--pass", server.password().expect("password")])
                .arg("--no-auth-warning");
        }
        cmd.args(args).output().expect("run redis-cli")
    }

    #[tokio::test]
    async fn tls_server_with_acl_user_answers_redis_cli() {
        let server = TlsRedis::start_with_auth("edge", "s3cret-pw")
            .await
            .expect("start TLS redis");
        assert!(server.url().starts_with("rediss://127.0.0.1:"));
        assert_eq!(
            server.url_with_auth(),
            format!("rediss://edge:s3cret-pw@127.0.0.1:{}", server.port())
        );

        let out = redis_cli(&server, true, &["PING"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.trim(),
            "PONG",
            "redis-cli --tls PING: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_tail()
        );
        let out = redis_cli(&server, true, &["ACL", "WHOAMI"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "edge");

        // No credentials: TLS handshake fine, commands refused.
        let out = redis_cli(&server, false, &["GET", "k"]);
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("NOAUTH"), "unauthenticated GET: {text}");

        // The harness's own TLS client (rustls, verifying 127.0.0.1).
        let r = server.command(&["SET", "k", "v"]).await.expect("SET");
        assert_eq!(r, Reply::Simple("OK".into()));
        let r = server.command(&["GET", "k"]).await.expect("GET");
        assert_eq!(r, Reply::Bulk(Some(b"v".to_vec())));

        // Plain TCP on the TLS port gets no PONG.
        assert!(!crate::ping(server.port()).await);
    }

    #[tokio::test]
    async fn tls_server_without_auth_restarts_on_its_port() {
        let mut server = TlsRedis::start().await.expect("start TLS redis");
        assert_eq!(server.user(), None);
        let port = server.port();
        server.restart().await.expect("restart");
        assert_eq!(server.port(), port);
        let out = redis_cli(&server, false, &["PING"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");
    }
}
