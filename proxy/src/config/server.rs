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
    /// Most header fields in an HTTP/1 request head; more gets 431.
    pub max_headers: usize,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2: GOAWAY first).
    pub idle_timeout: Dur,
    /// A write to a client that stays blocked this long (the client stopped
    /// reading) closes the connection.
    pub write_timeout: Dur,
    /// A body the proxy buffers (batch, admin events) must arrive in full
    /// within this; a streamed (passthrough) body may pause at most this
    /// long between chunks. Either way: 408.
    pub body_read_timeout: Dur,
    /// HTTP/2 keep-alive PING interval on an otherwise quiet connection.
    pub http2_keepalive_interval: Dur,
    /// A PING not answered within this closes the HTTP/2 connection.
    pub http2_keepalive_timeout: Dur,
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
            max_headers: 100,
            idle_timeout: Dur::secs(60),
            write_timeout: Dur::secs(30),
            body_read_timeout: Dur::secs(30),
            http2_keepalive_interval: Dur::secs(30),
            http2_keepalive_timeout: Dur::secs(20),
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
        for (key, d) in [
            ("server.header_read_timeout", self.header_read_timeout),
            ("server.idle_timeout", self.idle_timeout),
            ("server.write_timeout", self.write_timeout),
            ("server.body_read_timeout", self.body_read_timeout),
            (
                "server.http2_keepalive_interval",
                self.http2_keepalive_interval,
            ),
            (
                "server.http2_keepalive_timeout",
                self.http2_keepalive_timeout,
            ),
        ] {
            if d.get().is_zero() {
                out.push(Problem::new(key, "must be more than 0"));
            }
        }
        if !(8..=1000).contains(&self.max_headers) {
            out.push(Problem::new(
                "server.max_headers",
                "must be between 8 and 1000",
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
