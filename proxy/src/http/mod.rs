//! The HTTP edges of the proxy: listeners, connection limits and client
//! deadlines (`server`, `conn_watch`, `write_timeout`),
//! body helpers, header rules, the error type every route answers with,
//! TLS, and the pooled clients to upstreams.

pub mod body;
pub mod conn_watch;
pub mod error;
pub mod headers;
pub mod server;
pub mod stall;
pub mod tls;
pub mod upload;
pub mod upstream;
pub mod write_timeout;
