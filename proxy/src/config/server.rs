//! `[server]`: the main listener (address, limits, HTTP/2) and its
//! optional `tls` table.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{file_must_exist, same_socket, Problem};
use crate::units::{ByteSize, Dur};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Main listener address. Changing it needs a restart.
    pub listen: SocketAddr,
    /// TLS for the main listener (or for an extra listener when `tls.listen` is set).
    pub tls: Option<TlsConfig>,
    /// Time a client gets to send a complete request head (slowloris guard);
    /// also bounds the TLS handshake.
    pub header_read_timeout: Dur,
    /// Largest request head accepted; larger gets 431.
    pub max_header_size: ByteSize,
    /// Concurrent client connections; further connections wait in the backlog.
    pub max_connections: usize,
    /// Largest request body on routes that buffer it (batch, admin events); larger gets 413.
    pub max_body_size: ByteSize,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub shutdown_timeout: Dur,
    /// Serve HTTP/2 (ALPN on TLS, prior knowledge on plaintext) besides HTTP/1.1.
    pub http2: bool,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            header_read_timeout: Dur::secs(10),
            max_header_size: ByteSize::kib(16),
            max_connections: 10_000,
            max_body_size: ByteSize::mib(1),
            shutdown_timeout: Dur::secs(30),
            http2: true,
            max_concurrent_streams: 256,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, TLS is served on this extra address and `server.listen`
    /// stays plaintext; when absent, `server.listen` itself speaks TLS.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

impl ServerConfig {
    /// Problems under `server.*`, `server.tls` included.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.max_connections == 0 {
            out.push(Problem::new("server.max_connections", "must be at least 1"));
        }
        if self.max_header_size.bytes() < 1024 {
            out.push(Problem::new(
                "server.max_header_size",
                "must be at least 1KiB",
            ));
        }
        if self.max_body_size.bytes() == 0 {
            out.push(Problem::new("server.max_body_size", "must be more than 0"));
        }
        if self.header_read_timeout.get().is_zero() {
            out.push(Problem::new(
                "server.header_read_timeout",
                "must be more than 0",
            ));
        }
        if self.max_concurrent_streams == 0 {
            out.push(Problem::new(
                "server.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if let Some(tls) = &self.tls {
            file_must_exist(&mut out, "server.tls.cert", &tls.cert);
            file_must_exist(&mut out, "server.tls.key", &tls.key);
            if tls.listen.is_some_and(|a| same_socket(a, self.listen)) {
                out.push(Problem::new(
                    "server.tls.listen",
                    "must differ from server.listen (leave it out to serve TLS on server.listen)",
                ));
            }
        }
        out
    }
}
